# GitHub → Gitea mirroring: the pure parts (list-file parsing, regex filtering, desired state, plans) and the
# executor that applies a plan through the Gitea and GitHub clients. A mirror is three things:
#   1. a Gitea pull mirror of the GitHub repository (POST /repos/migrate with mirror: true),
#   2. a Gitea push webhook → dispatcher /webhooks/gitea (builds),
#   3. a GitHub push webhook → dispatcher /webhooks/github (the dispatcher calls Gitea's mirror-sync at once).
# Every step first reads what exists and only creates or updates what differs, so re-running is a no-op.

use errors.nu [fail]
use contract.nu [load-contract repo-root]
use secrets.nu [secret secret-or-null]
use env.nu [public-url]
use gitea.nu
use github.nu
use log.nu

# Gitea's built-in pull-mirror interval, used when the cluster's Gitea values do not set one.
export const DEFAULT_INTERVAL = "8h0m0s"
const ENTRY_KEYS = [repo org to to_owner include exclude interval]

# The pull-mirror interval the cluster's Gitea is configured with (mirror.DEFAULT_INTERVAL in the values of
# infrastructure/controllers/gitea.yaml); the GitHub webhook makes pushes sync at once, this is the fallback.
export def default-interval []: nothing -> string {
  let file = (repo-root | path join infrastructure controllers gitea.yaml)
  if not ($file | path exists) { return $DEFAULT_INTERVAL }
  let docs = (open --raw $file | from yaml | if ($in | describe) =~ '^(list|table)' { $in } else { [$in] })
  $docs | where {|d| $d.kind? == "HelmRelease" }
  | get -o 0.spec.values.gitea.config.mirror.DEFAULT_INTERVAL
  | default $DEFAULT_INTERVAL
}

# Seconds in a Go duration string ("8h0m0s", "10m", "1h30m").
@example "Gitea's default" { "8h0m0s" | go-duration-secs } --result 28800
export def go-duration-secs []: string -> int {
  let parts = ($in | parse --regex '(?<n>\d+)(?<u>h|m|s)')
  if ($parts | is-empty) { fail bad_interval $"'($in)' is not a duration like 8h0m0s or 30m" }
  $parts | each {|p| ($p.n | into int) * (match $p.u { "h" => 3600, "m" => 60, _ => 1 }) } | math sum
}

