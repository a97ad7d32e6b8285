"""The build quota adds up (issue 21 §2): the worst case of raibid-builds, derived from the rendered manifests (every
warm Deployment at its replicas plus its rolling-update surge, every ScaledJob at maxReplicaCount x parallelism, each
pod's requests and limits), fits the ResourceQuota; and with everything else the tree runs (other namespaces'
workloads, the HelmReleases' requested resources) plus what runs outside it (annotation raibid.dev/system-requests)
it fits the node allocatable the quota documents (annotation raibid.dev/node-allocatable)."""

import copy
import re

import pytest

from policies import pod_specs, containers, find

_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "m": 1e-3, "": 1}


def qty(q) -> float:
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|K|M|G|m)?", str(q).strip())
    if not m:
        raise ValueError(f"not a quantity: {q}")
    return float(m.group(1)) * _UNITS[m.group(2) or ""]


def pod_resources(pod: dict) -> dict[str, float]:
    out = {f"{p}.{r}": 0.0 for p in ("requests", "limits") for r in ("cpu", "memory")}
    for c in containers(pod, init=False):
        res = c.get("resources") or {}
        for p in ("requests", "limits"):
            for r in ("cpu", "memory"):
                out[f"{p}.{r}"] += qty((res.get(p) or {}).get(r, 0))
    return out


