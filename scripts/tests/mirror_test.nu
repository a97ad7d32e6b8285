# Tests of scripts/mirror.nu and scripts/lib/mirroring.nu: the pure parts (list-file parsing, regex filtering,
# plans) and every Gitea and GitHub call, made against fake servers that check each call against the Gitea
# API document (the shared swagger file, loaded at test time) and GitHub's documented shapes.

use std/assert
use std/testing *
use helpers.nu *
use ../lib/mirroring.nu *
use ../mirror.nu ["main repo" "main org" "main list" "main sync" "main status" "main mapping"]

const GITEA_TOKEN = "gitea-test-token-0123456789"
const GH_TOKEN = "ghp_testtoken0123456789abcdef"

def gh-repo [owner: string, name: string, --private, --type: string = "Organization"] {
  {
    id: (random int 1..999999), name: $name, full_name: $"($owner)/($name)"
    owner: {login: $owner, type: $type}, private: $private, fork: false, archived: false
    description: $"($name) service", default_branch: "main"
    clone_url: $"https://github.com/($owner)/($name).git", html_url: $"https://github.com/($owner)/($name)"
  }
}

# 103 repositories (two pages of 100), three of which match ^svc- and one of those -legacy$.
def github-state [--rate: record = {}] {
  let filler = (0..99 | each {|i| gh-repo acme $"lib-($i | fill -a r -c '0' -w 3)" })
  let repos = ($filler | append [(gh-repo acme svc-api) (gh-repo acme svc-worker --private) (gh-repo acme svc-old-legacy)])
  {
    accounts: {acme: {type: Organization}, octo: {type: User}}
    viewer: "octo", token: $GH_TOKEN
    repos: ($repos | append (gh-repo octo hello --type User) | reduce --fold {} {|r, acc| $acc | insert $r.full_name $r })
    rate: ({limit: 5000, remaining: 5000, reset_in: 3600} | merge $rate)
  }
}

def gitea-state [] {
  {users: {raibid: {token: $GITEA_TOKEN, password: "pw", is_admin: true}}, orgs: {}, repos: {}}
}

def mirror-env [f: record] {
  {
    RAIBID_GITEA_URL: $f.gitea.url, RAIBID_GITEA_TOKEN: $GITEA_TOKEN
    RAIBID_GITHUB_API: $f.github.url, GITHUB_TOKEN: $GH_TOKEN
    RAIBID_GITEA_WEBHOOK_SECRET: "gitea-hook-secret", RAIBID_GITHUB_WEBHOOK_SECRET: "github-hook-secret"
    RAIBID_PUBLIC_URL: "https://ci.example.org"
  }
}

def writes [srv: record] { calls $srv | where method in [POST PATCH PUT DELETE] }

# --- pure parts ----------------------------------------------------------------------------------------

@test
def list_file_parses_repos_and_orgs [] {
  let text = "version: 1
defaults:
  interval: 1h
mirrors:
  - repo: octo/hello
  - repo: octo/world
    to: ci/world
    interval: 30m
  - org: acme
    include: '^svc-'
    exclude: '-legacy$'
    to_owner: acme-mirrors
"
  let rows = ($text | parse-mirror-list)
  assert equal ($rows | length) 3
  assert equal ($rows.0 | select kind source interval) {kind: repo, source: "octo/hello", interval: "1h"}
  assert equal ($rows.1 | select to interval) {to: "ci/world", interval: "30m"}
  assert equal ($rows.2 | select kind source include exclude to_owner) {kind: org, source: acme, include: '^svc-', exclude: '-legacy$', to_owner: acme-mirrors}
}

@test
def list_file_rejects_bad_entries [] {
  for bad in [
    "repos:\n  - repo: a/b\n"                          # no mirrors:
    "mirrors:\n  - repo: a/b\n    org: a\n"           # both kinds
    "mirrors:\n  - repo: justname\n"                  # not owner/name
    "mirrors:\n  - org: acme\n    include: '(('\n"    # bad regex
    "mirrors:\n  - org: acme\n    to: x/y\n"          # to on an org
    "mirrors:\n  - repo: a/b\n    include: x\n"       # include on a repo
    "mirrors:\n  - repo: a/b\n    intervall: 1h\n"    # unknown key (typo)
    "mirrors:\n  - repo: a/b\n    interval: soon\n"   # bad duration
    "mirrors: [\n"                                    # not YAML
  ] {
    let code = (error-code-of { $bad | parse-mirror-list })
    assert ($code in [bad_mirror_list bad_regex bad_interval]) $"unexpected code ($code) for ($bad)"
  }
}

