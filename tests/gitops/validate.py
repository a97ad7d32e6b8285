#!/usr/bin/env python3
"""Validate the GitOps tree offline: build every kustomization (kustomize-controller's flags), validate every
object strictly (built-in kinds at the pinned k3s' Kubernetes version, Flux/KEDA against the reference CRDs), run
the policy checks. Collects all errors, prints a summary, exits non-zero on any error.

Usage: python tests/gitops/validate.py [-v]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gitops  # noqa: E402


def main(argv: list[str]) -> int:
    verbose = "-v" in argv
    started = time.monotonic()
    try:
        report = gitops.validate_repo()
    except gitops.ToolMissing as e:
        print(f"validate: {e}", file=sys.stderr)
        return 2
    for where, objs in report.built.items():
        if verbose:
            print(f"built {where}: {len(objs)} objects")
    print(f"kustomizations built: {len(report.built)}; objects validated: {report.checked_objects}; "
          f"Kubernetes {gitops.kubernetes_version()}; {time.monotonic() - started:.1f}s")
    if report.errors:
        print(f"\n{len(report.errors)} error(s):")
        for e in report.errors:
            print(f"  - {e}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
