"""Offline proof of the GitOps tree: build every kustomization, validate every object strictly, check policies.

Library for validate.py (the command) and the pytest suite. Nothing here needs a cluster: kustomizations are
built with `kubectl kustomize` and the flags kustomize-controller uses, built-in kinds are validated with
kubernetes-validate (strict) at the Kubernetes version the pinned k3s ships, Flux and KEDA objects against the
CRD schemas in ../shared/reference/crds with unknown fields rejected wherever the schema does not preserve them.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The reference CRDs live beside the repository (shared/reference) in the workplace layout; a clone elsewhere
# points RAIBID_REFERENCE_DIR at them.
REFERENCE_DIR = Path(os.environ.get("RAIBID_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))
CRD_DIR = REFERENCE_DIR / "crds"
# KEDA's CRDs at the pinned chart version (issue 21): shared/reference/crds-keda-v<version> (kedacore/keda
# config/crd/bases at that tag), or tests/gitops/data/crds-keda-v<version> for a version the reference lacks.
KEDA_CHART = ROOT / "infrastructure" / "controllers" / "keda.yaml"
CONTRACT = ROOT / "rust" / "raibid-core" / "src" / "contract.rs"
PINS = ROOT / "scripts" / "pins.env"
CLUSTER_DIR = ROOT / "clusters" / "dgx-spark"
# kustomize-controller builds with no load restrictions (it may reference files outside a directory).
KUSTOMIZE_FLAGS = ["--load-restrictor=LoadRestrictionsNone"]
SKIP_DIRS = {".git", ".tools", ".state", "target", "node_modules", "fixtures", "__pycache__"}


class ToolMissing(RuntimeError):
    """A tool the proof needs is not installed: the message says how to get it."""


# ---------------------------------------------------------------------------------------------------------
# Inputs: pins, the Rust contract, cluster settings
# ---------------------------------------------------------------------------------------------------------

PIN_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=([^\s#]+)\s*$")


def read_pins(path: Path = PINS) -> dict[str, str]:
    """scripts/pins.env as the POSIX shell (and nix/pins.nix) read it: KEY=value lines."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = PIN_LINE.match(line)
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


CONST_LINE = re.compile(r'^\s*pub const ([A-Z][A-Z0-9_]*): &str = "([^"]*)";')
MOD_LINE = re.compile(r"^\s*pub mod ([a-z_]+)\s*\{")


def read_contract(path: Path = CONTRACT) -> dict[str, dict[str, str]]:
    """The `pub const NAME: &str = "value";` lines of contract.rs, by module: {"keys": {...}, "env": {...}, ...}."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the manifests are checked against the Rust contract")
    out: dict[str, dict[str, str]] = {}
    module = ""
    for line in path.read_text().splitlines():
        m = MOD_LINE.match(line)
        if m:
            module = m.group(1)
            continue
        c = CONST_LINE.match(line)
        if c:
            out.setdefault(module, {})[c.group(1)] = c.group(2)
    for mod, names in (("keys", ["JOBS_STREAM", "AGENTS_GROUP"]), ("env", ["REDIS_URL", "AGENT_NAME"]),
                       ("http", ["HEALTHZ_PATH", "READYZ_PATH", "METRICS_PATH", "DEFAULT_PORT"])):
        for n in names:
            if n not in out.get(mod, {}):
                raise ValueError(f"{path}: no `pub const {n}` in `pub mod {mod}`")
    return out


def kubernetes_version() -> str:
    pins = read_pins()
    if "KUBERNETES_VERSION" not in pins:
        raise ValueError(f"{PINS}: KUBERNETES_VERSION is not pinned")
    return pins["KUBERNETES_VERSION"]


def cluster_settings() -> dict[str, str]:
    """The variables Flux substitutes (postBuild.substituteFrom ConfigMap cluster-settings)."""
    for doc in yaml.safe_load_all((CLUSTER_DIR / "cluster-settings.yaml").read_text()):
        if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "cluster-settings":
            return {k: str(v) for k, v in (doc.get("data") or {}).items()}
    raise ValueError("clusters/dgx-spark/cluster-settings.yaml: no ConfigMap cluster-settings")


# ---------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------


def kubectl() -> str:
    path = shutil.which("kubectl")
    if not path:
        raise ToolMissing("kubectl is not installed: it builds the kustomizations (`kubectl kustomize`); "
                          "install kubectl (Debian: apt-get install kubectl, or the flake's dev shell)")
    return path


def find_kustomizations(root: Path = ROOT) -> list[Path]:
    """Every directory holding a kustomization.yaml, outside tool and fixture directories."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".venv"))
        names = [f for f in ("kustomization.yaml", "kustomization.yml", "Kustomization") if f in filenames]
        # A kustomize Component cannot be built alone: it is built (and validated) by the kustomizations using it.
        if names and "kind: Component" not in (Path(dirpath) / names[0]).read_text():
            found.append(Path(dirpath))
    return found


