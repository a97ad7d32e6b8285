#!/usr/bin/env nu
# Mirror GitHub repositories into Gitea so every push builds on raibid-ci.
#
# A mirror is a Gitea pull mirror, a Gitea push webhook to the dispatcher (/webhooks/gitea) and a GitHub push
# webhook to the dispatcher (/webhooks/github; the dispatcher then asks Gitea to mirror-sync at once).
# Every command reads what exists first and only creates or updates what differs: re-running is safe.
#
# Environment (defaults in scripts/lib/env.nu): RAIBID_GITEA_URL, RAIBID_GITEA_TOKEN[_FILE],
# RAIBID_GITEA_WEBHOOK_SECRET[_FILE], RAIBID_GITHUB_WEBHOOK_SECRET[_FILE], GITHUB_TOKEN[_FILE],
# RAIBID_HOOK_URL (dispatcher as Gitea reaches it), RAIBID_PUBLIC_URL (dispatcher as GitHub reaches it).

use lib/env.nu
use lib/errors.nu [fail]
use lib/mirroring.nu *
use lib/gitea.nu
use lib/github.nu
use lib/log.nu

# Mirror GitHub repositories into Gitea (see the subcommands).
export def main []: nothing -> nothing {
  print (help main)
}

def run-mirrors [
  entries: list<any>   # [{gh, want}]
  dry_run: bool
  no_github_hook: bool
  rotate_secrets: bool
]: nothing -> table {
  mut seen = []
  mut rows = []
  for e in $entries {
    let row = (apply-mirror $e.gh $e.want --dry-run=$dry_run --no-github-hook=$no_github_hook --rotate-secrets=$rotate_secrets --owners-seen $seen)
    $seen = ($seen | append $e.want.owner | uniq)
    $rows = ($rows | append $row)
  }
  if $dry_run {
    log info "dry run: nothing was changed"
  } else if ($rows | any {|r| $r.mirror == "create" }) {
    log info "new mirrors: the dispatcher reads them from Gitea on the next GitHub push (check: nu scripts/raibid.nu mirror status)"
  }
  $rows
}

# Mirror one GitHub repository.
@example "mirror a repository under the same name" { nu scripts/mirror.nu repo octo/hello }
@example "preview only" { nu scripts/mirror.nu repo octo/hello --dry-run }
export def "main repo" [
  repo: string                 # GitHub repository, owner/name
  --to: string                 # Gitea owner/name (default: the same as on GitHub)
  --to-owner: string           # Gitea owner (default: the GitHub owner)
  --interval: string           # Gitea pull-mirror interval (default: the cluster's, from infrastructure/controllers/gitea.yaml)
  --dry-run                    # show what would be created or updated, change nothing
  --no-github-hook             # do not create or update the GitHub webhook
  --rotate-secrets             # re-send the webhook secrets to existing hooks
]: nothing -> table {
  if $repo !~ '^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$' {
    fail bad_repo_name $"'($repo)' is not owner/name" --hint "e.g. nu scripts/mirror.nu repo octo/hello" --span (metadata $repo).span
  }
  let gh = (github get-repo $repo)
  let want = (desired-mirror $gh --to $to --to-owner $to_owner --interval $interval)
  run-mirrors [{gh: $gh, want: $want}] $dry_run $no_github_hook $rotate_secrets
}

# Mirror every repository of a GitHub organization or user, filtered by regular expressions on the name.
@example "all service repositories but the legacy ones" { nu scripts/mirror.nu org acme --include '^svc-' --exclude '-legacy$' }
export def "main org" [
  org: string                  # GitHub organization or user
  --include: string            # keep names matching this regex
  --exclude: string            # drop names matching this regex
  --to-owner: string           # Gitea owner (default: the same name as on GitHub)
  --interval: string           # Gitea pull-mirror interval (default: the cluster's)
  --dry-run                    # show what would be created or updated, change nothing
  --no-github-hook             # do not create or update GitHub webhooks
  --rotate-secrets             # re-send the webhook secrets to existing hooks
]: nothing -> table {
  let repos = (github owner-repos $org | filter-repos $include $exclude | sort-by name)
  log info $"($repos | length) repositories of ($org) selected"
  let entries = ($repos | each {|gh| {gh: $gh, want: (desired-mirror $gh --to-owner $to_owner --interval $interval)} })
  run-mirrors $entries $dry_run $no_github_hook $rotate_secrets
}