@test
def regex_filtering_include_exclude [] {
  let repos = ([svc-api svc-worker svc-old-legacy web lib-svc] | each {|n| {name: $n} })
  assert equal ($repos | filter-repos '^svc-' null | get name) [svc-api svc-worker svc-old-legacy]
  assert equal ($repos | filter-repos null '-legacy$' | get name) [svc-api svc-worker web lib-svc]
  assert equal ($repos | filter-repos '^svc-' '-legacy$' | get name) [svc-api svc-worker]
  assert equal ($repos | filter-repos null null | length) 5
  assert equal (error-code-of { $repos | filter-repos '[' null }) bad_regex
}

@test
def default_interval_comes_from_the_gitea_values [] {
  let values = (open --raw ($REPO_ROOT | path join infrastructure controllers gitea.yaml) | from yaml
    | where {|d| $d.kind? == HelmRelease } | get 0.spec.values.gitea.config.mirror.DEFAULT_INTERVAL)
  assert equal (default-interval) $values
}

@test
def go_durations [] {
  assert equal ("8h0m0s" | go-duration-secs) 28800
  assert equal ("10m" | go-duration-secs) 600
  assert equal ("1h30m0s" | go-duration-secs) 5400
}

@test
def plans_detect_what_differs [] {
  let want = {github: "acme/a", owner: acme, name: a, clone_addr: "https://github.com/acme/a.git", private: false, interval: "8h0m0s", description: ""}
  assert equal (mirror-action $want null).action create
  let have = {mirror: true, original_url: "https://github.com/acme/a", mirror_interval: "8h0m0s", private: false}
  assert equal (mirror-action $want $have).action ok
  assert equal (mirror-action $want ($have | update mirror_interval "1h0m0s")).changes {mirror_interval: "8h0m0s"}
  assert equal (mirror-action $want ($have | update mirror false)).action conflict
  assert equal (mirror-action $want ($have | update original_url "https://github.com/other/a")).action conflict
  let hw = {type: gitea, url: "http://d/webhooks/gitea", content_type: json, events: [push], active: true, branch_filter: "*"}
  assert equal (hook-action $hw []).action create
  let h = {id: 7, active: true, events: [push], branch_filter: "*", config: {url: "http://d/webhooks/gitea", content_type: json}}
  assert equal (hook-action $hw [$h]).action ok
  assert equal (hook-action $hw [($h | update events [push create])]) {action: update, id: 7, changes: [events], reason: "settings differ: events"}
  assert equal (hook-action $hw [$h] --rotate-secret).changes [secret]
}

@test
def migrate_body_sends_token_only_for_private [] {
  let want = {github: "acme/a", owner: acme, name: a, clone_addr: "https://github.com/acme/a.git", private: false, interval: "8h0m0s", description: ""}
  assert equal ((migrate-body $want "tok") | select -o auth_token service) {auth_token: null, service: git}
  assert equal ((migrate-body ($want | update private true) "tok") | select auth_token service) {auth_token: "tok", service: github}
  assert equal (error-code-of { migrate-body ($want | update private true) null }) github_token_missing
}

# --- against the fake Gitea and GitHub ------------------------------------------------------------------

@test
def org_mirrors_filtered_repos_and_rerun_changes_nothing [] {
  with-fakes {gitea: (gitea-state), github: (github-state)} {|f|
    with-clean-env (mirror-env $f) {
      let first = (main org acme --include '^svc-' --exclude '-legacy$')
      assert equal ($first | select github gitea mirror gitea_hook github_hook) [
        [github gitea mirror gitea_hook github_hook];
        ["acme/svc-api" "acme/svc-api" create create create]
        ["acme/svc-worker" "acme/svc-worker" create create create]
      ]
      # The listing spans two pages: the Link header was followed.
      assert equal (calls $f.github GET '^/orgs/acme/repos$' | length) 2
      assert equal (calls $f.gitea POST '^/api/v1/repos/migrate$' | length) 2
      assert equal (calls $f.gitea POST '^/api/v1/orgs$' | length) 1 "the acme org is created once"
      assert equal (calls $f.gitea POST 'hooks$' | length) 2
      assert equal (calls $f.github POST 'hooks$' | length) 2
      let migrate = (calls $f.gitea POST '^/api/v1/repos/migrate$' | get body)
      assert equal ($migrate | where repo_name == svc-worker | get 0.auth_token) $GH_TOKEN "private repo: Gitea gets the GitHub token"
      assert equal ($migrate | where repo_name == svc-api | get 0 | get -o auth_token) null "public repo: no token stored in Gitea"
      assert ($migrate | all {|b| $b.mirror == true })
      let hook = (calls $f.gitea POST 'hooks$' | first | get body)
      assert equal $hook.config.url "http://raibid-dispatcher.raibid-system.svc:8080/webhooks/gitea"
      assert equal $hook.config.secret "gitea-hook-secret"
      let ghook = (calls $f.github POST 'hooks$' | first | get body)
      assert equal $ghook.config.url "https://ci.example.org/webhooks/github"
      assert equal $ghook.events [push]

      let before_gitea = (writes $f.gitea | length)
      let before_github = (writes $f.github | length)
      let second = (main org acme --include '^svc-' --exclude '-legacy$')
      assert equal ($second | select mirror gitea_hook github_hook | uniq) [{mirror: ok, gitea_hook: ok, github_hook: ok}]
      assert equal (writes $f.gitea | length) $before_gitea "re-running made a Gitea write call"
      assert equal (writes $f.github | length) $before_github "re-running made a GitHub write call"
      assert-no-violations $f.gitea
      assert-no-violations $f.github
    }
  }
}

