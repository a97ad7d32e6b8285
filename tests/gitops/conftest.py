"""Shared setup of the GitOps proof: import path and the system tools every test needs (missing = failure)."""

import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gitops  # noqa: E402

INSTALL_HINT = {
    "kubectl": "apt-get install -y kubectl (or nix develop)",
    "age": "apt-get install -y age",
    "age-keygen": "apt-get install -y age",
    "nix-instantiate": "apt-get install -y nix-bin",
}


def tool(name: str) -> str:
    """Path of a required tool; fails the test (never skips) with how to install it."""
    candidates = [Path(sys.executable).parent / name] if name == "sops" else []
    for c in candidates:
        if c.exists():
            return str(c)
    found = shutil.which(name)
    if not found:
        hint = INSTALL_HINT.get(name, "pip install -r tests/gitops/requirements.txt")
        pytest.fail(f"{name} is required by the GitOps proof and is not installed: {hint}", pytrace=False)
    return found


@pytest.fixture(scope="session")
def deployed():
    tool("kubectl")
    return gitops.deployed_objects()


@pytest.fixture(scope="session")
def contract():
    return gitops.read_contract()


@pytest.fixture(scope="session", autouse=True)
def _reference_crds():
    if not gitops.CRD_DIR.is_dir():
        pytest.fail(f"reference CRDs not found at {gitops.CRD_DIR}; set RAIBID_REFERENCE_DIR", pytrace=False)
    os.environ.setdefault("SOPS_DISABLE_VERSION_CHECK", "1")
