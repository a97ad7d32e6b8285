"""The pins of the tree (issue 21 §1): every version the Spark runs or builds with, found where it lives, compared
with the table in docs/pins.md, and the KEDA / Flux / Kubernetes minors checked against the support ranges kept as
data in docs/support-ranges.yaml.

Scope: what runs on the Spark or builds its images — scripts/pins.env, chart versions of HelmReleases, tags of
upstream GitRepositories, container images of the manifests (raibid's own images follow the Cargo workspace
version: policy image-versions), base images and pinned apt packages of the Containerfiles. The Python packages of
the test suites are pinned in their requirements.txt files (test_pins_and_flake.py)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import yaml

import gitops
from gitops import ROOT

PINS_DOC = ROOT / "docs" / "pins.md"
SUPPORT = ROOT / "docs" / "support-ranges.yaml"
MANIFEST_DIRS = ("clusters", "infrastructure", "apps")
FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)", re.I)
ARG = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)")
APT_PIN = re.compile(r"\b([a-z0-9][a-z0-9.+-]+)=\$\{?([A-Z_][A-Z0-9_]*)\}?|\b([a-z0-9][a-z0-9.+-]+)=(\d[\w.+~:-]*)")


def _add(out: dict, name: str, version: str, where: Path | str) -> None:
    w = gitops.rel(where) if isinstance(where, Path) else where
    cur = out.setdefault(name, {"version": version, "where": set()})
    if cur["version"] != version:
        cur.setdefault("conflicts", set()).add(f"{w}: {version}")
    cur["where"].add(w)


def _pod_containers(doc: dict) -> list[dict]:
    spec = doc.get("spec") or {}
    tmpl = ((spec.get("jobTargetRef") or {}).get("template") if doc.get("kind") == "ScaledJob"
            else spec.get("template")) or {}
    pod = tmpl.get("spec") or {}
    return (pod.get("initContainers") or []) + (pod.get("containers") or [])


def tree_pins(root: Path = ROOT) -> dict[str, dict]:
    """name -> {version, where: {files}, conflicts?}: every pin found in the tree."""
    out: dict[str, dict] = {}
    for k, v in gitops.read_pins(root / "scripts" / "pins.env").items():
        _add(out, k, v, "scripts/pins.env")
    for d in MANIFEST_DIRS:
        for f in sorted((root / d).rglob("*.yaml")):
            if "fixtures" in f.parts or f.name.endswith(".sops.yaml"):
                continue
            for doc in yaml.safe_load_all(f.read_text()):
                if not isinstance(doc, dict):
                    continue
                kind = doc.get("kind")
                spec = doc.get("spec") or {}
                if kind == "HelmRelease":
                    chart = (spec.get("chart") or {}).get("spec") or {}
                    _add(out, f"chart {chart.get('chart')}", str(chart.get("version")), f.relative_to(root).as_posix())
                elif kind == "GitRepository" and (spec.get("ref") or {}).get("tag"):
                    _add(out, f"git {spec['url'].removeprefix('https://github.com/')}", spec["ref"]["tag"],
                         f.relative_to(root).as_posix())
                for c in _pod_containers(doc):
                    img = str(c.get("image", ""))
                    if ":" in img and not img.startswith("raibid-"):
                        name, tag = img.rsplit(":", 1)
                        _add(out, f"image {name}", tag, f.relative_to(root).as_posix())
    for f in sorted((root / "containers").glob("*Containerfile*")):
        args: dict[str, str] = {}
        stages: set[str] = set()
        # apt pins are per distribution: Debian (the rust/debian bases) is unnamed, others are named by the base
        # image's tag (nvidia/cuda:…-ubuntu24.04 -> `apt bubblewrap (ubuntu24.04)`); a stage inherits its parent's.
        distro, stage_distro = "", {}
        for line in f.read_text().splitlines():
            a = ARG.match(line)
            if a:
                args[a.group(1)] = a.group(2).strip('"')
                if a.group(1) in out and "scripts/pins.env" in out[a.group(1)]["where"]:
                    _add(out, a.group(1), args[a.group(1)], f.relative_to(root).as_posix())
            m = FROM.match(line)
            if m:
                ref = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda x: args.get(x.group(1), x.group(0)), m.group(1))
                st = re.search(r"\bAS\s+(\S+)", line, re.I)
                if ref in stages:
                    distro = stage_distro.get(ref, "")
                else:
                    d = re.search(r"(ubuntu\d+\.\d+)", ref.rsplit(":", 1)[-1]) if ":" in ref else None
                    distro = d.group(1) if d else ""
                if ref not in stages and ":" in ref:
                    name, tag = ref.rsplit(":", 1)
                    _add(out, f"image {name}", tag, f.relative_to(root).as_posix())
                if st:
                    stages.add(st.group(1))
                    stage_distro[st.group(1)] = distro
            if "apt-get install" in line or line.strip().startswith(("apt-", "&&", "\\")) or re.search(r"^\s+\S+=", line):
                for p in APT_PIN.finditer(line.split("#", 1)[0]):
                    pkg, var, pkg2, ver = p.groups()
                    suffix = f" ({distro})" if distro else ""
                    if pkg and var in args:
                        _add(out, f"apt {pkg}{suffix}", args[var], f.relative_to(root).as_posix())
                    elif pkg2 and ver and pkg2 not in ("RUST_VERSION",):
                        _add(out, f"apt {pkg2}{suffix}", ver, f.relative_to(root).as_posix())
    return out


ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*`([^`]+)`\s*\|([^|]*)\|")


def table_pins(text: str) -> dict[str, dict]:
    """The rows of docs/pins.md: | `name` | `version` | where (files in backticks) | why | support window |."""
    rows: dict[str, dict] = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = {"version": m.group(2), "where": set(re.findall(r"`([^`]+)`", m.group(3)))}
    return rows


def check_pins_table(tree: dict[str, dict], table: dict[str, dict]) -> list[str]:
    errs = []
    for name, p in sorted(tree.items()):
        for c in sorted(p.get("conflicts", ())):
            errs.append(f"{name}: pinned to {p['version']} and to {c}: one version per pin")
        row = table.get(name)
        if row is None:
            errs.append(f"{name} {p['version']} ({', '.join(sorted(p['where']))}) is not in docs/pins.md")
            continue
        if row["version"] != p["version"]:
            errs.append(f"{name}: the tree pins {p['version']} ({', '.join(sorted(p['where']))}), "
                        f"docs/pins.md says {row['version']}")
        missing = p["where"] - row["where"]
        if missing:
            errs.append(f"{name}: docs/pins.md does not say it lives in {', '.join(sorted(missing))}")
    for name in sorted(set(table) - set(tree)):
        errs.append(f"docs/pins.md lists {name}, which the tree does not pin")
    return errs


def _minor(v: str) -> tuple[int, int]:
    m = re.match(r"v?(\d+)\.(\d+)", v)
    if not m:
        raise ValueError(f"not a version: {v}")
    return int(m.group(1)), int(m.group(2))


def _s(t: tuple[int, int]) -> str:
    return f"{t[0]}.{t[1]}"


def check_support(tree: dict[str, dict], support: dict, today: dt.date | None = None) -> list[str]:
    """The pinned KEDA, Flux and Kubernetes minors inside each other's documented ranges, Kubernetes not past its
    end of life, Flux a maintained minor."""
    errs = []
    today = today or dt.date.today()
    k8s = _minor(tree["KUBERNETES_VERSION"]["version"])
    k3s = _minor(tree["K3S_VERSION"]["version"])
    if k3s != k8s:
        errs.append(f"K3S_VERSION {tree['K3S_VERSION']['version']} does not ship Kubernetes {_s(k8s)}")
    eol = (support.get("kubernetes") or {}).get("end_of_life") or {}
    if _s(k8s) not in eol:
        errs.append(f"Kubernetes {_s(k8s)}: no end-of-life date in docs/support-ranges.yaml")
    elif dt.date.fromisoformat(str(eol[_s(k8s)])) <= today:
        errs.append(f"Kubernetes {_s(k8s)} reached end of life on {eol[_s(k8s)]}: move K3S_VERSION to a supported minor")
    for comp, pin in (("keda", "chart keda"), ("flux", "FLUX_VERSION")):
        if pin not in tree:
            errs.append(f"{comp}: no pin {pin} in the tree")
            continue
        minor = _s(_minor(tree[pin]["version"]))
        rng = ((support.get(comp) or {}).get("tested") or {}).get(minor)
        if not rng:
            errs.append(f"{comp} {minor}: no tested Kubernetes range in docs/support-ranges.yaml")
            continue
        lo, hi = _minor(rng[0]), _minor(rng[1])
        if not lo <= k8s <= hi:
            errs.append(f"{comp} {minor} is tested on Kubernetes {rng[0]}-{rng[1]}, the k3s pin is {_s(k8s)}")
    flux = tree.get("FLUX_VERSION")
    maintained = (support.get("flux") or {}).get("maintained") or []
    if flux and _s(_minor(flux["version"])) not in maintained:
        errs.append(f"Flux {_s(_minor(flux['version']))} is not maintained (maintained: {', '.join(maintained)})")
    crd_tags = [n for n in tree if n == "git kedacore/keda"]
    if crd_tags and "chart keda" in tree and tree["git kedacore/keda"]["version"].lstrip("v") != tree["chart keda"]["version"]:
        errs.append(f"KEDA CRDs at {tree['git kedacore/keda']['version']} but chart {tree['chart keda']['version']}: "
                    f"move them together")
    return errs


def load_support(path: Path = SUPPORT) -> dict:
    return yaml.safe_load(path.read_text())
