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
use lib/bootstrap.nu [select-stages]
use lib/stages.nu *
use lib/system.nu
use lib/log.nu

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