# Parse a mirror list file (YAML; format in docs/mirroring.md) into one row per entry.
@example "one repository" { "mirrors:\n  - repo: octo/hello\n    interval: 2h\n" | parse-mirror-list } --result [{kind: repo, source: "octo/hello", to: null, to_owner: null, include: null, exclude: null, interval: "2h"}]
export def parse-mirror-list []: string -> table {
  let doc = try { $in | from yaml } catch {|e| fail bad_mirror_list $"the mirror list is not valid YAML: ($e.msg)" --hint "see docs/mirroring.md for the format" }
  if ($doc | describe | str starts-with "record") == false or ($doc.mirrors? == null) {
    fail bad_mirror_list "the mirror list needs a top-level `mirrors:` list" --hint "see docs/mirroring.md for the format"
  }
  let unknown_top = ($doc | columns | where $it not-in [version defaults mirrors])
  if ($unknown_top | is-not-empty) {
    fail bad_mirror_list $"unknown top-level keys: ($unknown_top | str join ', ')" --hint "allowed: version, defaults, mirrors"
  }
  if ($doc.version? | default 1) != 1 { fail bad_mirror_list $"unsupported version ($doc.version)" --hint "this script reads version: 1" }
  let defaults = ($doc.defaults? | default {})
  let bad_defaults = ($defaults | columns | where $it not-in [interval to_owner])
  if ($bad_defaults | is-not-empty) { fail bad_mirror_list $"unknown keys in defaults: ($bad_defaults | str join ', ')" --hint "allowed: interval, to_owner" }
  mut rows = []
  for it in ($doc.mirrors | enumerate) {
    let e = $it.item
    let where = $"mirrors[($it.index)]"
    if ($e | describe | str starts-with "record") == false { fail bad_mirror_list $"($where) is not a mapping" --hint "write `- repo: owner/name` or `- org: name`" }
    let extra = ($e | columns | where $it not-in $ENTRY_KEYS)
    if ($extra | is-not-empty) { fail bad_mirror_list $"($where) has unknown keys: ($extra | str join ', ')" --hint $"allowed: ($ENTRY_KEYS | str join ', ')" }
    let kind = if ($e.repo? != null) and ($e.org? == null) { "repo" } else if ($e.org? != null) and ($e.repo? == null) { "org" } else {
      fail bad_mirror_list $"($where) needs exactly one of `repo` or `org`" --hint "write `- repo: owner/name` or `- org: name`"
    }
    let source = ($e | get $kind | into string)
    if $kind == "repo" and ($source !~ '^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$') { fail bad_mirror_list $"($where): '($source)' is not owner/name" }
    if $kind == "org" and ($source !~ '^[A-Za-z0-9_.-]+$') { fail bad_mirror_list $"($where): '($source)' is not an organization or user name" }
    if $kind == "org" and ($e.to? != null) { fail bad_mirror_list $"($where): `to` names one repository; use `to_owner` for an org" }
    if $kind == "repo" and (($e.include? != null) or ($e.exclude? != null)) { fail bad_mirror_list $"($where): include/exclude apply to `org` entries only" }
    if ($e.to? != null) and ($e.to !~ '^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$') { fail bad_mirror_list $"($where): to '($e.to)' is not owner/name" }
    for r in [($e.include? | default "") ($e.exclude? | default "")] { check-regex $r $where }
    let interval = ($e.interval? | default ($defaults.interval? | default (default-interval)) | into string)
    $interval | go-duration-secs | ignore
    $rows = ($rows | append {
      kind: $kind, source: $source, to: ($e.to? | default null)
      to_owner: ($e.to_owner? | default ($defaults.to_owner? | default null))
      include: ($e.include? | default null), exclude: ($e.exclude? | default null), interval: $interval
    })
  }
  $rows
}

def check-regex [re: string, where: string] {
  if ($re | is-empty) { return }
  try { "" =~ $re | ignore } catch {|e| fail bad_regex $"($where): '($re)' is not a valid regular expression" --hint "the syntax is Rust's regex crate (no look-around)" }
}

# Keep the repositories whose name matches `include` and does not match `exclude` (null: no filter).
@example "include and exclude" { [{name: svc-a} {name: svc-a-legacy} {name: web}] | filter-repos '^svc-' '-legacy$' | get name } --result [svc-a]
export def filter-repos [include: any, exclude: any]: list<any> -> list<any> {
  let inc = ($include | default "")
  let exc = ($exclude | default "")
  check-regex $inc "--include"
  check-regex $exc "--exclude"
  $in
  | where {|r| ($inc | is-empty) or ($r.name =~ $inc) }
  | where {|r| ($exc | is-empty) or ($r.name !~ $exc) }
}

# The mirror a GitHub repository should have: target names, clone address, visibility, interval.
export def desired-mirror [
  gh: record          # GitHub repository (full_name, name, clone_url, private, description)
  --to: any = null    # "owner/name" in Gitea (default: the same as on GitHub)
  --to-owner: any = null  # Gitea owner (default: the GitHub owner)
  --interval: any = null  # Gitea pull-mirror interval (default: default-interval)
]: nothing -> record {
  let gh_owner = ($gh.full_name | split row "/" | first)
  let target = if $to != null { $to } else { $"($to_owner | default $gh_owner)/($gh.name)" }
  let t = ($target | split row "/")
  {
    github: $gh.full_name
    owner: $t.0
    name: $t.1
    clone_addr: $gh.clone_url
    private: ($gh.private? | default false)
    interval: ($interval | default (default-interval))
    description: ($gh.description? | default "" | default "")
  }
}

def norm-url []: any -> string {
  $in | default "" | str lowercase | str trim --right --char "/" | str replace --regex '\.git$' ""
}