# Mirror what a declarative list file names (format: docs/mirroring.md).
@example "apply the list kept in the ops repo" { nu scripts/mirror.nu list apps/dgx-spark/mirrors.yaml }
export def "main list" [
  file: path                   # the mirror list (YAML)
  --dry-run                    # show what would be created or updated, change nothing
  --no-github-hook             # do not create or update GitHub webhooks
  --rotate-secrets             # re-send the webhook secrets to existing hooks
]: nothing -> table {
  if not ($file | path exists) {
    fail mirror_list_missing $"($file) does not exist" --hint "see docs/mirroring.md for the format" --span (metadata $file).span
  }
  let spec = (open --raw $file | parse-mirror-list)
  mut entries = []
  for e in $spec {
    if $e.kind == "repo" {
      let gh = (github get-repo $e.source)
      $entries = ($entries | append {gh: $gh, want: (desired-mirror $gh --to $e.to --to-owner $e.to_owner --interval $e.interval)})
    } else {
      let repos = (github owner-repos $e.source | filter-repos $e.include $e.exclude | sort-by name)
      log info $"($e.source): ($repos | length) repositories selected"
      $entries = ($entries | append ($repos | each {|gh| {gh: $gh, want: (desired-mirror $gh --to-owner $e.to_owner --interval $e.interval)} }))
    }
  }
  let dupes = ($entries | get want | each {|w| $"($w.owner)/($w.name)" } | uniq --repeated)
  if ($dupes | is-not-empty) {
    fail mirror_list_duplicate $"two entries mirror into the same Gitea repository: ($dupes | str join ', ')" --hint "give one of them `to: owner/name`"
  }
  run-mirrors $entries $dry_run $no_github_hook $rotate_secrets
}

# Every pull mirror in Gitea (that the token can see).
def gitea-mirrors []: nothing -> list<any> {
  gitea get-all "/repos/search?mode=mirror" | where {|r| $r.mirror? == true }
}

# Make Gitea fetch from GitHub now.
@example "one repository" { nu scripts/mirror.nu sync octo/hello }
@example "every mirror" { nu scripts/mirror.nu sync --all }
export def "main sync" [
  repo?: string   # Gitea owner/name of the mirror
  --all           # every mirror in Gitea
]: nothing -> table {
  let targets = if $all {
    gitea-mirrors | get full_name
  } else if $repo != null {
    [$repo]
  } else {
    fail missing_argument "name a mirror or pass --all" --hint "nu scripts/mirror.nu sync owner/name"
  }
  $targets | each {|t|
    let p = ($t | split row "/")
    gitea call POST $"/repos/($p.0)/($p.1)/mirror-sync" | ignore
    log step $"($t): sync requested"
    {repo: $t, sync: "requested"}
  }
}

# One row per Gitea mirror: source, last sync, webhooks present, last build status.
@example "failing mirrors" { nu scripts/mirror.nu status | where last_build == failure }
export def "main status" []: nothing -> table {
  let gitea_url = (gitea-hook-want).url
  let github_url = (github-hook-want).url
  let have_gh_token = ((github token) != null)
  gitea-mirrors | sort-by full_name | each {|r|
    let p = ($r.full_name | split row "/")
    let ghooks = (gitea hooks $p.0 $p.1)
    let source = ($r.original_url? | default "" | url parse | get path | str trim --char "/" | str replace --regex '\.git$' "")
    let github_hook = if $have_gh_token and ($source | str contains "/") {
      try { github hooks $source | any {|h| $h.config?.url? == $github_url } } catch { null }
    } else { null }
    let build = if ($r.empty? | default false) { null } else {
      let s = (gitea call GET $"/repos/($p.0)/($p.1)/commits/($r.default_branch)/status" --ok [200 404])
      if $s.status == 200 and ($s.body.total_count? | default 0) > 0 { $s.body.state } else { null }
    }
    {
      repo: $r.full_name
      source: $source
      last_sync: ($r.mirror_updated? | default null | if $in == null { null } else { into datetime })
      gitea_hook: ($ghooks | any {|h| $h.config?.url? == $gitea_url })
      github_hook: $github_hook
      last_build: $build
    }
  }
}

# The mapping (github-owner/name=gitea-owner/name,...) of every GitHub mirror in Gitea, in RAIBID_MIRRORS form.
# The dispatcher reads the same mapping from Gitea itself (`raibid mirror status` shows it); this output is only
# for an override or for comparing.
@example "print the value for the apps overlay" { nu scripts/mirror.nu mapping }
export def "main mapping" []: nothing -> string {
  gitea-mirrors
  | each {|r|
      let u = ($r.original_url? | default "" | url parse)
      let src = ($u.path | str trim --char "/" | str replace --regex '\.git$' "")
      if ($u.host | str ends-with "github.com") or ($src | str contains "/") { $"($src | str lowercase)=($r.full_name)" }
    }
  | compact | sort | str join ","
}
