"""Repository-level policies (files, not rendered objects), each with a negative fixture tree."""

from pathlib import Path

import policies

FX = Path(__file__).parent / "fixtures" / "repo"


def test_repository_has_no_plaintext_secret():
    assert policies.check_repo_secrets() == []


def test_plaintext_secret_fixture_is_caught():
    errs = policies.check_repo_secrets(FX / "plaintext-secret")
    assert any("Secret/raibid-system/leaked is a plaintext Secret" in e for e in errs), errs
    assert any("fake.sops.yaml: named *.sops.yaml but not SOPS-encrypted" in e for e in errs), errs


def test_containerfiles_pin_their_bases():
    assert policies.check_containerfiles() == []


def test_floating_base_image_fixture_is_caught():
    errs = policies.check_containerfiles(FX / "containerfile-latest")
    assert any("FROM docker.io/library/rust has no pinned tag" in e for e in errs), errs
    assert any("FROM docker.io/library/debian:latest has no pinned tag" in e for e in errs), errs


def test_secret_dirs_follow_the_layout():
    assert policies.check_secret_dirs() == []
    rows = policies.secrets_table()
    assert {r["secret"] for r in rows} >= {"gitea-admin", "redis-auth", "raibid-dispatcher", "raibid-agent"}


def test_unlisted_secret_file_fixture_is_caught():
    errs = policies.check_secret_dirs(FX / "secret-dirs-unlisted")
    assert any("lists extra.sops.yaml, not in docs/secrets.md" in e for e in errs), errs
    assert any("lists raibid-agent.sops.yaml, which does not exist" in e for e in errs), errs


def test_sops_rules_cover_the_secret_files():
    assert policies.check_sops_rules() == []


def test_bad_sops_rules_fixture_is_caught():
    fx = FX / "sops-rules-bad"
    errs = policies.check_sops_rules(fx / ".sops.yaml", fx)
    for want in ("encrypted_regex must be ^(data|stringData)$", "pgp recipients: age only", "no age recipient",
                 "matches plain manifests"):
        assert any(want in e for e in errs), (want, errs)


def test_every_helmrelease_links_its_chart_defaults_above_values():
    root = policies.ROOT
    files = [p for p in (root / "infrastructure").rglob("*.yaml") if "kind: HelmRelease" in p.read_text()]
    assert files
    for f in files:
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() == "values:":
                assert "values.yaml" in lines[i - 1] and "http" in lines[i - 1], \
                    f"{f.name}:{i + 1}: put a link to the chart's default values above `values:`"


def test_one_file_per_controller():
    ctl = policies.ROOT / "infrastructure" / "controllers"
    for name in ("gitea", "keda", "redis"):
        assert (ctl / f"{name}.yaml").exists()


def test_docs_exist_with_diagrams_and_runbooks():
    docs = policies.ROOT / "docs"
    for f in ("diagrams/flux-dependencies.md", "diagrams/runtime-topology.md"):
        assert "```mermaid" in (docs / f).read_text(), f
    ops = (docs / "operations.md").read_text()
    for section in ("## Reconcile", "## Suspend and resume", "## Upgrade the agent", "## Rotate a secret"):
        assert section in ops, section
    adrs = [p.name for p in (docs / "adr").glob("*.md")]
    assert any("redis-official-image" in a for a in adrs), adrs
