"""Every kustomization builds as kustomize-controller builds it, and every object in it is valid, strictly."""

from pathlib import Path

import pytest
import yaml

import gitops
from conftest import tool

KUSTOMIZATIONS = gitops.find_kustomizations()
FIXTURES = Path(__file__).parent / "fixtures"


def test_the_repository_has_the_expected_kustomizations():
    names = {gitops.rel(p) for p in KUSTOMIZATIONS}
    for want in ("clusters/dgx-spark", "clusters/dgx-spark/flux-system", "infrastructure/controllers",
                 "infrastructure/configs", "apps/base/raibid", "apps/dgx-spark"):
        assert want in names


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=[gitops.rel(p) for p in KUSTOMIZATIONS])
def test_kustomization_builds_and_validates(path):
    tool("kubectl")
    objs = gitops.build(path)
    settings = gitops.cluster_settings()
    errors = [e for o in objs for e in gitops.validate_object(gitops.substitute(o, settings))]
    assert not errors, "\n".join(errors)


def test_build_uses_kustomize_controller_flags():
    assert "--load-restrictor=LoadRestrictionsNone" in gitops.KUSTOMIZE_FLAGS


def test_validation_targets_the_pinned_k3s_kubernetes():
    pins = gitops.read_pins()
    # v1.35.6+k3s1 ships Kubernetes 1.35.6
    assert pins["K3S_VERSION"].lstrip("v").split("+")[0] == pins["KUBERNETES_VERSION"]
    from kubernetes_validate import utils
    assert gitops.kubernetes_version() and utils.major_minor(pins["KUBERNETES_VERSION"]) <= utils.latest_version()


def test_whole_repository_validator_passes():
    tool("kubectl")
    report = gitops.validate_repo()
    assert not report.errors, "\n".join(report.errors)
    assert report.checked_objects > 40


# --- negative fixtures: a typo anywhere fails -------------------------------------------------------------

SCHEMA_FIXTURES = sorted((FIXTURES / "schema").glob("*.yaml"))


def _expect(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# expect:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path.name}: no '# expect:' line")


@pytest.mark.parametrize("fixture", SCHEMA_FIXTURES, ids=[p.stem for p in SCHEMA_FIXTURES])
def test_schema_rejects_fixture(fixture):
    objs = [d for d in yaml.safe_load_all(fixture.read_text()) if d]
    errors = [e for o in objs for e in gitops.validate_object(o)]
    assert errors, f"{fixture.name} validated, but must not"
    want = _expect(fixture)
    assert any(want in e for e in errors), f"expected {want!r} in {errors}"


def test_there_is_a_schema_fixture_per_family():
    stems = {p.stem for p in SCHEMA_FIXTURES}
    for family in ("deployment", "scaledjob", "helmrelease", "kustomization", "triggerauthentication",
                   "networkpolicy", "gitrepository"):
        assert any(s.startswith(family) for s in stems), f"no negative schema fixture for {family}"


def test_broken_kustomization_fails_to_build():
    tool("kubectl")
    with pytest.raises(gitops.BuildError, match="kubectl kustomize failed"):
        gitops.build(FIXTURES / "build" / "missing-resource")