@test
def dry_run_reads_but_never_writes [] {
  with-fakes {gitea: (gitea-state), github: (github-state)} {|f|
    with-clean-env (mirror-env $f) {
      let plan = (main org acme --include '^svc-' --dry-run)
      assert equal ($plan | get mirror | uniq) [create]
      assert equal ($plan | length) 3
      assert equal (writes $f.gitea) []
      assert equal (writes $f.github) []
      assert-no-violations $f.gitea
      assert-no-violations $f.github
    }
  }
}

@test
def existing_mirror_and_hooks_are_updated_when_settings_differ [] {
  with-fakes {gitea: (gitea-state), github: (github-state)} {|f|
    with-clean-env (mirror-env $f) {
      main repo octo/hello | ignore
      # Drift: someone changed the interval and the hook's events by hand.
      gitea-patch $f "/repos/octo/hello" {mirror_interval: "3h"}
      let hook = (http get --headers {Authorization: $"token ($GITEA_TOKEN)"} $"($f.gitea.url)/api/v1/repos/octo/hello/hooks" | first)
      gitea-patch $f $"/repos/octo/hello/hooks/($hook.id)" {events: [push create]}
      let r = (main repo octo/hello)
      assert equal ($r | select mirror gitea_hook github_hook | first) {mirror: update, gitea_hook: update, github_hook: ok}
      let patches = (calls $f.gitea PATCH | get body)
      assert equal ($patches | last 2 | first) {mirror_interval: (default-interval)}
      assert equal ($patches | last | get events) [push]
      assert equal (main repo octo/hello | get 0.mirror) ok
      assert-no-violations $f.gitea
      assert-no-violations $f.github
    }
  }
}

def gitea-patch [f: record, path: string, body: record] {
  http patch --content-type application/json --headers {Authorization: $"token ($GITEA_TOKEN)"} $"($f.gitea.url)/api/v1($path)" ($body | to json) | ignore
}

@test
def a_non_mirror_repository_is_a_conflict [] {
  let gitea = (gitea-state | upsert repos {"octo/hello": {id: 1, name: hello, full_name: "octo/hello", owner: {id: 1, login: octo}, mirror: false, private: false, original_url: "", mirror_interval: "", default_branch: main, empty: false}})
  with-fakes {gitea: $gitea, github: (github-state)} {|f|
    with-clean-env (mirror-env $f) {
      assert equal (error-code-of { main repo octo/hello }) mirror_conflict
      assert equal (calls $f.gitea POST) []
    }
  }
}

@test
def private_repo_needs_a_token_and_the_token_is_never_printed [] {
  with-fakes {gitea: (gitea-state), github: (github-state)} {|f|
    with-clean-env ((mirror-env $f) | reject GITHUB_TOKEN) {
      assert equal (error-code-of { main repo acme/svc-worker }) github_not_found
    }
    # Token from a file; the CLI's whole output must not contain it.
    let tok_file = (mktemp -t gh-token-XXXXXX)
    $GH_TOKEN | save -f $tok_file
    with-clean-env ((mirror-env $f) | reject GITHUB_TOKEN | insert GITHUB_TOKEN_FILE $tok_file) {
      let out = (do { ^$nu.current-exe --no-config-file ($REPO_ROOT | path join scripts mirror.nu) repo acme/svc-worker } | complete)
      assert equal $out.exit_code 0 $out.stderr
      assert not ($out.stdout + $out.stderr | str contains $GH_TOKEN) "the GitHub token was printed"
      assert not ($out.stdout + $out.stderr | str contains "gitea-hook-secret") "a webhook secret was printed"
      assert ($out.stdout | str contains "acme/svc-worker")
    }
    rm -f $tok_file
    assert equal (calls $f.gitea POST '^/api/v1/repos/migrate$' | get 0.body.auth_token) $GH_TOKEN
    assert-no-violations $f.gitea
    assert-no-violations $f.github
  }
}

