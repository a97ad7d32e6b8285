"""Every custom resource (and KEDA's operator, whose chart does not install its CRDs) is applied by a Flux
Kustomization whose own render or a dependsOn ancestor installs the CRD first (issue 21 §2). The bootstrap's stage
order is tested on the Nushell side (scripts/tests/bootstrap_test.nu, crds_precede_their_users_in_the_stage_order).

What provides CRDs: `flux install` (gotk-components.yaml, bootstrap stage flux) provides Flux's groups before any
Kustomization exists; an upstream GitRepository's Kustomization provides the CRDs of that tag (KEDA's: the
reference CRDs at the tag, shared/reference/crds-keda-v<tag>); any Kustomization provides the CRDs in its render."""

import copy

import pytest
import yaml

import gitops

FLUX_GROUPS = {"source.toolkit.fluxcd.io", "kustomize.toolkit.fluxcd.io", "helm.toolkit.fluxcd.io",
               "notification.toolkit.fluxcd.io"}
BUILTIN = {"", "apps", "batch", "policy", "networking.k8s.io", "rbac.authorization.k8s.io", "storage.k8s.io",
           "autoscaling", "coordination.k8s.io", "discovery.k8s.io", "scheduling.k8s.io", "node.k8s.io",
           "apiextensions.k8s.io", "admissionregistration.k8s.io", "kustomize.config.k8s.io"}
# Charts installed with their CRDs elsewhere: the operator needs them before it starts (kedacore/keda#824).
CHART_NEEDS = {"keda": "keda.sh"}


def _group(o: dict) -> str:
    return gitops.split_api_version(o.get("apiVersion", ""))[0]


def _crd_groups_at(url: str, tag: str) -> set[str]:
    if url.rstrip("/").endswith("kedacore/keda"):
        d = gitops.REFERENCE_DIR / f"crds-keda-{tag}"
        if not d.is_dir():
            d = gitops.Path(__file__).parent / "data" / f"crds-keda-{tag}"
        return {c["spec"]["group"] for f in d.glob("*.yaml") for c in yaml.safe_load_all(f.read_text()) if c}
    return set()


def layers():
    """Flux Kustomization name -> {deps, objs, provides} for the Spark."""
    cluster = gitops.build(gitops.CLUSTER_DIR)
    settings = gitops.cluster_settings()
    ks = [o for o in cluster if o.get("kind") == "Kustomization" and o["apiVersion"].startswith("kustomize.toolkit")]
    repos = {o["metadata"]["name"]: o for o in cluster if o.get("kind") == "GitRepository"}
    out = {}
    for k in ks:
        spec = k["spec"]
        src = (spec.get("sourceRef") or {}).get("name")
        if k["metadata"]["name"] == "flux-system":
            objs = cluster
        elif src == "flux-system":
            objs = [gitops.substitute(o, settings) for o in gitops.build(gitops.ROOT / spec["path"])]
        else:
            objs = []
        provides = {c["spec"]["group"] for c in objs if c.get("kind") == "CustomResourceDefinition"}
        if src != "flux-system" and src in repos:
            r = repos[src]["spec"]
            provides |= _crd_groups_at(r["url"], (r.get("ref") or {}).get("tag", ""))
        out[k["metadata"]["name"]] = {"deps": [d["name"] for d in spec.get("dependsOn") or []], "objs": objs,
                                      "provides": provides}
    return out


def crd_order_errors(ls: dict) -> list[str]:
    def ancestors(n, seen=None):
        seen = seen if seen is not None else set()
        for d in ls.get(n, {}).get("deps", []):
            if d not in seen:
                seen.add(d)
                ancestors(d, seen)
        return seen

    errs = []
    for name, layer in ls.items():
        available = set(FLUX_GROUPS) | layer["provides"]
        for a in ancestors(name):
            available |= ls.get(a, {}).get("provides", set())
        for o in layer["objs"]:
            needs = set()
            g = _group(o)
            if g not in BUILTIN:
                needs.add(g)
            if o.get("kind") == "HelmRelease" and (((o["spec"].get("values") or {}).get("crds") or {}).get("install") is False):
                chart = o["spec"]["chart"]["spec"]["chart"]
                if chart in CHART_NEEDS:
                    needs.add(CHART_NEEDS[chart])
            for n in sorted(needs - available):
                errs.append(f"{gitops.describe(o)} (Kustomization {name}) needs the {n} CRDs, which neither {name} "
                            f"nor a dependsOn ancestor installs")
    return errs


@pytest.fixture(scope="module")
def tree():
    return layers()


def test_crds_precede_their_users(tree):
    assert "keda.sh" in tree["keda-crds"]["provides"]
    errs = crd_order_errors(tree)
    assert not errs, "\n".join(errs)


def test_a_user_without_its_crds_upstream_fails(tree):
    """Seen failing: infra-controllers without its dependsOn keda-crds (KEDA's operator would start without its
    CRDs), and a TriggerAuthentication applied by a layer that does not descend from keda-crds."""
    t = copy.deepcopy(tree)
    t["infra-controllers"]["deps"] = []
    errs = crd_order_errors(t)
    assert any("HelmRelease/keda/keda (Kustomization infra-controllers) needs the keda.sh CRDs" in e for e in errs), errs
    t = copy.deepcopy(tree)
    t["loose"] = {"deps": [], "provides": set(),
                  "objs": [{"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
                            "metadata": {"name": "x", "namespace": "raibid-builds"}}]}
    assert any("TriggerAuthentication/raibid-builds/x (Kustomization loose) needs the keda.sh" in e
               for e in crd_order_errors(t))
