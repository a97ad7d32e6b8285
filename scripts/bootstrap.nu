#!/usr/bin/env nu
# Bootstrap raibid-ci on a DGX Spark (DGX OS 7 = Ubuntu 24.04, arm64, Docker and the NVIDIA toolkit preinstalled): from a fresh host to a reconciled cluster.
#
# Ordered stages (`--list`): preflight → k3s → node → flux → age-key → secrets → gitea → tokens → ops-repo →
# images → flux-sync → reconcile. Each stage first checks whether its work is done and skips it if so, so
# re-running is safe; `--dry-run` shows the plan (run or skip, why, the exact commands) and changes nothing.
# Why Gitea comes up before Flux syncs from it: docs/adr/0003-flux-syncs-from-gitea-it-manages.md.
# Host changes use sudo unless run as root; generated secrets go to RAIBID_CONFIG_DIR (~/.config/raibid).

use lib/env.nu
use lib/errors.nu [fail]
use lib/bootstrap.nu [select-stages nu-step ext-step]
use lib/stages.nu *
use lib/system.nu
use lib/log.nu
use lib/contract.nu [repo-root]
use lib/node_pools.nu [add-node-pool remove-node-pool node-pools check-node-name]

# Print a plan as text: one block per stage, the commands indented.
def print-plan [plan: table]: nothing -> nothing {
  let n = ($plan | length)
  for row in ($plan | enumerate) {
    let p = $row.item
    let mark = match $p.action { "run" => "RUN ", "fail" => "FAIL", _ => "SKIP" }
    print $"[($row.index + 1)/($n)] ($p.stage | fill -w 10) ($mark)  ($p.reason)"
    for c in $p.commands { print $"      $ ($c)" }
  }
  let runs = ($plan | where action == run | length)
  print $"\n($runs) of ($n) stages would run, ($n - $runs) would be skipped. Nothing was changed \(--dry-run\)."
}

def summary [ctx: record]: nothing -> record {
  let s = $ctx.s
  let cfg = $ctx.config_dir
  {
    gitea: $"($s.gitea_url)  \(admin ($GITEA_ADMIN), password in ($cfg)/gitea-admin-password\)"
    dispatcher: $"($s.dispatcher_url)  \(API token in ($cfg)/api-token\)"
    ops_repository: $"($s.gitea_url)/($s.ops.owner)/($s.ops.name).git  \(Flux syncs from it: push changes there\)"
    age_key: $"($ctx.keyfile)  \(BACK IT UP: the only key that decrypts the repository's secrets\)"
    kubeconfig: $ctx.kubeconfig
    next: [
      $"$env.RAIBID_URL = '($s.dispatcher_url)'; $env.RAIBID_GITEA_URL = '($s.gitea_url)'"
      "nu scripts/status.nu"
      "nu scripts/mirror.nu org <your GitHub user or org> --dry-run"
      "nu scripts/raibid.nu jobs"
    ]
  }
}

# Bring up (or check) raibid-ci on this host.
@example "see what would happen" { nu scripts/bootstrap.nu --dry-run }
@example "everything" { nu scripts/bootstrap.nu }
@example "re-run one stage" { nu scripts/bootstrap.nu --only gitea }
@example "continue after fixing a failure" { nu scripts/bootstrap.nu --from tokens }
def main [
  --dry-run        # print the plan (each stage: run or skip, why, the exact commands) and change nothing
  --only: string   # run only this stage
  --from: string   # start at this stage and run the rest
  --force          # with --only: redo the stage even if done (a new age key / new secrets; old key kept as .bak)
  --rotate         # with --only tokens: replace every Gitea token (without it a re-run creates only missing ones)
  --list           # list the stages and exit
]: nothing -> any {
  log start-clock
  let names = (all-stages | get name)
  if $list { return (all-stages | select name title) }
  let selected = (select-stages $names --only $only --from $from)
  if $force and $only == null {
    fail bad_flags "--force needs --only STAGE (it regenerates keys and secrets of that stage)" --hint "e.g. nu scripts/bootstrap.nu --only secrets --force"
  }
  # kubectl and flux talk to this cluster only, whatever KUBECONFIG the shell has.
  $env.KUBECONFIG = $env.RAIBID_KUBECONFIG
  if $rotate and $only != "tokens" {
    fail bad_flags "--rotate needs --only tokens (it replaces every Gitea token and revokes the old ones)" --hint "nu scripts/bootstrap.nu --only tokens --force --rotate"
  }
  let ctx = (context --force=$force --rotate=$rotate)
  if $dry_run {
    print-plan (plan $ctx $selected)
    print "\nAfterwards:"
    print (summary $ctx | table --expand)
    return
  }
  system guard-real "bootstrap"
  let total = ($selected | length)
  for st in (all-stages | where name in $selected | enumerate) {
    let stage = $st.item
    with-env {RAIBID_STAGE: $"($st.index + 1)/($total) ($stage.name)"} {
      let p = (do $stage.probe $ctx)
      if $p.done and not $force {
        log ok $"skip: ($p.reason)"
      } else {
        log step $"run: ($p.reason)"
        run-steps $ctx (do $stage.steps $ctx)
        log ok "done"
      }
    }
  }
  log ok $"bootstrap finished in (log elapsed)"
  summary $ctx
}