@functools.lru_cache(maxsize=None)
def _build_cached(path: str) -> tuple[str, str, int]:
    proc = subprocess.run([kubectl(), "kustomize", *KUSTOMIZE_FLAGS, path], capture_output=True, text=True)
    return proc.stdout, proc.stderr, proc.returncode


def build(path: Path) -> list[dict]:
    """`kubectl kustomize` one directory; raises BuildError with kustomize's message."""
    out, err, rc = _build_cached(str(path))
    if rc != 0:
        raise BuildError(f"{rel(path)}: kubectl kustomize failed: {err.strip()}")
    return [d for d in yaml.safe_load_all(out) if d]


class BuildError(RuntimeError):
    pass


def rel(path: Path | str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?=[^}]*)?\}")


def substitute(obj: Any, settings: dict[str, str]) -> Any:
    """What Flux's postBuild does with ${VAR}: replace it in every string (unknown names are left for the policy
    check `check_substitutions` to report)."""
    if isinstance(obj, dict):
        return {k: substitute(v, settings) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, settings) for v in obj]
    if isinstance(obj, str):
        return VAR.sub(lambda m: settings.get(m.group(1), m.group(0)), obj)
    return obj


# ---------------------------------------------------------------------------------------------------------
# Schema validation
# ---------------------------------------------------------------------------------------------------------


def _kv():
    try:
        import kubernetes_validate  # noqa: F401
        from kubernetes_validate import utils
    except ImportError as e:  # pragma: no cover - environment problem
        raise ToolMissing("kubernetes-validate is not installed: pip install -r tests/gitops/requirements.txt") from e
    # The package re-reads its (large) schema files on every call; cache them.
    if not getattr(utils.schema_contents, "cache_info", None):
        utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)
    return utils


def _strict(schema: Any) -> Any:
    """Reject unknown fields wherever the CRD schema lists properties and does not preserve unknown fields."""
    if isinstance(schema, dict):
        s = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in s and "additionalProperties" not in s
                and not s.get("x-kubernetes-preserve-unknown-fields")):
            s["additionalProperties"] = False
        if s.get("x-kubernetes-int-or-string"):
            s.pop("type", None)
            s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if s.get("nullable") and "type" in s and isinstance(s["type"], str):
            s["type"] = [s["type"], "null"]
        return s
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


OBJECT_META_KEYS = {"name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences"}


@functools.lru_cache(maxsize=1)
def crd_schemas() -> dict[tuple[str, str, str], tuple[dict, str]]:
    """(group, version, kind) -> (strict JSON schema, scope) from every CRD in the reference directory."""
    if not CRD_DIR.is_dir():
        raise ToolMissing(f"{CRD_DIR} is missing: the Flux and KEDA CRDs to validate against (set RAIBID_REFERENCE_DIR)")
    keda = keda_crd_dir()
    files = [f for f in sorted(CRD_DIR.glob("*.yaml")) if not f.name.startswith("keda.sh_")] + sorted(keda.glob("keda.sh_*.yaml"))
    out = {}
    for f in files:
        for crd in yaml.safe_load_all(f.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for v in spec["versions"]:
                if not v.get("served", True):
                    continue
                schema = _strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
                # metadata is only `type: object` in CRDs: hold it to ObjectMeta's usual keys.
                props = schema.setdefault("properties", {})
                props["metadata"] = {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {k: {} for k in OBJECT_META_KEYS},
                }
                props["metadata"]["properties"]["labels"] = {"type": "object", "additionalProperties": {"type": "string"}}
                props["metadata"]["properties"]["annotations"] = {"type": "object", "additionalProperties": {"type": "string"}}
                schema.setdefault("required", [])
                for r in ("apiVersion", "kind", "metadata"):
                    if r not in schema["required"]:
                        schema["required"].append(r)
                out[(spec["group"], v["name"], spec["names"]["kind"])] = (schema, spec["scope"])
    return out


def keda_version() -> str:
    for doc in yaml.safe_load_all(KEDA_CHART.read_text()):
        if doc and doc.get("kind") == "HelmRelease":
            return str(doc["spec"]["chart"]["spec"]["version"])
    raise ValueError(f"{KEDA_CHART}: no HelmRelease")


def keda_crd_dir() -> Path:
    """The KEDA CRDs of the pinned chart version (the CRDs move with the chart: policy runtime-settings)."""
    v = keda_version()
    for d in (REFERENCE_DIR / f"crds-keda-v{v}", Path(__file__).parent / "data" / f"crds-keda-v{v}"):
        if d.is_dir():
            return d
    raise ToolMissing(f"no KEDA CRDs for v{v}: copy config/crd/bases of kedacore/keda at tag v{v} into "
                      f"tests/gitops/data/crds-keda-v{v} (cite the commit in a README there)")


def split_api_version(api_version: str) -> tuple[str, str]:
    if "/" in api_version:
        g, v = api_version.split("/", 1)
        return g, v
    return "", api_version


def describe(obj: dict) -> str:
    md = obj.get("metadata") or {}
    ns = md.get("namespace")
    return f"{obj.get('kind')}/{(ns + '/') if ns else ''}{md.get('name')}"


def _fmt_error(e: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in e.absolute_path) or "(root)"
    return f"{path}: {e.message}"


def validate_object(obj: dict, k8s_version: str | None = None) -> list[str]:
    """Strict schema validation of one object; returns error messages (empty when valid)."""
    k8s_version = k8s_version or kubernetes_version()
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        return [f"not a Kubernetes object: {str(obj)[:80]}"]
    group, version = split_api_version(obj["apiVersion"])
    crds = crd_schemas()
    key = (group, version, obj["kind"])
    errors: list[str] = []
    if key in crds:
        schema, scope = crds[key]
        validator = jsonschema.Draft7Validator(schema)
        errors += [f"{describe(obj)}: {_fmt_error(e)}" for e in
                   sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))]
        if scope == "Namespaced" and not (obj.get("metadata") or {}).get("namespace"):
            errors.append(f"{describe(obj)}: namespaced kind without metadata.namespace")
        # The pod template of a ScaledJob is a batch/v1 JobSpec: validate it as one (KEDA's CRD may not go deep).
        if obj["kind"] == "ScaledJob" and isinstance((obj.get("spec") or {}).get("jobTargetRef"), dict):
            job = {"apiVersion": "batch/v1", "kind": "Job",
                   "metadata": {"name": obj["metadata"].get("name", "x"), "namespace": obj["metadata"].get("namespace")},
                   "spec": obj["spec"]["jobTargetRef"]}
            errors += [e.replace("Job/", "ScaledJob(jobTargetRef as Job)/", 1) for e in _validate_builtin(job, k8s_version)]
        return errors
    if group.endswith("fluxcd.io") or group == "keda.sh":
        known = sorted({f"{g}/{v} {k}" for (g, v, k) in crds if g == group})
        return [f"{describe(obj)}: {obj['apiVersion']} {obj['kind']} is not served by the reference CRDs "
                f"(served: {', '.join(known) or 'none'})"]
    return _validate_builtin(obj, k8s_version)