def _surge(d: dict) -> int:
    ru = ((d.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
    s = ru.get("maxSurge", "25%")
    reps = d["spec"].get("replicas", 1)
    if reps == 0:
        return 0
    if isinstance(s, str) and s.endswith("%"):
        return -(-reps * int(s[:-1]) // 100)
    return int(s)


def worst_case(objs: list[dict], namespace: str) -> tuple[dict[str, float], list[str]]:
    """Totals of the namespace at its maximum, and one line per pool saying how it was counted."""
    total = {"requests.cpu": 0.0, "requests.memory": 0.0, "limits.cpu": 0.0, "limits.memory": 0.0, "pods": 0.0}
    lines = []
    for owner, pod in pod_specs(objs):
        if owner["metadata"].get("namespace") != namespace:
            continue
        kind, spec = owner["kind"], owner.get("spec") or {}
        if kind == "ScaledJob":
            n = spec.get("maxReplicaCount", 100) * (spec.get("jobTargetRef") or {}).get("parallelism", 1)
        elif kind == "Deployment":
            n = spec.get("replicas", 1) + _surge(owner)
        elif kind == "StatefulSet":
            n = spec.get("replicas", 1)
        else:
            continue
        r = pod_resources(pod)
        for k in r:
            total[k] += n * r[k]
        total["pods"] += n
        lines.append(f"{kind}/{owner['metadata']['name']}: {n} pods x {r['requests.cpu']:g} CPU / {r['requests.memory'] / 2**30:g} GiB")
    return total, lines


def helm_requests(objs: list[dict]) -> dict[str, float]:
    """Requested resources of the charts' workloads, from their values (Gitea: resources; KEDA: resources.*)."""
    out = {"cpu": 0.0, "memory": 0.0}
    for hr in find(objs, "HelmRelease"):
        v = hr["spec"].get("values") or {}
        res = v.get("resources") or {}
        blocks = [res] if "requests" in res else [b for b in res.values() if isinstance(b, dict)]
        reps = v.get("replicaCount", 1)
        for b in blocks:
            req = b.get("requests") or {}
            out["cpu"] += reps * qty(req.get("cpu", 0))
            out["memory"] += reps * qty(req.get("memory", 0))
    return out


def _kv(s: str) -> dict[str, float]:
    return {k: qty(v) for k, v in (p.split("=", 1) for p in s.split(","))}


def quota_errors(objs: list[dict]) -> list[str]:
    errs = []
    quotas = find(objs, "ResourceQuota", "builds", "raibid-builds")
    if not quotas:
        return ["no ResourceQuota builds in raibid-builds"]
    q = quotas[0]
    hard = {k: qty(v) for k, v in q["spec"]["hard"].items() if k in ("requests.cpu", "requests.memory", "limits.cpu", "limits.memory", "pods")}
    total, lines = worst_case(objs, "raibid-builds")
    for k, v in hard.items():
        if total[k] > v + 1e-9:
            show = (lambda x: f"{x / 2**30:g}Gi") if "memory" in k else (lambda x: f"{x:g}")
            errs.append(f"raibid-builds at its maximum needs {k} {show(total[k])}, the quota allows {show(v)} "
                        f"({'; '.join(lines)})")
    ann = q["metadata"].get("annotations") or {}
    if "raibid.dev/node-allocatable" not in ann or "raibid.dev/system-requests" not in ann:
        return errs + ["ResourceQuota builds: annotations raibid.dev/node-allocatable and raibid.dev/system-requests missing"]
    alloc, system = _kv(ann["raibid.dev/node-allocatable"]), _kv(ann["raibid.dev/system-requests"])
    others = {"cpu": 0.0, "memory": 0.0}
    for ns in {o["metadata"].get("namespace") for o, _ in pod_specs(objs)} - {"raibid-builds", None}:
        t, _ = worst_case(objs, ns)
        others["cpu"] += t["requests.cpu"]
        others["memory"] += t["requests.memory"]
    helm = helm_requests(objs)
    for r in ("cpu", "memory"):
        need = total[f"requests.{r}"] + others[r] + helm[r] + system[r]
        if need > alloc[r] + 1e-9:
            f = (lambda x: f"{x / 2**30:.1f}Gi") if r == "memory" else (lambda x: f"{x:g}")
            errs.append(f"the node's {r} requests at the worst case are {f(need)} (builds {f(total['requests.' + r])}, "
                        f"other workloads {f(others[r])}, charts {f(helm[r])}, outside the tree {f(system[r])}), "
                        f"the documented allocatable is {f(alloc[r])}")
    return errs


def test_the_quota_adds_up(deployed):
    errs = quota_errors(deployed)
    assert not errs, "\n".join(errs)


def _set_pool(objs, kind, name, n=None, cpu=None, mem=None):
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            if n is not None:
                o["spec"]["maxReplicaCount" if kind == "ScaledJob" else "replicas"] = n
            pod = o["spec"]["jobTargetRef"]["template"]["spec"] if kind == "ScaledJob" else o["spec"]["template"]["spec"]
            req = pod["containers"][0]["resources"]["requests"]
            if cpu:
                req["cpu"] = cpu
            if mem:
                req["memory"] = mem


def test_the_sizing_before_issue_21_fails(deployed):
    """Seen failing: 2 warm + 6 burst Rust and 1 warm + 2 burst image agents at 2 CPU / 8 GiB each (22 CPU / 88 GiB
    before surge) against the old quota of 18 CPU / 80 GiB, and the node."""
    # That tree had no GPU pool (issue 20): leave its pods out, the figures are those of the time.
    objs = [o for o in copy.deepcopy(deployed)
            if (o.get("metadata") or {}).get("name") not in ("raibid-agent-gpu", "raibid-agent-gpu-warm")]
    _set_pool(objs, "ScaledJob", "raibid-agent", n=6, cpu="2", mem="8Gi")
    _set_pool(objs, "ScaledJob", "raibid-agent-image", n=2, cpu="2", mem="8Gi")
    # That tree had no per-node pools (ADR 0013).
    objs = [o for o in objs if not (o["kind"] == "ScaledJob" and "raibid.dev/node" in (o["metadata"].get("labels") or {}))]
    q = find(objs, "ResourceQuota", "builds")[0]
    q["spec"]["hard"].update({"requests.cpu": "18", "requests.memory": "80Gi", "pods": "12"})
    errs = quota_errors(objs)
    assert any("needs requests.cpu 26, the quota allows 18" in e for e in errs), errs
    assert any("needs requests.memory 104Gi, the quota allows 80Gi" in e for e in errs), errs
    assert any("the node's cpu requests at the worst case" in e for e in errs), errs


@pytest.mark.parametrize("change", ["one more burst pod", "a larger warm pod", "one more GPU pod", "a warm GPU agent"])
def test_any_pool_growing_alone_fails(deployed, change):
    objs = copy.deepcopy(deployed)
    if change == "one more burst pod":
        _set_pool(objs, "ScaledJob", "raibid-agent", n=5)
    elif change == "one more GPU pod":
        _set_pool(objs, "ScaledJob", "raibid-agent-gpu", n=3)
    elif change == "a warm GPU agent":
        _set_pool(objs, "Deployment", "raibid-agent-gpu-warm", n=1)
    else:
        _set_pool(objs, "Deployment", "raibid-agent-warm", cpu="3")
    assert quota_errors(objs)