# What to do about the Gitea repository: create, update (with the changed settings), ok, or conflict.
export def mirror-action [want: record, have: any]: nothing -> record {
  if $have == null { return {action: "create", changes: {}, reason: "no such repository in Gitea"} }
  if not ($have.mirror? | default false) {
    return {action: "conflict", changes: {}, reason: $"($want.owner)/($want.name) exists in Gitea and is not a mirror"}
  }
  if ($have.original_url? | norm-url) != ($want.clone_addr | norm-url) {
    return {action: "conflict", changes: {}, reason: $"($want.owner)/($want.name) mirrors ($have.original_url?), not ($want.clone_addr)"}
  }
  mut changes = {}
  if ($have.mirror_interval? | default $DEFAULT_INTERVAL | go-duration-secs) != ($want.interval | go-duration-secs) {
    $changes = ($changes | insert mirror_interval $want.interval)
  }
  if ($have.private? | default false) != $want.private {
    $changes = ($changes | insert private $want.private)
  }
  if ($changes | is-empty) { {action: "ok", changes: {}, reason: "mirror up to date"} } else {
    {action: "update", changes: $changes, reason: $"settings differ: ($changes | columns | str join ', ')"}
  }
}

# The body of POST /repos/migrate (MigrateRepoOptions). A public repository is a plain git mirror (service
# `git`: no GitHub API calls from Gitea, no credentials stored); a private one goes through Gitea's GitHub
# migration with the token (service `github`, `auth_token`), which Gitea keeps to pull.
export def migrate-body [want: record, token: any]: nothing -> record {
  let body = {
    clone_addr: $want.clone_addr
    repo_owner: $want.owner
    repo_name: $want.name
    mirror: true
    mirror_interval: $want.interval
    private: $want.private
    description: $want.description
    service: (if $want.private { "github" } else { "git" })
    wiki: false, issues: false, labels: false, milestones: false, pull_requests: false, releases: false, lfs: false
  }
  if $want.private {
    if $token == null {
      fail github_token_missing $"($want.github) is private; Gitea needs a GitHub token to mirror it" --hint "set GITHUB_TOKEN (or GITHUB_TOKEN_FILE) to a token that can read the repository"
    }
    $body | insert auth_token $token
  } else { $body }
}

# The Gitea push webhook every mirror carries.
export def gitea-hook-want []: nothing -> record {
  let path = (load-contract).http.GITEA_WEBHOOK_PATH
  {
    type: "gitea"
    url: $"($env.RAIBID_HOOK_URL | str trim --right --char '/')($path)"
    content_type: "json"
    events: [push]
    active: true
    branch_filter: "*"
  }
}

# The GitHub push webhook every mirror carries.
export def github-hook-want []: nothing -> record {
  let path = (load-contract).http.GITHUB_WEBHOOK_PATH
  {url: $"(public-url)($path)", content_type: "json", events: [push], active: true, insecure_ssl: "0"}
}

# What to do about a webhook: find the hook with the wanted URL and compare its settings.
export def hook-action [want: record, hooks: list<any>, --rotate-secret]: nothing -> record {
  let same = ($hooks | where {|h| ($h.config?.url? | norm-url) == ($want.url | norm-url) })
  if ($same | is-empty) { return {action: "create", id: null, changes: [], reason: "no hook to the dispatcher"} }
  let h = ($same | first)
  let diffs = ([
    (if ($h.active? | default false) != $want.active { "active" })
    (if (($h.events? | default []) | sort) != ($want.events | sort) { "events" })
    (if ($h.config?.content_type? | default "") != $want.content_type { "content_type" })
    (if ($want.branch_filter? != null) and (($h.branch_filter? | default "*") != $want.branch_filter) { "branch_filter" })
    (if ($want.insecure_ssl? != null) and (($h.config?.insecure_ssl? | default "0" | into string) != $want.insecure_ssl) { "insecure_ssl" })
    (if $rotate_secret { "secret" })
  ] | compact)
  if ($diffs | is-empty) { {action: "ok", id: $h.id, changes: [], reason: "hook up to date"} } else {
    {action: "update", id: $h.id, changes: $diffs, reason: $"settings differ: ($diffs | str join ', ')"}
  }
}

# Gitea CreateHookOption / EditHookOption body.
export def gitea-hook-body [want: record, secret: string, --edit]: nothing -> record {
  let body = {
    config: {url: $want.url, content_type: $want.content_type, secret: $secret}
    events: $want.events
    active: $want.active
    branch_filter: $want.branch_filter
  }
  if $edit { $body } else { $body | insert type $want.type }
}

