# A node's burst pool in the GitOps tree (issue 21 §3, ADR 0013): `apps/dgx-spark/nodes/<node>/kustomization.yaml`
# (the per-node component apps/components/node-pool with the node's name) listed under `resources:` in
# `apps/dgx-spark/kustomization.yaml`. One definition: the checked-in `spark` and `spark-2` directories are what
# `node-pool-kustomization` renders (scripts/tests/bootstrap_test.nu proves it), and `bootstrap.nu nodes add|rm|list`
# and `join` / `remove-node` write and remove them with it.

use errors.nu [fail]
use contract.nu [load-contract]

const OVERLAY = "apps/dgx-spark"

# A Kubernetes node name that also makes valid object names with the pool's suffix (`raibid-agent-<node>`, and the Jobs KEDA names after it,
# ≤ 63 characters): a DNS-1123 label of at most 40 characters.
export def check-node-name [node: string]: nothing -> nothing {
  if not ($node =~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') or ($node | str length) > 40 {
    fail bad_argument $"node name `($node)` is not a DNS-1123 label of at most 40 characters" --hint "use the node's name as `kubectl get nodes` shows it (lowercase letters, digits, '-')"
  }
}

# The pool's kustomization for one node, byte for byte what is checked in.
export def node-pool-kustomization [node: string]: nothing -> string {
  check-node-name $node
  [
    $"# The per-node burst pool of node ($node) \(apps/components/node-pool, ADR 0013\), listed in"
    $"# apps/dgx-spark/kustomization.yaml: it reads ((load-contract).keys.NODE_JOBS_STREAM_PREFIX)($node), where the dispatcher publishes a repository's"
    "# job when this node holds its warm cache and has a free agent; the overlay gives it its sizing (labelSelector"
    "# raibid.dev/node)."
    "apiVersion: kustomize.config.k8s.io/v1beta1"
    "kind: Kustomization"
    $"nameSuffix: -($node)"
    "configMapGenerator:"
    "  - name: raibid-node"
    "    literals:"
    $"      - NODE=($node)"
    "    options:"
    "      disableNameSuffixHash: true"
    "      # Read by the component's replacements only, never applied."
    "      annotations:"
    "        config.kubernetes.io/local-config: \"true\""
    "components:"
    "  - ../../../components/node-pool"
    ""
  ] | str join "\n"
}

def kustomization-file [root: path]: nothing -> path { $root | path join $OVERLAY kustomization.yaml }

# The nodes whose pools the overlay lists, in order.
export def node-pools [root: path]: nothing -> list<string> {
  open --raw (kustomization-file $root) | lines
  | parse --regex '^  - nodes/(?<node>[a-z0-9-]+)\s*$' | get node
}

# Write the node's directory and list it (idempotent; comments and order of the overlay kept: the new line goes
# after the last `- nodes/…` entry). Returns what changed, for the caller to print.
export def add-node-pool [root: path, node: string]: nothing -> list<string> {
  let text = (node-pool-kustomization $node)
  let dir = ($root | path join $OVERLAY nodes $node)
  let file = ($dir | path join kustomization.yaml)
  mut changed = []
  if not ($file | path exists) or (open --raw $file) != $text {
    mkdir $dir
    $text | save -f $file
    $changed = ($changed | append $"wrote ($OVERLAY)/nodes/($node)/kustomization.yaml")
  }
  if $node not-in (node-pools $root) {
    let k = (kustomization-file $root)
    let ls = (open --raw $k | lines)
    let idx = ($ls | enumerate | where {|l| $l.item =~ '^  - nodes/' } | get index | last)
    if $idx == null {
      fail bad_state $"($OVERLAY)/kustomization.yaml lists no `- nodes/<node>` resource" --hint "restore the `- nodes/spark` line from git"
    }
    let out = ($ls | take ($idx + 1)) | append $"  - nodes/($node)" | append ($ls | skip ($idx + 1))
    ($out | str join "\n") + "\n" | save -f $k
    $changed = ($changed | append $"listed nodes/($node) in ($OVERLAY)/kustomization.yaml")
  }
  $changed
}

# Remove the node's directory and its line (idempotent). The first node's pool is never removed this way.
export def remove-node-pool [root: path, node: string]: nothing -> list<string> {
  check-node-name $node
  let pools = (node-pools $root)
  if ($pools | length) == 1 and ($pools | first) == $node {
    fail bad_argument $"($node) holds the only node pool" --hint "the cluster keeps at least one node"
  }
  mut changed = []
  if $node in $pools {
    let k = (kustomization-file $root)
    let ls = (open --raw $k | lines | where {|l| not ($l =~ $'^  - nodes/($node)\s*$') })
    ($ls | str join "\n") + "\n" | save -f $k
    $changed = ($changed | append $"unlisted nodes/($node) in ($OVERLAY)/kustomization.yaml")
  }
  let dir = ($root | path join $OVERLAY nodes $node)
  if ($dir | path exists) {
    rm -r $dir
    $changed = ($changed | append $"removed ($OVERLAY)/nodes/($node)/")
  }
  $changed
}
