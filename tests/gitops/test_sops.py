"""The SOPS rules really work: with a throwaway age key in place of the owner's, every secret file of the layout
encrypts (values only, metadata readable, age recipient), decrypts back, and a path outside the rules is refused."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

import gitops
import policies
from conftest import tool

PLACEHOLDER = "age1-replaced-by-bootstrap"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A directory with the repository's .sops.yaml, its placeholder replaced by a fresh age public key."""
    d = tmp_path_factory.mktemp("sops")
    keygen = tool("age-keygen")
    tool("age")
    proc = subprocess.run([keygen, "-o", str(d / "key.txt")], capture_output=True, text=True, check=True)
    pub = next(line.split(":", 1)[1].strip() for line in (d / "key.txt").read_text().splitlines()
               if line.startswith("# public key:"))
    sops_yaml = (gitops.ROOT / ".sops.yaml").read_text()
    assert sops_yaml.count(PLACEHOLDER) == 1, "the owner placeholder must appear once, on the &owner line"
    assert f"&owner {PLACEHOLDER}" in sops_yaml
    (d / ".sops.yaml").write_text(sops_yaml.replace(PLACEHOLDER, pub))
    env = dict(os.environ, SOPS_AGE_KEY_FILE=str(d / "key.txt"), SOPS_DISABLE_VERSION_CHECK="1")
    env.pop("SOPS_AGE_KEY", None)
    return d, pub, env, proc


def sops(*args, cwd, env):
    return subprocess.run([tool("sops"), *args], cwd=cwd, env=env, capture_output=True, text=True)


def plain_secret(row):
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": row["secret"], "namespace": row["namespace"]},
            "stringData": {k: f"value-of-{k}" for k in row["keys"].split(",") if k}}


ROWS = policies.secrets_table()


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_secret_file_round_trip(sandbox, row, tmp_path):
    d, pub, env, _ = sandbox
    plain = tmp_path / "plain.yaml"  # outside the tree, as bootstrap does it
    doc = plain_secret(row)
    plain.write_text(yaml.safe_dump(doc))
    target = d / row["file"]
    target.parent.mkdir(parents=True, exist_ok=True)
    enc = sops("--encrypt", "--filename-override", row["file"], str(plain), cwd=d, env=env)
    assert enc.returncode == 0, enc.stderr
    target.write_text(enc.stdout)
    data = yaml.safe_load(enc.stdout)
    assert policies.secret_encrypted(data), enc.stdout
    assert data["metadata"] == doc["metadata"], "metadata must stay readable"
    assert [r["recipient"] for r in data["sops"]["age"]] == [pub]
    assert "value-of-" not in enc.stdout
    dec = sops("--decrypt", str(target), cwd=d, env=env)
    assert dec.returncode == 0, dec.stderr
    assert yaml.safe_load(dec.stdout) == doc
    # what Flux would then apply is a valid Secret
    assert gitops.validate_object(yaml.safe_load(dec.stdout)) == []


def test_path_outside_the_rules_is_refused(sandbox, tmp_path):
    d, _, env, _ = sandbox
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(plain_secret(ROWS[0])))
    for path in ("apps/base/raibid/oops.sops.yaml", "infrastructure/controllers/secrets/oops.yaml"):
        r = sops("--encrypt", "--filename-override", path, str(plain), cwd=d, env=env)
        assert r.returncode != 0 and "no matching creation rules" in r.stderr, (path, r.stderr)


def test_placeholder_recipient_refuses_to_encrypt(tmp_path):
    """As shipped (before bootstrap puts the owner's key in), encrypting fails instead of using a wrong key."""
    (tmp_path / ".sops.yaml").write_text((gitops.ROOT / ".sops.yaml").read_text())
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(plain_secret(ROWS[0])))
    env = dict(os.environ, SOPS_DISABLE_VERSION_CHECK="1")
    r = sops("--encrypt", "--filename-override", ROWS[0]["file"], str(plain), cwd=tmp_path, env=env)
    assert r.returncode != 0
    assert "age" in r.stderr.lower()


def test_decrypting_without_the_key_fails(sandbox, tmp_path):
    d, _, env, _ = sandbox
    row = ROWS[0]
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(plain_secret(row)))
    enc = sops("--encrypt", "--filename-override", row["file"], str(plain), cwd=d, env=env)
    (tmp_path / "enc.sops.yaml").write_text(enc.stdout)
    other = tmp_path / "other.txt"
    subprocess.run([tool("age-keygen"), "-o", str(other)], capture_output=True, check=True)
    env2 = dict(env, SOPS_AGE_KEY_FILE=str(other))
    r = sops("--decrypt", str(tmp_path / "enc.sops.yaml"), cwd=tmp_path, env=env2)
    assert r.returncode != 0
