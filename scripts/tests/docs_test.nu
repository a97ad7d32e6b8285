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

# The README's Nushell examples work as written: each ```nu block runs, from the checkout, in the pinned
# Nushell against a dispatcher (the fake of its API) named by RAIBID_URL / RAIBID_API_TOKEN.
@test
def readme_nushell_examples_run_as_written [] {
  let blocks = (open --raw ($REPO_ROOT | path join README.md) | parse --regex '(?s)```nu\n(?<code>.*?)```' | get code)
  assert ($blocks | is-not-empty) "the README has Nushell examples"
  let t = "readme-token-0123456789"
  let job = {id: "01JD0000000000000000000001", kind: rust, status: failed, step: test, attempt: 1, agent: "a",
    source: {repo_url: "http://git.raibid.internal/octo/hello.git", ref: "refs/heads/main", sha: null, trigger: {kind: api, actor: null}, delivery_id: null, forge_repo: null}
    pipeline: null, timestamps: {received: "2026-11-21T10:00:00Z", queued: null, claimed: null, started: null, finished: null}
    steps: [], failure_reason: "step test exited with 101", retry_of: null, cancel_requested: false}
  with-fakes {dispatcher: {token: $t, jobs: [$job], logs: {}, live: {}, queue: {}, agents: []}} {|f|
    with-clean-env {RAIBID_URL: $f.dispatcher.url, RAIBID_API_TOKEN: $t} {
      for code in $blocks {
        let r = (do { cd $REPO_ROOT; ^$nu.current-exe --no-config-file -c $code } | complete)
        assert equal $r.exit_code 0 $"($code)\n($r.stderr)"
      }
    }
    assert-no-violations $f.dispatcher
  }
}
