# Tests of scripts/status.nu and scripts/teardown.nu. The cluster side is the FAKE SYSTEM of recorded
# outputs of a finished Spark (fixtures/system-finished.nuon; a stand-in, k3s cannot run here); the
# dispatcher and Gitea sides are the fake HTTP servers.

use std/assert
use std/testing *
use helpers.nu *
use ../lib/bootstrap.nu [settings]

def fixture []: nothing -> path {
  let s = (settings)
  let text = ($s.images | reduce --fold (open --raw ($REPO_ROOT | path join scripts tests fixtures system-finished.nuon)) {|i, acc|
    $acc | str replace --all $"{tag:($i.name)}" ($i.ref | split row ":" | last)
  })
  let f = (mktemp -t raibid-system-XXXXXX.nuon)
  $text | save -f $f
  $f
}

def script [name: string]: nothing -> string { $REPO_ROOT | path join scripts $name }

def mirror-repo [full: string] {
  let p = ($full | split row "/")
  {id: 1, name: $p.1, full_name: $full, owner: {id: 1, login: $p.0}, mirror: true, private: false, empty: false,
    original_url: $"https://github.com/($full).git", mirror_interval: "1h0m0s", default_branch: main}
}

@test
def status_is_one_table_over_cluster_dispatcher_and_gitea [] {
  let f = (fixture)
  let gitea = {users: {raibid-admin: {token: "gt", password: "pw", is_admin: true}}
    repos: {"acme/a": (mirror-repo "acme/a"), "acme/b": (mirror-repo "acme/b"), "raibid/raibid-ci": ((mirror-repo "raibid/raibid-ci") | update mirror false)}}
  let disp = {token: "at", jobs: [], queue: {length: 3, lag: 1, pending: 2, oldest_waiting_age_secs: 4.25, consumers: 2}
    agents: [{id: a1, current_job: "01JD0000000000000000000001", last_heartbeat: "2026-11-21T10:00:00Z", jobs_done: 3} {id: a2, current_job: null, last_heartbeat: "2026-11-21T10:00:00Z", jobs_done: 1}]}
  with-fakes {gitea: $gitea, dispatcher: $disp} {|srv|
    with-clean-env {RAIBID_FAKE_SYSTEM: $f, RAIBID_URL: $srv.dispatcher.url, RAIBID_API_TOKEN: "at", RAIBID_GITEA_URL: $srv.gitea.url, RAIBID_GITEA_TOKEN: "gt"} {
      let out = (do { ^$nu.current-exe --no-config-file (script status.nu) | complete })
      assert equal $out.exit_code 0 $out.stderr
      use ../status.nu
      let t = (status)
      assert equal ($t | columns) [component name state detail]
      assert equal ($t | where state != ok) [] $"not ok: ($t | where state != ok | to nuon)"
      assert equal ($t | get component | uniq) [node "flux source" "flux kustomization" "flux helmrelease" "keda scaledjob" queue agents gitea]
      assert equal ($t | where component == "flux kustomization" | get name) ["flux-system/flux-system" "flux-system/infra-controllers" "flux-system/infra-configs" "flux-system/apps"]
      assert ($t | where component == queue | get 0.detail | str contains "length 3, lag 1, pending 2")
      assert equal ($t | where component == agents | get 0.detail) "2 agents, 1 busy"
      assert equal ($t | where component == gitea | get 0.detail) "2 GitHub mirrors"
      assert ($t | where component == "keda scaledjob" | get 0.detail | str contains "active: False")
      assert-no-violations $srv.gitea
      assert-no-violations $srv.dispatcher
    }
    # The dispatcher down: its rows say so and why; the rest still shows.
    with-clean-env {RAIBID_FAKE_SYSTEM: $f, RAIBID_URL: "http://127.0.0.1:9", RAIBID_API_TOKEN: "at", RAIBID_GITEA_URL: $srv.gitea.url, RAIBID_GITEA_TOKEN: "gt"} {
      use ../status.nu
      let t = (status)
      assert equal ($t | where state != ok | get component) [queue]
      assert ($t | where component == queue | get 0.detail | str contains "RAIBID_URL")
    }
  }
  rm -f $f
}

@test
def teardown_shows_what_goes_and_asks_first [] {
  let f = (fixture)
  with-clean-env {RAIBID_FAKE_SYSTEM: $f, RAIBID_KUBECONFIG: "/home/owner/.kube/raibid-ci.yaml", SOPS_AGE_KEY_FILE: null} {
    let dry = (do { ^$nu.current-exe --no-config-file (script teardown.nu) --dry-run --purge } | complete)
    assert equal $dry.exit_code 0 $dry.stderr
    for expected in ["$ sudo /usr/local/bin/k3s-uninstall.sh" "$ sudo install -m 0644 /dev/stdin /etc/hosts" "$ rm -f /home/owner/.kube/raibid-ci.yaml" "Kept: this repository, the age key (/home/owner/.config/sops/age/keys.txt)" "nothing was changed"] {
      assert ($dry.stdout | str contains $expected) $"missing: ($expected)\n($dry.stdout)"
    }
    let ask = (do { ^$nu.current-exe --no-config-file (script teardown.nu) } | complete)
    assert equal $ask.exit_code 1
    assert ($ask.stderr | str contains "needs_confirmation") $ask.stderr
    assert ($ask.stderr | str contains "--yes")
    let yes = (do { ^$nu.current-exe --no-config-file (script teardown.nu) --yes } | complete)
    assert ($yes.stderr | str contains "fake_system_readonly") "the fake system must refuse changes"
  }
  rm -f $f
}