@test
def github_rate_limit_is_waited_for_not_hammered [] {
  # Primary limit: 3 requests left, reset in 2 s. The script must wait for the reset instead of getting 403s.
  with-fakes {gitea: (gitea-state), github: (github-state --rate {remaining: 3, reset_in: 2})} {|f|
    with-clean-env (mirror-env $f) {
      let r = (main org acme --include '^svc-api$' --no-github-hook)
      assert equal ($r | get 0.mirror) create
      assert equal (fake-get $f.github state | get rate_limited) 0 "the script ran into the rate limit"
      assert-no-violations $f.github
    }
  }
  # Secondary limit: one 403 with Retry-After; the script waits and retries once.
  let state = (github-state | insert secondary_once ["GET /orgs/acme/repos"])
  with-fakes {gitea: (gitea-state), github: $state} {|f|
    with-clean-env (mirror-env $f) {
      let r = (main org acme --include '^svc-api$' --dry-run)
      assert equal ($r | length) 1
      assert equal (fake-get $f.github state | get rate_limited) 1
      assert-no-violations $f.github
    }
  }
}

@test
def list_file_mirrors_every_entry [] {
  let file = (mktemp -t mirrors-XXXXXX.yaml)
  "version: 1
mirrors:
  - repo: octo/hello
    to: ci/hello
    interval: 1h
  - org: acme
    include: '^svc-'
    exclude: '-legacy$'
" | save -f $file
  with-fakes {gitea: (gitea-state), github: (github-state)} {|f|
    with-clean-env (mirror-env $f) {
      let r = (main list $file)
      assert equal ($r | get gitea) ["ci/hello" "acme/svc-api" "acme/svc-worker"]
      let hello = (calls $f.gitea POST '^/api/v1/repos/migrate$' | get body | where repo_name == hello | first)
      assert equal ($hello | select repo_owner mirror_interval) {repo_owner: ci, mirror_interval: "1h"}
      assert equal ((main list $file) | get mirror | uniq) [ok]
      assert-no-violations $f.gitea
      assert-no-violations $f.github
    }
  }
  rm -f $file
}

@test
def sync_and_status [] {
  with-fakes {gitea: (gitea-state | insert statuses {"acme/svc-api": failure}), github: (github-state)} {|f|
    with-clean-env (mirror-env $f) {
      main org acme --include '^svc-' --exclude '-legacy$' | ignore
      assert equal (main sync acme/svc-api) [{repo: "acme/svc-api", sync: requested}]
      assert equal (main sync --all | get repo) ["acme/svc-api" "acme/svc-worker"]
      assert equal (fake-get $f.gitea state | get syncs) {"acme/svc-api": 2, "acme/svc-worker": 1}
      let st = (main status)
      assert equal ($st | columns) [repo source last_sync gitea_hook github_hook last_build]
      assert equal ($st | select repo source gitea_hook github_hook last_build) [
        [repo source gitea_hook github_hook last_build];
        ["acme/svc-api" "acme/svc-api" true true failure]
        ["acme/svc-worker" "acme/svc-worker" true true null]
      ]
      assert equal ($st.last_sync.0 | describe) datetime
      assert equal (error-code-of { main sync }) missing_argument
      assert equal (main mapping) "acme/svc-api=acme/svc-api,acme/svc-worker=acme/svc-worker"
      assert-no-violations $f.gitea
      assert-no-violations $f.github
    }
  }
}

@test
def gitea_token_errors_say_what_to_do [] {
  with-fakes {gitea: (gitea-state), github: (github-state)} {|f|
    with-clean-env ((mirror-env $f) | update RAIBID_GITEA_TOKEN "wrong") {
      assert equal (error-code-of { main sync acme/x }) gitea_unauthorized
    }
    with-clean-env ((mirror-env $f) | reject RAIBID_GITEA_TOKEN) {
      assert equal (error-code-of { main sync acme/x }) secret_missing
    }
  }
  with-clean-env {RAIBID_GITEA_URL: "http://127.0.0.1:9", RAIBID_GITEA_TOKEN: "t"} {
    assert equal (error-code-of { main sync acme/x }) unreachable
  }
}