def _validate_builtin(obj: dict, k8s_version: str) -> list[str]:
    utils = _kv()
    try:
        utils.validate(obj, k8s_version, strict=True)
    except utils.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(root)"
        return [f"{describe(obj)}: {path}: {e.message}"]
    except utils.SchemaNotFoundError:
        return [f"{describe(obj)}: no schema for {obj['apiVersion']} {obj['kind']} in Kubernetes {k8s_version} "
                f"(unknown kind, or an API version that version does not serve)"]
    except utils.VersionNotSupportedError:
        return [f"kubernetes-validate does not know Kubernetes {k8s_version}: upgrade it in tests/gitops/requirements.txt"]
    return []


# ---------------------------------------------------------------------------------------------------------
# The whole repository
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Report:
    built: dict[str, list[dict]] = field(default_factory=dict)  # kustomization dir -> rendered objects
    errors: list[str] = field(default_factory=list)
    checked_objects: int = 0

    def add(self, where: str, errs: Iterable[str]) -> None:
        self.errors += [f"[{where}] {e}" for e in errs]


def deployed_paths() -> list[Path]:
    """The cluster directory and every path of this repository a Flux Kustomization of the cluster applies
    (Kustomizations of upstream sources, KEDA's CRDs, apply files that are not here)."""
    paths = [CLUSTER_DIR]
    for obj in build(CLUSTER_DIR):
        if obj.get("kind") == "Kustomization" and obj["apiVersion"].startswith("kustomize.toolkit.fluxcd.io/") \
                and (obj["spec"].get("sourceRef") or {}).get("name", "flux-system") == "flux-system":
            p = (ROOT / obj["spec"]["path"]).resolve()
            if p not in paths:
                paths.append(p)
    return paths


def deployed_objects() -> list[dict]:
    """Everything Flux applies to the Spark, after postBuild substitution."""
    settings = cluster_settings()
    objs: list[dict] = []
    for p in deployed_paths():
        rendered = build(p)
        objs += rendered if p == CLUSTER_DIR else [substitute(o, settings) for o in rendered]
    return objs


def validate_repo() -> Report:
    report = Report()
    k8s = kubernetes_version()
    settings = cluster_settings()
    for path in find_kustomizations():
        where = rel(path)
        try:
            objs = build(path)
        except BuildError as e:
            report.errors.append(f"[{where}] {e}")
            continue
        report.built[where] = objs
        for obj in objs:
            report.checked_objects += 1
            report.add(where, validate_object(substitute(obj, settings), k8s))
    try:
        objs = deployed_objects()
    except BuildError as e:
        report.errors.append(f"[deployed] {e}")
        return report
    import policies  # noqa: E402  (sibling module)

    for name, check in policies.REPO_CHECKS:
        report.add(f"policy {name}", check(objs))
    return report
