#!/usr/bin/env nu
# One table of the whole installation: nodes, Flux objects, the KEDA ScaledJob, queue figures and agents
# from the dispatcher, and the number of GitHub mirrors in Gitea. Each row is fetched on its own; one that
# cannot be read says so (state `unknown`) instead of hiding the rest.
#
#   nu scripts/status.nu | where state != ok
#
# Reads the cluster through kubectl (RAIBID_KUBECONFIG, ~/.kube/raibid-ci.yaml), the dispatcher through RAIBID_URL + RAIBID_API_TOKEN, Gitea
# through RAIBID_GITEA_URL + RAIBID_GITEA_TOKEN (bootstrap's summary prints the values for the Spark).

use lib/env.nu
use lib/cluster.nu [NAMESPACES]
use lib/system.nu
use lib/bootstrap.nu [ready-condition]
use lib/api.nu
use lib/gitea.nu

def row [component: string, name: string, state: string, detail: string]: nothing -> record {
  {component: $component, name: $name, state: $state, detail: $detail}
}

# Rows from one source; a failure becomes one `unknown` row naming what to check.
def guarded [component: string, rows: closure]: nothing -> list<record> {
  try { do $rows } catch {|e| [(row $component "-" unknown $"($e.msg)($e.details?.help? | default '' | if ($in | is-empty) { '' } else { $' — ($in)' })")] }
}

def kjson [args: list<string>]: nothing -> record {
  let r = (system run-cmd (["kubectl"] | append $args | append [-o json]))
  if $r.exit_code != 0 {
    error make --unspanned {msg: $"kubectl ($args | str join ' '): ($r.stderr | str trim | lines | first 1 | str join '')", help: $"is ($env.RAIBID_KUBECONFIG) the cluster's kubeconfig? \(bootstrap's k3s stage writes it; set RAIBID_KUBECONFIG otherwise\)"}
  }
  $r.stdout | from json
}

def ready-row [component: string, obj: record]: nothing -> record {
  let c = (ready-condition $obj)
  let name = if ($obj.metadata.namespace? | is-empty) { $obj.metadata.name } else { $"($obj.metadata.namespace)/($obj.metadata.name)" }
  let rev = ($obj.status?.lastAppliedRevision? | default ($obj.status?.artifact?.revision? | default ""))
  row $component $name (if $c.ok { "ok" } else { "not ready" }) ([$c.detail $rev] | where {|x| $x | is-not-empty } | str join " @ ")
}

# The status table.
@example "what is not fine" { nu scripts/status.nu | where state != ok }
export def main []: nothing -> table {
  $env.KUBECONFIG = $env.RAIBID_KUBECONFIG
  let nodes = (guarded node {
    (kjson [get nodes]).items | each {|n| ready-row node $n }
  })
  let flux = (guarded flux {
    let src = (kjson [get gitrepositories.source.toolkit.fluxcd.io -A]).items | each {|o| ready-row "flux source" $o }
    let ks = (kjson [get kustomizations.kustomize.toolkit.fluxcd.io -A]).items | each {|o| ready-row "flux kustomization" $o }
    let hr = (kjson [get helmreleases.helm.toolkit.fluxcd.io -A]).items | each {|o| ready-row "flux helmrelease" $o }
    $src | append $ks | append $hr
  })
  let keda = (guarded keda {
    (kjson [-n $NAMESPACES.builds get scaledjobs.keda.sh]).items | each {|sj|
      let c = (ready-condition $sj)
      let active = ($sj.status?.conditions? | default [] | where type == Active | get -o 0.status | default "Unknown")
      row "keda scaledjob" $"($sj.metadata.namespace)/($sj.metadata.name)" (if $c.ok { "ok" } else { "not ready" }) $"active: ($active), max ($sj.spec.maxReplicaCount? | default '?') jobs"
    }
  })
  let queue = (guarded queue {
    let q = (api call GET "/queue")
    let oldest = if $q.oldest_waiting_age_secs? == null { "none waiting" } else { $"oldest waiting ($q.oldest_waiting_age_secs | math round --precision 1)s" }
    let agents = (api call GET "/agents").agents
    [
      (row queue $q.stream ok $"length ($q.length), lag ($q.lag | default 'n/a'), pending ($q.pending), ($oldest)")
      (row agents $q.group ok $"($agents | length) agents, ($agents | where current_job != null | length) busy")
    ]
  })
  let mirrors = (guarded gitea {
    let r = (gitea call GET "/repos/search?mode=mirror&limit=1")
    let n = ($r.headers.x-total-count? | default ($r.body.data | length) | into int)
    [(row gitea mirrors ok $"($n) GitHub mirrors")]
  })
  $nodes | append $flux | append $keda | append $queue | append $mirrors
}
