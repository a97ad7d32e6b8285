"""N nodes render from one per-node component (issue 21 §3, ADR 0013): every apps/dgx-spark/nodes/<node> builds to
exactly the base Rust ScaledJob with only the node's name, stream, labels and node affinity changed. (Strict schema
validation of these directories is test_build_and_schema's, as for every kustomization.)"""

import copy

import pytest

import gitops

NODES_DIR = gitops.ROOT / "apps" / "dgx-spark" / "nodes"
NODES = sorted(p for p in NODES_DIR.iterdir() if (p / "kustomization.yaml").exists())
BASE = gitops.ROOT / "apps" / "base" / "raibid"


def _base_scaledjob() -> dict:
    return next(o for o in gitops.build(BASE) if o["kind"] == "ScaledJob" and o["metadata"]["name"] == "raibid-agent")


def node_pool_errors(node: str, objs: list[dict]) -> list[str]:
    errs = []
    sjs = [o for o in objs if o.get("kind") == "ScaledJob"]
    if len(objs) != 1 or len(sjs) != 1:
        return [f"{node}: renders {[gitops.describe(o) for o in objs]}, want exactly one ScaledJob"]
    sj = copy.deepcopy(sjs[0])
    if sj["metadata"]["name"] != f"raibid-agent-{node}":
        errs.append(f"{node}: ScaledJob named {sj['metadata']['name']}")
    stream = sj["spec"]["triggers"][0]["metadata"]["stream"]
    if stream != f"raibid:jobs:node:{node}":
        errs.append(f"{node}: reads stream {stream}, want raibid:jobs:node:{node}")
    pod = sj["spec"]["jobTargetRef"]["template"]
    terms = pod["spec"].get("affinity", {}).get("nodeAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
    want = [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]
    if terms != want:
        errs.append(f"{node}: pods not pinned to node {node}: {terms}")
    for labels in (sj["metadata"]["labels"], pod["metadata"]["labels"]):
        if labels.get("raibid.dev/node") != node:
            errs.append(f"{node}: label raibid.dev/node is {labels.get('raibid.dev/node')!r}")
    # Everything else is the base's: strip what the component changes and compare.
    base = _base_scaledjob()
    sj["metadata"]["name"] = base["metadata"]["name"]
    sj["metadata"]["labels"].pop("raibid.dev/node", None)
    sj["metadata"]["labels"]["app.kubernetes.io/component"] = base["metadata"]["labels"]["app.kubernetes.io/component"]
    sj["spec"]["triggers"][0]["metadata"]["stream"] = base["spec"]["triggers"][0]["metadata"]["stream"]
    pod["metadata"]["labels"].pop("raibid.dev/node", None)
    pod["spec"].pop("affinity", None)
    if sj != base:
        errs.append(f"{node}: differs from the base ScaledJob beyond name, stream, labels and affinity")
    return errs


def test_there_are_two_nodes_to_show_it():
    assert len(NODES) >= 2, NODES


@pytest.mark.parametrize("path", NODES, ids=[p.name for p in NODES])
def test_node_pool_renders_from_the_component(path):
    errs = node_pool_errors(path.name, gitops.build(path))
    assert not errs, "\n".join(errs)


def test_nodes_get_distinct_streams_and_names():
    rendered = [gitops.build(p)[0] for p in NODES]
    assert len({o["metadata"]["name"] for o in rendered}) == len(NODES)
    assert len({o["spec"]["triggers"][0]["metadata"]["stream"] for o in rendered}) == len(NODES)


def test_a_node_without_its_name_fails(tmp_path):
    """Seen failing: a node kustomization that forgot its raibid-node ConfigMap keeps the placeholder NODE."""
    objs = copy.deepcopy(gitops.build(NODES[0]))
    objs[0]["spec"]["triggers"][0]["metadata"]["stream"] = "raibid:jobs:node:NODE"
    errs = node_pool_errors(NODES[0].name, objs)
    assert any("reads stream raibid:jobs:node:NODE" in e for e in errs), errs
    objs = copy.deepcopy(gitops.build(NODES[0]))
    objs[0]["spec"]["maxReplicaCount"] = 99
    assert any("differs from the base" in e for e in node_pool_errors(NODES[0].name, objs))