# Join this host to the cluster as a k3s agent node: a second (third, …) Spark. Runs on the NEW host, from a
# clone of this repository; prepares it like node 1 (profiles, caches, registries, /etc/hosts, ufw) and starts
# k3s as an agent. Then, on node 1: `kubectl get nodes` (docs/operations.md, "Add a Spark").
@example "plan it" { nu scripts/bootstrap.nu join --server https://192.168.1.20:6443 --token-file ./agent-token --registries ./registries.yaml --dry-run }
@example "join" { nu scripts/bootstrap.nu join --server https://192.168.1.20:6443 --token-file ./agent-token --registries ./registries.yaml }
def "main join" [
  --server: string       # the first Spark's API server, https://<its node-ip>:6443
  --token-file: path     # the cluster's AGENT token (node 1: /var/lib/rancher/k3s/server/agent-token); the server token is refused
  --registries: path     # node 1's /etc/rancher/k3s/registries.yaml (Gitea pull credentials), copied here
  --dry-run              # print the plan and change nothing
]: nothing -> any {
  log start-clock
  if $server == null or $token_file == null or $registries == null {
    fail bad_flags "join needs --server, --token-file and --registries" --hint "nu scripts/bootstrap.nu join --server https://<node 1>:6443 --token-file ./agent-token --registries ./registries.yaml"
  }
  let join = (join-spec $server $token_file $registries)
  $env.KUBECONFIG = $env.RAIBID_KUBECONFIG
  let ctx = (context | update join $join)
  let selected = (join-stages)
  if $dry_run {
    print-plan (plan $ctx $selected)
    check-node-name $ctx.facts.hostname
    print $"\nAfterwards, on the first Spark: kubectl get node ($ctx.facts.hostname) \(Ready\)"
    print $"And in this clone: apps/dgx-spark/nodes/($ctx.facts.hostname)/ written and listed \(its burst pool\); commit and push it."
    return
  }
  system guard-real "join"
  for st in (all-stages | where name in $selected | enumerate) {
    with-env {RAIBID_STAGE: $"($st.index + 1)/($selected | length) ($st.item.name)"} {
      let p = (do $st.item.probe $ctx)
      if $p.done { log ok $"skip: ($p.reason)" } else {
        log step $"run: ($p.reason)"
        run-steps $ctx (do $st.item.steps $ctx)
        log ok "done"
      }
    }
  }
  log ok $"($ctx.facts.hostname) joined in (log elapsed); on the first Spark: kubectl get node ($ctx.facts.hostname)"
  pool-changed (add-node-pool (repo-root) $ctx.facts.hostname) $ctx.facts.hostname "add"
}

# Say what a node-pool change wrote in this clone and what the user still does: commit, push, size.
def pool-changed [changed: list<string>, node: string, what: string] {
  if ($changed | is-empty) { log ok $"the GitOps tree already has ($node)'s pool as it should"; return }
  for c in $changed { log ok $c }
  let verb = if $what == "add" { "raise" } else { "lower" }
  log info $"commit and push to the ops repository \(git add apps/dgx-spark && git commit -m 'node ($node)' && git push\); ($verb) the quota and pool sizes with it: docs/operations.md"
}

# The per-node burst pools in the GitOps tree (apps/dgx-spark/nodes/<node>/, ADR 0013): which nodes have one.
@example "list" { nu scripts/bootstrap.nu nodes }
def "main nodes" []: nothing -> list<string> { node-pools (repo-root) }

# Give a node its burst pool in this clone's GitOps tree (what `join` does at its end): writes
# apps/dgx-spark/nodes/<node>/ and lists it in apps/dgx-spark/kustomization.yaml. Idempotent. Commit and push after.
@example "add" { nu scripts/bootstrap.nu nodes add spark-3 }
def "main nodes add" [node: string]: nothing -> nothing {
  pool-changed (add-node-pool (repo-root) $node) $node "add"
}

# Take a node's burst pool out of this clone's GitOps tree (what `remove-node --force` does at its end).
@example "remove" { nu scripts/bootstrap.nu nodes rm spark-3 }
def "main nodes rm" [node: string]: nothing -> nothing {
  pool-changed (remove-node-pool (repo-root) $node) $node "rm"
}

# Remove a Spark from the cluster: drain it (running builds finish or are released within their grace period),
# then delete the Node. Run on the first Spark. On the removed host afterwards: `sudo k3s-agent-uninstall.sh`
# (and `nu scripts/teardown.nu --purge` removes its caches). Destructive: needs --force.
@example "see what it would do" { nu scripts/bootstrap.nu remove-node spark-2 --dry-run }
@example "remove" { nu scripts/bootstrap.nu remove-node spark-2 --force }
def "main remove-node" [
  node: string         # the node's name (kubectl get nodes)
  --force              # really drain and delete it
  --dry-run            # print the commands and change nothing
  --timeout: duration = 70min   # drain deadline: the agents' grace period (3600 s warm, 630 s burst) plus margin
]: nothing -> nothing {
  $env.KUBECONFIG = $env.RAIBID_KUBECONFIG
  let steps = (remove-node-steps $node $timeout)
  if $dry_run or not $force {
    for s in $steps { print $"  $ ($s.show)" }
    print $"  and in this clone: apps/dgx-spark/nodes/($node)/ removed and unlisted \(commit and push it\)"
    if not $dry_run { fail needs_force $"removing node ($node) drains and deletes it" --hint $"re-run with --force: nu scripts/bootstrap.nu remove-node ($node) --force" }
    return
  }
  system guard-real "remove a node"
  for s in $steps { log step $s.show; do $s.run }
  log ok $"($node) removed; on it: sudo /usr/local/bin/k3s-agent-uninstall.sh"
  pool-changed (remove-node-pool (repo-root) $node) $node "rm"
}
