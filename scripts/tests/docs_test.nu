# The docs say what the scripts do: every variable is documented, the list-file example parses, the ADR
# the bootstrap points to exists.

use std/assert
use std/testing *
use helpers.nu *
use ../lib/env.nu [env-spec]
use ../lib/mirroring.nu [parse-mirror-list]

def doc [name: string]: nothing -> string { open --raw ($REPO_ROOT | path join docs $name) }

@test
def every_variable_is_documented [] {
  let text = (doc automation.md)
  let missing = (env-spec | where source != internal | where {|v| not ($text | str contains $"`($v.name)`") } | get name)
  assert equal $missing [] "variables missing from docs/automation.md"
}

@test
def the_list_file_example_parses [] {
  let text = (doc mirroring.md)
  let yaml = ($text | parse --regex '(?s)```yaml\n(?<y>.*?)```' | get 0.y)
  let rows = ($yaml | parse-mirror-list)
  assert equal ($rows | get kind) [repo repo org]
  assert equal ($rows | get to_owner) [mirrors mirrors acme]
  assert equal ($rows.1.to) "ci/octo-tools"
}

@test
def the_bootstrap_adr_exists_and_is_referenced [] {
  let adr = (glob ($REPO_ROOT | path join docs adr "*flux-syncs-from-gitea*.md"))
  assert equal ($adr | length) 1
  let name = ($adr.0 | path basename)
  assert ((open --raw ($REPO_ROOT | path join scripts bootstrap.nu)) | str contains $name)
  let text = (open --raw $adr.0)
  for section in ["## Context" "## Decision" "## Consequences"] { assert ($text | str contains $section) }
}
