#!/usr/bin/env python3
"""`make demo`: the main job on the shipped tiny model, as a user would run it.

1. build the tiny model in wNa8o8 and fp16 (text-only),
2. inspect the wNa8o8 bundle against its scheme,
3. bench wNa8o8 against fp16 on this machine (`host` profile) and gate it,
and print where the bundles and the report are.
"""

from __future__ import annotations

import json
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
    # exit 1 (a threshold failed) and 4 (undecided) are verdicts the demo shows, not failures of the demo
    rc = step("bench wNa8o8 against fp16 on this machine, and gate it",
              "bench", "--device", "host", "--model", "tiny", "--text-only", "--reps", "5", ok=(0, 1, 4))
    results = sorted(d for d in (ROOT / "results").glob("*-host") if d.is_dir())
    if results:
        print(f"\nreport: {results[-1].relative_to(ROOT)}/report.html")
        print(f"summary: {results[-1].relative_to(ROOT)}/summary.md")
    explain_gate(rc, results[-1] if results else None)


def explain_gate(rc: int, folder: Path | None) -> None:
    """Say which thresholds decided the verdict, read back from the stored result."""
    verdict = {0: "pass", 1: "FAILED (exit 1)", 4: "UNDECIDED (exit 4)"}.get(rc, f"exit {rc}")
    print(f"\ngate verdict: {verdict}")
    if folder is None or rc == 0:
        return
    out = subprocess.run(EDGEKIT + ["gate", str(folder), "--json"], cwd=ROOT, capture_output=True, text=True)
    try:
        checks = json.loads(out.stdout)["checks"]
    except (ValueError, KeyError):
        return
    for c in checks:
        if c["status"] != "pass":
            print(f"  {c['status'].upper()}: {c['message']}")
    quality = [c for c in checks if c["status"] == "fail" and c["threshold"]["metric"] == "top1_agreement"]
    if quality:
        print("  The shipped tiny model is a toy Gemma 4 trained on Python docstrings: with static int8\n"
              "  activations its next-token choices agree with fp16's far less often than a release needs,\n"
              f"  so the profile's default quality threshold {quality[0]['threshold']['text']} (from ai-edge-quantizer's\n"
              "  guidance for int8 LLMs) fails it, as it should. `edgekit bench` exited "
              f"{rc}, which is what a CI job\n  would see; the demonstration itself completed.")


if __name__ == "__main__":
    main()
