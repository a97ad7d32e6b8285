#!/usr/bin/env nu
# Remove raibid-ci from this host: uninstall k3s (with it the cluster, Gitea's repositories, mirrors and
# registry, Redis and every job record), the /etc/hosts line, the kubeconfig copy; with --purge also the
# build cache directory. Kept: this repository (its commits and encrypted secrets), the age key and the
# owner's secret copies in RAIBID_CONFIG_DIR, so `nu scripts/bootstrap.nu` can bring everything back.
#
# Asks for confirmation unless --yes; --dry-run prints the commands and changes nothing.

use lib/env.nu
use lib/errors.nu [fail]
use lib/bootstrap.nu [settings render-hosts show-argv ext-step nu-step]
use lib/system.nu
use lib/log.nu

const UNINSTALL = "/usr/local/bin/k3s-uninstall.sh"

def steps [s: record, facts: record, purge: bool]: nothing -> list<record> {
  let sudo = if $facts.uid == 0 { [] } else { [sudo] }
  let hosts = (system read /etc/hosts | default "")
  let without = ($hosts | lines | where {|l| not ($l | str ends-with "# raibid-ci") } | append "" | str join "\n")
  [
    (if (system exists $UNINSTALL) { ext-step [...$sudo $UNINSTALL] })
    (if $hosts != $without { ext-step [...$sudo install -m "0644" /dev/stdin /etc/hosts] --stdin $without --stdin-desc "(/etc/hosts without the '# raibid-ci' line)" })
    (if (system exists $env.RAIBID_KUBECONFIG) { ext-step [rm -f $env.RAIBID_KUBECONFIG] })
    (if $purge and (system exists $s.cache_path) { ext-step [...$sudo rm -rf $s.cache_path] })
  ] | compact
}

# Remove raibid-ci (k3s and everything in it) from this host.
@example "see what would be removed" { nu scripts/teardown.nu --dry-run }
@example "without the question" { nu scripts/teardown.nu --yes }
def main [
  --yes (-y)   # do not ask for confirmation
  --dry-run    # print the commands, change nothing
  --purge      # also delete the build cache directory (RAIBID_CACHE_HOST_PATH)
]: nothing -> nothing {
  log start-clock
  let s = (settings)
  let plan = (steps $s (system facts) $purge)
  if ($plan | is-empty) { log ok "nothing of raibid-ci is installed here"; return }
  print "This removes from this host:"
  for p in $plan { print $"  $ ($p.show)" }
  let key = ($env.SOPS_AGE_KEY_FILE? | default ((system facts).home | path join .config sops age keys.txt))
  print $"Kept: this repository, the age key \(($key)\), the secrets in ($env.RAIBID_CONFIG_DIR)."
  print "Gitea's repositories, mirrors and images and all job records are deleted with the cluster."
  if $dry_run { print "(--dry-run: nothing was changed)"; return }
  if not $yes {
    if not (is-terminal --stdin) {
      fail needs_confirmation "teardown needs a confirmation and stdin is not a terminal" --hint "re-run with --yes"
    }
    let host = (system facts).hostname
    let answer = (input $"Type this host's name \(($host)\) to confirm: ")
    if ($answer | str trim) != $host { fail not_confirmed "not confirmed; nothing was changed" }
  }
  system guard-real "tear down"
  for p in $plan {
    log step $p.show
    do $p.run
  }
  log ok $"raibid-ci removed in (log elapsed). Bring it back with: nu scripts/bootstrap.nu"
}
