# Every environment variable the raibid-ci scripts read, with its default, in one place.
#
# `source: contract` names are defined in rust/raibid-core/src/contract.rs (a test parses that file and
# checks them); `source: script` names are used by the scripts only; `internal` ones are set by the
# scripts themselves. tests/contract_test.nu checks that every variable the scripts read is listed here. Secrets have no default: they come from
# the variable, the `<NAME>_FILE` it points to, or a file in RAIBID_CONFIG_DIR (see lib/secrets.nu).
#
# `use lib/env.nu` runs the `export-env` block below, which sets each default that is not already set.

use contract.nu [load-contract repo-root]

# The table of variables: name, source, default (null: none), description.
export def env-spec []: nothing -> table {
  let c = (load-contract)
  let port = $c.http.DEFAULT_PORT
  [
    [name source default description];
    [RAIBID_URL contract $"http://127.0.0.1:($port)" "dispatcher base URL for the CLI (local mode default)"]
    [RAIBID_API_TOKEN contract null "bearer token for /api/v1"]
    [RAIBID_API_TOKEN_FILE contract null "file holding the bearer token"]
    [RAIBID_GITEA_URL contract "http://gitea-http.gitea.svc:3000" "Gitea base URL (bootstrap prints the one reachable from the host)"]
    [RAIBID_GITEA_TOKEN contract null "Gitea API token (mirrors, hooks, mirror-sync)"]
    [RAIBID_GITEA_TOKEN_FILE contract null "file holding the Gitea token"]
    [RAIBID_CACHE_DIR contract "/tmp/raibid/cache" "the node's agent cache (git mirrors, cargo target slots) that `raibid.nu cache` lists and prunes"]
    [RAIBID_GITEA_WEBHOOK_SECRET contract null "secret set on Gitea push webhooks"]
    [RAIBID_GITEA_WEBHOOK_SECRET_FILE contract null "file holding the Gitea webhook secret"]
    [RAIBID_GITHUB_WEBHOOK_SECRET contract null "secret set on GitHub push webhooks"]
    [RAIBID_GITHUB_WEBHOOK_SECRET_FILE contract null "file holding the GitHub webhook secret"]
    [RAIBID_ROOT script (repo-root) "raibid-ci checkout the scripts run from (dev.sh exports it)"]
    [RAIBID_STATE_DIR script null "state directory of the local stack (dev.sh up/down/restart/env/status/top: env.json, pids, logs, Redis data); default .state in the checkout, so a test's stack never meets a developer's"]
    [RAIBID_CONFIG_DIR script ($nu.home-dir | path join .config raibid) "owner's local copies of generated secrets (mode 0600)"]
    [RAIBID_HOOK_URL script $"http://raibid-dispatcher.raibid-system.svc:($port)" "dispatcher base URL as Gitea reaches it (Gitea webhooks)"]
    [RAIBID_PUBLIC_URL script null "dispatcher base URL as GitHub reaches it (GitHub webhooks); defaults to RAIBID_URL"]
    [RAIBID_GITHUB_API script "https://api.github.com" "GitHub REST API base URL"]
    [RAIBID_GITHUB_RATE_WAIT_MAX script "900" "longest wait in seconds for a GitHub rate-limit reset before giving up"]
    [RAIBID_FAKE_SYSTEM script null "tests only: a NUON file of recorded command outputs that the bootstrap probes read instead of the host"]
    [GITHUB_TOKEN script null "GitHub token (private repositories, webhooks, higher rate limit)"]
    [GITHUB_TOKEN_FILE script null "file holding the GitHub token"]
    [RAIBID_NODE_IFACE script null "bootstrap: the network interface k3s uses on this node (node-ip, flannel-iface); default the default route's (a Spark: prefer the 10GbE or a ConnectX-7 port over Wi-Fi)"]
    [SOPS_AGE_KEY_FILE script null "the owner's age key (sops' own variable; default ~/.config/sops/age/keys.txt)"]
    [RAIBID_STAGE internal null "set by bootstrap while a stage runs (progress lines)"]
    [RAIBID_CLOCK_START internal null "set by log start-clock (elapsed time in progress lines)"]
    [RAIBID_ASKPASS_USER internal null "set only for git's GIT_ASKPASS helper while bootstrap pushes"]
    [RAIBID_ASKPASS_PASSWORD internal null "set only for git's GIT_ASKPASS helper while bootstrap pushes"]
    [RAIBID_KUBECONFIG script ($nu.home-dir | path join .kube raibid-ci.yaml) "kubeconfig of the raibid cluster (bootstrap copies /etc/rancher/k3s/k3s.yaml there); bootstrap, status and teardown use it, never a KUBECONFIG of another cluster"]
  ]
}

export-env {
  let defaults = (env-spec | where default != null
    | where {|v| ($env | get -o $v.name) == null }
    | reduce --fold {} {|v, acc| $acc | insert $v.name $v.default })
  load-env $defaults
}

# The dispatcher URL GitHub webhooks are sent to.
export def public-url []: nothing -> string {
  $env.RAIBID_PUBLIC_URL? | default $env.RAIBID_URL | str trim --right --char "/"
}
