"""Helm ignores a values key the chart does not know, so a typo or a key renamed in a new chart version silently does
nothing (issue 21 §1: re-check every values key against the new charts). For each HelmRelease whose chart's default
values are in tests/gitops/data/chart-values/<chart>-<version>.yaml (copied from the chart's tag, README there),
every key path the release sets must exist in those defaults (maps with free-form keys: `{}` in the defaults)."""

import copy
from pathlib import Path

import yaml

from policies import find

DATA = Path(__file__).parent / "data" / "chart-values"

# Where the pinned version's values.yaml cannot be read here, the nearest readable release of the same major
# (a chart's minor releases add keys, a removal is a major bump); README.md in DATA names the source.
NEAREST = {("gitea", "12.7.0"): "gitea-12.2.0.yaml"}

# Maps the chart passes through as free-form: `gitea.config` becomes app.ini, any section and key (the chart's
# README: "All defaults can be overwritten in gitea.config").
FREE_FORM = {"gitea": ["gitea.config"]}


def unknown_keys(values, defaults, path="", free=()) -> list[str]:
    out = []
    if path in free:
        return out
    if not isinstance(values, dict):
        return out
    if not isinstance(defaults, dict):
        return out
    if defaults == {}:  # a free-form map in the chart (labels, annotations, operator: {})
        return out
    for k, v in values.items():
        p = f"{path}.{k}" if path else k
        if k not in defaults:
            out.append(p)
        else:
            out += unknown_keys(v, defaults[k], p, free)
    return out


def releases_with_defaults(objs):
    for hr in find(objs, "HelmRelease"):
        chart = hr["spec"]["chart"]["spec"]
        f = DATA / NEAREST.get((chart["chart"], chart["version"]), f"{chart['chart']}-{chart['version']}.yaml")
        if f.exists():
            yield hr, yaml.safe_load(f.read_text())


def test_the_pinned_chart_versions_have_their_defaults_here(deployed):
    assert sorted(hr["metadata"]["name"] for hr, _ in releases_with_defaults(deployed)) == ["gitea", "keda", "nvidia-device-plugin"], \
        "copy the pinned gitea, keda and nvidia-device-plugin charts' values.yaml into tests/gitops/data/chart-values/"


def test_every_values_key_exists_in_the_chart(deployed):
    errs = [f"{hr['metadata']['name']}: values.{k} is not a key of the chart's values"
            for hr, d in releases_with_defaults(deployed)
            for k in unknown_keys(hr["spec"].get("values") or {}, d, free=FREE_FORM.get(hr["spec"]["chart"]["spec"]["chart"], ()))]
    assert not errs, "\n".join(errs)


def test_a_misspelt_key_fails(deployed):
    hr, d = next((hr, d) for hr, d in releases_with_defaults(deployed) if hr["metadata"]["name"] == "keda")
    values = copy.deepcopy(hr["spec"]["values"])
    values["crds"]["instal"] = False
    values["resources"]["metricsServer"] = {"requests": {"cpu": "1"}}
    assert unknown_keys(values, d) == ["crds.instal", "resources.metricsServer"]


def test_a_misspelt_device_plugin_key_fails(deployed):
    hr, d = next((hr, d) for hr, d in releases_with_defaults(deployed) if hr["metadata"]["name"] == "nvidia-device-plugin")
    values = copy.deepcopy(hr["spec"]["values"])
    values["runtimeClass"] = "nvidia"
    values["gfd"]["enable"] = False
    assert unknown_keys(values, d) == ["gfd.enable", "runtimeClass"]


def test_a_misspelt_gitea_key_fails_and_app_ini_stays_free(deployed):
    hr, d = next((hr, d) for hr, d in releases_with_defaults(deployed) if hr["metadata"]["name"] == "gitea")
    values = copy.deepcopy(hr["spec"]["values"])
    values["persistance"] = {"size": "1Gi"}
    values["gitea"]["admin"]["existingSecrets"] = "x"
    values["gitea"]["config"]["any_section"] = {"ANY_KEY": "1"}  # app.ini: free-form by design
    assert unknown_keys(values, d, free=FREE_FORM["gitea"]) == ["gitea.admin.existingSecrets", "persistance"]
