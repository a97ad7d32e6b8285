# The scripts use the names defined once in rust/raibid-core/src/contract.rs (parsed here, never copied)
# and the names the GitOps manifests define (namespaces, services, secret files, the ops repository).

use std/assert
use std/testing *
use helpers.nu *
use ../lib/contract.nu [load-contract parse-contract]
use ../lib/env.nu [env-spec]
use ../lib/cluster.nu *
use ../lib/mirroring.nu [gitea-hook-want github-hook-want]
use ../lib/api.nu [api-url]

# The Nushell sources of the automation (not the tests; not dev.nu, the local dev stack, which has its own).
def sources []: nothing -> table {
  glob ($REPO_ROOT | path join scripts "**" "*.nu")
  | where {|f| not ($f | str contains "/scripts/tests/") and ($f | path basename) != "dev.nu" }
  | each {|f| {file: ($f | path relative-to $REPO_ROOT), text: (open --raw $f)} }
}

# The same, without comments (documentation may name a path; code must read it from the contract).
def code []: nothing -> table {
  sources | update text {|s| $s.text | lines | where {|l| $l !~ '^\s*#' } | each {|l| $l | str replace --regex '\s+#\s.*$' '' } | str join "\n" }
}

# Flux substitution variables (clusters/<cluster>/cluster-settings.yaml): names, not environment variables.
def cluster-settings-vars []: nothing -> list<string> {
  open ($REPO_ROOT | path join clusters $CLUSTER cluster-settings.yaml) | get data | columns
}

# `pub const NAME: &str = "value";` lines of contract.rs, parsed independently of lib/contract.nu.
def contract-env-names []: nothing -> list<string> {
  open --raw ($REPO_ROOT | path join rust raibid-core src contract.rs) | lines
  | parse --regex '^\s*pub const [A-Z0-9_]+: &str = "(?<v>RAIBID_[A-Z0-9_]+)";' | get v
}

@test
def contract_parser_reads_every_const [] {
  let c = (load-contract)
  let raw = (open --raw ($REPO_ROOT | path join rust raibid-core src contract.rs) | lines | where {|l| $l =~ '^\s*pub const [A-Z0-9_]+: &str = ' } | length)
  assert equal ($c | values | each {|m| $m | columns | length } | math sum) $raw
  assert equal ($c.env.URL) "RAIBID_URL"
  assert equal ("pub mod x {\n  pub const A: &str = \"b\";\n}\n" | parse-contract) {x: {A: b}}
}

@test
def env_vars_of_the_contract_are_the_contracts [] {
  let names = (contract-env-names)
  let spec = (env-spec)
  let claimed = ($spec | where source == contract | get name)
  assert equal ($claimed | where $it not-in $names) [] "env-spec claims names contract.rs does not define"
  assert equal ($spec | where source != contract | where name in $names | get name) [] "a script-only variable shadows a contract name"
  # The CLI's two variables (RAIBID_URL, RAIBID_API_TOKEN[_FILE]) are the contract's.
  let c = (load-contract)
  for n in [$c.env.URL $c.env.API_TOKEN $c.env.API_TOKEN_FILE $c.env.GITEA_URL $c.env.GITEA_TOKEN $c.env.GITEA_WEBHOOK_SECRET $c.env.GITHUB_WEBHOOK_SECRET] {
    assert ($n in $claimed) $"($n) is not declared as a contract variable"
  }
}

@test
def every_env_var_the_scripts_read_is_declared [] {
  # Every `$env.X` read is declared in lib/env.nu (with its default)...
  let declared = (env-spec | get name | append [PWD])
  let reads = (code | each {|s|
    $s.text | parse --regex '\$env\.(?<n>[A-Za-z_][A-Za-z0-9_]*)(?<op>\s*==?)?'
    | where {|m| ($m.op | default "" | str trim) != "=" }   # `$env.X = …` sets, it does not read
    | get n | each {|n| {file: $s.file, name: $n} }
  } | flatten | uniq)
  let undeclared = ($reads | where name not-in $declared)
  assert equal $undeclared [] $"read but not declared in lib/env.nu:\n($undeclared | each {|u| $'($u.file): ($u.name)' } | str join "\n")"
  # ...and every RAIBID_* name the scripts mention is a contract variable, a declared one, or a Flux setting.
  let known = (contract-env-names | append (env-spec | get name) | append (cluster-settings-vars))
  let names = (code | each {|s| $s.text | parse --regex '\b(?<n>RAIBID_[A-Z0-9_]+)\b' | get n | each {|n| {file: $s.file, name: $n} } } | flatten | uniq)
  let unknown = ($names | where name not-in $known)
  assert equal $unknown [] $"RAIBID_* names defined nowhere:\n($unknown | each {|u| $'($u.file): ($u.name)' } | str join "\n")"
}

