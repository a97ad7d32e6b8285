"""Policy checks pass on what Flux applies to the Spark, and each one fails on its negative fixture.

A fixture (fixtures/policy/*.yaml) describes one defect as a change to the deployed objects:
  check:  the policy that must catch it          expect: a substring of the error it must report
  target: {kind, name[, namespace]} + patch: JSON-patch operations (add/replace/remove) on that object
  add:    objects appended                        remove: [{kind, name}] objects dropped
"""

import copy
from pathlib import Path

import pytest
import yaml

import gitops
import policies

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "policy").glob("*.yaml"))
CHECKS = dict(policies.REPO_CHECKS)


@pytest.mark.parametrize("name", list(CHECKS), ids=list(CHECKS))
def test_policy_passes_on_the_repository(name, deployed):
    errors = CHECKS[name](deployed)
    assert not errors, "\n".join(errors)


def _pointer(path: str) -> list:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")] if path != "/" else []


def _apply(obj: dict, ops: list[dict]) -> dict:
    for op in ops:
        parts = _pointer(op["path"])
        parent = obj
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if isinstance(parent, list):
            idx = len(parent) if last == "-" else int(last)
            if op["op"] == "add":
                parent.insert(idx, op["value"])
            elif op["op"] == "replace":
                parent[idx] = op["value"]
            elif op["op"] == "remove":
                del parent[idx]
        else:
            if op["op"] in ("add", "replace"):
                if op["op"] == "replace" and last not in parent:
                    raise KeyError(f"replace of missing {op['path']}")
                parent[last] = op["value"]
            elif op["op"] == "remove":
                del parent[last]
    return obj


def _matches(o: dict, sel: dict) -> bool:
    md = o.get("metadata") or {}
    return o.get("kind") == sel["kind"] and md.get("name") == sel["name"] and \
        ("namespace" not in sel or md.get("namespace") == sel["namespace"])


def mutate(objs: list[dict], fx: dict) -> list[dict]:
    out = copy.deepcopy(objs)
    if "target" in fx:
        hits = [o for o in out if _matches(o, fx["target"])]
        assert hits, f"fixture target {fx['target']} matches no deployed object"
        for o in hits:
            _apply(o, fx.get("patch") or [])
    for sel in fx.get("remove") or []:
        before = len(out)
        out = [o for o in out if not _matches(o, sel)]
        assert len(out) < before, f"fixture remove {sel} matches no deployed object"
    out += fx.get("add") or []
    return out


@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_policy_catches_fixture(fixture, deployed):
    fx = yaml.safe_load(fixture.read_text())
    assert fx["check"] in CHECKS, f"{fixture.name}: unknown check {fx['check']}"
    errors = CHECKS[fx["check"]](mutate(deployed, fx))
    assert errors, f"{fixture.name}: check {fx['check']} found nothing"
    assert any(fx["expect"] in e for e in errors), f"{fixture.name}: expected {fx['expect']!r} in {errors}"


def test_every_object_policy_has_a_negative_fixture():
    covered = {yaml.safe_load(p.read_text())["check"] for p in FIXTURES}
    repo_level = {"containerfiles", "repo-secrets", "secret-dirs", "sops-rules"}  # test_repo_policies.py
    missing = set(CHECKS) - covered - repo_level
    assert not missing, f"policies without a negative fixture: {sorted(missing)}"


def test_flux_install_output_is_exempt_but_only_it(deployed):
    """After bootstrap commits gotk-components.yaml the suite must still pass on Flux's own objects."""
    fx = yaml.safe_load((Path(__file__).parent / "fixtures" / "policy" / "flux-components-exempt.yaml").read_text())
    objs = mutate(deployed, fx)
    for name in ("workloads", "namespaces", "substitutions"):
        errs = CHECKS[name](objs)
        assert not [e for e in errs if "flux-system" in e or "kustomizations.kustomize" in e], errs
