"""docs/pins.md is the tree's pins, and the pinned KEDA / Flux / Kubernetes minors are inside each other's documented
support ranges (docs/support-ranges.yaml, with sources): issue 21 §1. Each check is also shown failing."""

import copy
import datetime as dt

import pin_table


def test_the_table_is_the_tree():
    errors = pin_table.check_pins_table(pin_table.tree_pins(), pin_table.table_pins(pin_table.PINS_DOC.read_text()))
    assert not errors, "\n".join(errors)


def test_a_pin_that_disagrees_with_the_table_fails():
    tree = pin_table.tree_pins()
    table = pin_table.table_pins(pin_table.PINS_DOC.read_text())
    bumped = copy.deepcopy(tree)
    bumped["chart gitea"]["version"] = "12.4.0"
    assert any("the tree pins 12.4.0" in e for e in pin_table.check_pins_table(bumped, table))
    moved = copy.deepcopy(tree)
    moved["image docker.io/library/redis"]["where"].add("apps/base/raibid/redis-copy.yaml")
    assert any("does not say it lives in apps/base/raibid/redis-copy.yaml" in e
               for e in pin_table.check_pins_table(moved, table))
    extra = copy.deepcopy(tree)
    extra["image docker.io/library/postgres"] = {"version": "17", "where": {"infrastructure/controllers/pg.yaml"}}
    assert any("is not in docs/pins.md" in e for e in pin_table.check_pins_table(extra, table))
    gone = copy.deepcopy(table)
    gone["image docker.io/library/nginx"] = {"version": "1", "where": set()}
    assert any("which the tree does not pin" in e for e in pin_table.check_pins_table(tree, gone))


def test_two_versions_of_one_pin_fail(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "pins.env").write_text("RUST_VERSION=1.95.0\n")
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers" / "x.Containerfile").write_text("ARG RUST_VERSION=1.90.0\nFROM docker.io/library/rust:${RUST_VERSION}-slim\n")
    for d in pin_table.MANIFEST_DIRS:
        (tmp_path / d).mkdir()
    tree = pin_table.tree_pins(tmp_path)
    errs = pin_table.check_pins_table(tree, {})
    assert any("RUST_VERSION: pinned to 1.95.0 and to containers/x.Containerfile: 1.90.0" in e for e in errs), errs


def test_keda_flux_kubernetes_are_inside_each_others_ranges():
    errors = pin_table.check_support(pin_table.tree_pins(), pin_table.load_support())
    assert not errors, "\n".join(errors)


def test_ranges_catch_what_issue_21_found():
    """The tree before issue 21 (k3s 1.33, KEDA 2.18, Flux 2.7) fails; so does a KEDA the k3s minor is outside of."""
    support = pin_table.load_support()
    tree = copy.deepcopy(pin_table.tree_pins())
    old = copy.deepcopy(tree)
    old["K3S_VERSION"]["version"], old["KUBERNETES_VERSION"]["version"] = "v1.33.6+k3s1", "1.33.6"
    old["chart keda"]["version"], old["git kedacore/keda"]["version"] = "2.18.3", "v2.18.3"
    old["FLUX_VERSION"]["version"] = "2.7.5"
    errs = pin_table.check_support(old, support, today=dt.date(2026, 12, 6))
    assert any("Kubernetes 1.33 reached end of life on 2026-06-28" in e for e in errs), errs
    assert any("flux 2.7: no tested Kubernetes range" in e for e in errs), errs
    assert any("Flux 2.7 is not maintained" in e for e in errs), errs
    k = copy.deepcopy(tree)
    k["chart keda"]["version"] = "2.18.3"
    errs = pin_table.check_support(k, support)
    assert any("keda 2.18 is tested on Kubernetes 1.31-1.33, the k3s pin is 1.35" in e for e in errs), errs
    assert any("KEDA CRDs at v2.20.2 but chart 2.18.3" in e for e in errs), errs
    # The day 1.35 goes out of support the suite says so.
    errs = pin_table.check_support(tree, support, today=dt.date(2027, 3, 1))
    assert any("Kubernetes 1.35 reached end of life" in e for e in errs), errs


def test_every_support_range_names_its_source():
    support = pin_table.load_support()
    for comp in ("kubernetes", "keda", "flux"):
        assert support[comp].get("source"), f"docs/support-ranges.yaml: {comp} has no source"


def test_apt_pins_are_per_distribution(tmp_path):
    """bubblewrap of Debian trixie (agent.Containerfile) and of Ubuntu 24.04 (agent-gpu.Containerfile, CUDA base) are
    two pins; two versions for one distribution still conflict (a stage inherits its parent's distribution)."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "pins.env").write_text("RUST_VERSION=1.95.0\n")
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers" / "a.Containerfile").write_text(
        "FROM docker.io/library/rust:1.95.0-slim-trixie\nARG BW=0.11.0-2\nRUN apt-get install -y \\\n      bubblewrap=${BW}\n")
    (tmp_path / "containers" / "b.Containerfile").write_text(
        "FROM docker.io/nvidia/cuda:13.0.0-base-ubuntu24.04 AS base\nFROM base\nARG BW=0.9.0-1ubuntu0.3\n"
        "RUN apt-get install -y \\\n      bubblewrap=${BW}\n")
    for d in pin_table.MANIFEST_DIRS:
        (tmp_path / d).mkdir()
    tree = pin_table.tree_pins(tmp_path)
    assert tree["apt bubblewrap"]["version"] == "0.11.0-2"
    assert tree["apt bubblewrap (ubuntu24.04)"]["version"] == "0.9.0-1ubuntu0.3"
    assert not [e for e in pin_table.check_pins_table(tree, {}) if "one version per pin" in e]
    (tmp_path / "containers" / "c.Containerfile").write_text(
        "FROM docker.io/nvidia/cuda:13.0.0-base-ubuntu24.04\nARG BW=0.9.0-1ubuntu0.1\nRUN apt-get install -y \\\n      bubblewrap=${BW}\n")
    errs = pin_table.check_pins_table(pin_table.tree_pins(tmp_path), {})
    assert any("apt bubblewrap (ubuntu24.04): pinned to" in e and "one version per pin" in e for e in errs), errs