@test
def contract_values_are_read_not_copied [] {
  let c = (load-contract)
  let copies = ([$c.http.GITEA_WEBHOOK_PATH $c.http.GITHUB_WEBHOOK_PATH $c.keys.JOBS_STREAM $c.keys.AGENTS_GROUP ":($c.http.DEFAULT_PORT)"]
    | each {|v| code | where {|s| $s.text | str contains $v } | each {|s| $"($s.file) copies ($v)" } } | flatten)
  assert equal $copies [] ($copies | str join "\n")
  # ...and what the scripts build from them is right.
  with-env {RAIBID_URL: "http://d:1", RAIBID_HOOK_URL: "http://h:2", RAIBID_PUBLIC_URL: "https://p"} {
    assert equal (gitea-hook-want).url $"http://h:2($c.http.GITEA_WEBHOOK_PATH)"
    assert equal (github-hook-want).url $"https://p($c.http.GITHUB_WEBHOOK_PATH)"
    assert equal (api-url "/jobs") $"http://d:1($c.http.API_PREFIX)/jobs"
  }
  let spec = (env-spec)
  assert equal ($spec | where name == RAIBID_URL | get 0.default) $"http://127.0.0.1:($c.http.DEFAULT_PORT)"
  assert equal ($spec | where name == RAIBID_HOOK_URL | get 0.default) $"http://($SERVICES.dispatcher.name).($SERVICES.dispatcher.namespace).svc:($c.http.DEFAULT_PORT)"
}

def manifests [rel: string]: nothing -> list<any> {
  open --raw ($REPO_ROOT | path join $rel) | from yaml | if ($in | describe) =~ '^(list|table)' { $in } else { [$in] } | compact
}

@test
def cluster_names_match_the_manifests [] {
  let ns = (manifests infrastructure/controllers/namespaces.yaml | where kind == Namespace | get metadata.name | append "flux-system")
  assert equal ($NAMESPACES | values | where $it not-in $ns) [] "a namespace the scripts use is not defined"
  let svc = (manifests apps/base/raibid/dispatcher.yaml | where kind == Service | first)
  assert equal {name: $svc.metadata.name, namespace: $svc.metadata.namespace} $SERVICES.dispatcher
  let sync = (manifests $"clusters/($CLUSTER)/flux-system/gotk-sync.yaml" | where kind == GitRepository | first)
  assert ($sync.spec.url | str starts-with (service-url $SERVICES.gitea)) "the ops repository is not served by the Gitea service the scripts know"
  # Gitea only delivers webhooks to hosts on its allow list: the dispatcher host mirror.nu targets must be on it.
  let gitea = (manifests infrastructure/controllers/gitea.yaml | where kind == HelmRelease | first)
  let allowed = ($gitea.spec.values.gitea.config.webhook.ALLOWED_HOST_LIST | split row ",")
  assert ($"($SERVICES.dispatcher.name).($SERVICES.dispatcher.namespace).svc" in $allowed) $"Gitea's ALLOWED_HOST_LIST lacks the dispatcher: ($allowed)"
  let sj = (manifests apps/base/raibid/agent-scaledjob.yaml | where kind == ScaledJob | first)
  assert equal $sj.metadata.namespace $NAMESPACES.builds
}

@test
def secret_files_are_the_documented_layout [] {
  let doc = (open --raw ($REPO_ROOT | path join docs secrets.md))
  let rows = ($doc | lines | where {|l| $l =~ '^\| `[^`]+\.sops\.yaml` \|' }
    | parse --regex '^\| `(?<path>[^`]+)` \| `(?<name>[^`]+)` \| `(?<namespace>[^`]+)` \| (?<keys>[^|]+) \|'
    | update keys {|r| $r.keys | parse --regex '`(?<k>[^`]+)`' | get k })
  assert equal ($rows | sort-by path) ($SECRET_FILES | sort-by path) "lib/cluster.nu SECRET_FILES differs from docs/secrets.md"
  for f in $SECRET_FILES {
    assert ($REPO_ROOT | path join ($f.path | path dirname) kustomization.yaml | path exists) $"no kustomization.yaml next to ($f.path)"
  }
  let sops = (open --raw ($REPO_ROOT | path join .sops.yaml))
  assert (($sops | str contains $"&owner ($SOPS_PLACEHOLDER)") or ($sops =~ '&owner age1[0-9a-z]+')) ".sops.yaml has no &owner recipient line"
  assert ($doc | str contains $CLUSTER_SECRETS.sops_age.key)
}

@test
def one_nushell_version_for_the_repo [] {
  use ../lib/pins.nu [pin]
  assert equal (version | get version) (pin NUSHELL_VERSION) "the suite runs on another Nushell than scripts/pins.env pins"
  let dev = (open --raw ($REPO_ROOT | path join scripts dev.sh))
  assert ($dev | str contains "nushell@$NUSHELL_VERSION") "dev.sh does not install the pinned Nushell"
  let flake = (open --raw ($REPO_ROOT | path join flake.nix))
  assert ($flake | str contains "pins.NUSHELL_VERSION") "flake.nix does not provide the pinned Nushell"
}