# GitHub create/update webhook body.
export def github-hook-body [want: record, secret: string, --edit]: nothing -> record {
  let body = {
    active: $want.active
    events: $want.events
    config: {url: $want.url, content_type: $want.content_type, insecure_ssl: $want.insecure_ssl, secret: $secret}
  }
  if $edit { $body } else { $body | insert name "web" }
}

# Mirror one GitHub repository (already fetched) into Gitea and wire both webhooks. Returns one row.
export def apply-mirror [
  gh: record                 # GitHub repository record
  want: record               # from desired-mirror
  --dry-run                  # only read and report what would change
  --no-github-hook           # leave GitHub's webhooks alone
  --rotate-secrets           # re-send webhook secrets even when nothing else differs
  --owners-seen: list<string> = []  # Gitea owners already ensured in this run
]: nothing -> record {
  let target = $"($want.owner)/($want.name)"
  let have = (gitea get-repo $want.owner $want.name)
  let m = (mirror-action $want $have)
  if $m.action == "conflict" {
    fail mirror_conflict $m.reason --hint $"rename the target \(`--to` or `to:` in the list\) or delete ($target) in Gitea first"
  }
  if not $dry_run {
    match $m.action {
      "create" => {
        if $want.owner not-in $owners_seen { gitea ensure-owner $want.owner | ignore }
        log step $"($target): creating a pull mirror of ($gh.full_name)"
        gitea call POST "/repos/migrate" --body (migrate-body $want (github token)) | ignore
      }
      "update" => {
        log step $"($target): updating mirror settings ($m.changes | columns | str join ', ')"
        gitea call PATCH $"/repos/($want.owner)/($want.name)" --body $m.changes | ignore
      }
      _ => {}
    }
  }
  # Gitea webhook.
  let gw = (gitea-hook-want)
  let ghooks = if $have == null { [] } else { gitea hooks $want.owner $want.name }
  let ga = (hook-action $gw $ghooks --rotate-secret=$rotate_secrets)
  if not $dry_run and $ga.action != "ok" {
    let s = (secret RAIBID_GITEA_WEBHOOK_SECRET --purpose "the Gitea webhook")
    if $ga.action == "create" {
      log step $"($target): adding the Gitea push webhook → ($gw.url)"
      gitea call POST $"/repos/($want.owner)/($want.name)/hooks" --body (gitea-hook-body $gw $s) | ignore
    } else {
      log step $"($target): updating the Gitea webhook \(($ga.changes | str join ', ')\)"
      gitea call PATCH $"/repos/($want.owner)/($want.name)/hooks/($ga.id)" --body (gitea-hook-body $gw $s --edit) | ignore
    }
  }
  # GitHub webhook.
  let hw = (github-hook-want)
  let ha = if $no_github_hook {
    {action: "skipped", reason: "--no-github-hook"}
  } else if (github token) == null {
    {action: "skipped", reason: "no GITHUB_TOKEN (webhooks need admin rights on the repository)"}
  } else {
    hook-action $hw (github hooks $gh.full_name) --rotate-secret=$rotate_secrets
  }
  if not $dry_run and $ha.action in [create update] {
    let s = (secret RAIBID_GITHUB_WEBHOOK_SECRET --purpose "the GitHub webhook")
    if $ha.action == "create" {
      log step $"($gh.full_name): adding the GitHub push webhook → ($hw.url)"
      github call POST $"/repos/($gh.full_name)/hooks" --body (github-hook-body $hw $s) | ignore
    } else {
      log step $"($gh.full_name): updating the GitHub webhook \(($ha.changes | str join ', ')\)"
      github call PATCH $"/repos/($gh.full_name)/hooks/($ha.id)" --body (github-hook-body $hw $s --edit) | ignore
    }
  }
  {
    github: $gh.full_name
    gitea: $target
    mirror: $m.action
    gitea_hook: $ga.action
    github_hook: $ha.action
    note: ([$m.reason, $ga.reason, $ha.reason] | str join "; ")
  }
}
