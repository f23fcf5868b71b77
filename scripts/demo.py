#!/usr/bin/env python3
"""`make demo`: the main job on the shipped tiny model, as a user would run it.

1. build the tiny model in wNa8o8 and fp16 (text-only),
2. inspect the wNa8o8 bundle against its scheme,
3. bench wNa8o8 against fp16 on this machine (`host` profile) and gate it,
and print where the bundles and the report are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGEKIT = [str(Path(sys.executable).with_name("edgekit"))]
if not Path(EDGEKIT[0]).exists():
    EDGEKIT = [sys.executable, "-m", "edgekit"]


def step(title: str, *args: str, ok=(0,)) -> int:
    print(f"\n==> {title}\n$ edgekit {' '.join(args)}", flush=True)
    rc = subprocess.call(EDGEKIT + list(args), cwd=ROOT)
    if rc not in ok:
        print(f"demo: `edgekit {' '.join(args)}` failed with exit code {rc}", file=sys.stderr)
        sys.exit(rc)
    return rc


def main() -> None:
    step("build the tiny model, wNa8o8 (static int8 activations)", "build", "tiny", "--text-only")
    step("build its FP16 baseline", "build", "tiny", "--text-only", "--scheme", "fp16")
    bundles = sorted((ROOT / "dist").glob("tiny-*/*.litertlm"))
    print("\nbundles:")
    for b in bundles:
        print(f"  {b.relative_to(ROOT)}  ({b.stat().st_size:,} bytes)")
    step("inspect the wNa8o8 bundle against its scheme", "inspect", "dist/tiny-wNa8o8-text")
    rc = step("bench wNa8o8 against fp16 on this machine, and gate it",
              "bench", "--device", "host", "--model", "tiny", "--text-only", "--reps", "5", ok=(0, 1))
    results = sorted((ROOT / "results").glob("*-host"))
    if results:
        print(f"\nreport: {results[-1].relative_to(ROOT)}/report.html")
        print(f"summary: {results[-1].relative_to(ROOT)}/summary.md")
    print(f"\ngate verdict: {'pass' if rc == 0 else 'FAILED (exit 1)'}")


if __name__ == "__main__":
    main()
