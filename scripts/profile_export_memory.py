"""Per-stage peak RSS of edgekit's litert-torch export child (build-memory profiling).

Runs the same ``export_hf.export(...)`` call as ``python -m edgekit.builder.export``
in this process, with a 0.1 s RSS sampler thread and enter/exit markers around
the exporter's stages (wrapped, not changed):

- tasks: embedder / prefill-decode / additional / tokenizer / bundle packaging
- inside a convert: torch.export tracing, FX passes, lowering + TFLite conversion
  (``exported_programs_to_flatbuffer``), flatbuffer serialization (``Model.export``),
  the V2 converter's ``export_to_dir`` / MLIR conversion / params save.

Writes a JSON with the samples, the events and, per stage call, RSS at entry,
peak inside and the rise. Usage::

    .venv/bin/python scripts/profile_export_memory.py --model CKPT --out prof.json [--v2]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import threading
import time


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _rss() -> int:
    return _status("VmRSS:")


def _hwm_and_reset() -> int:
    """VmHWM since the last reset, then reset it (``echo 5 > /proc/self/clear_refs``).

    Exact per-stage peaks, including those inside native calls that hold the GIL
    (where a sampler thread cannot run)."""
    h = _status("VmHWM:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return h


class Profile:
    def __init__(self, period: float = 0.1) -> None:
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, int]] = []
        self.peak = _hwm_and_reset()
        self.calls: list[dict] = []
        self._stack: list[dict] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    def _run(self, period: float) -> None:
        while not self._stop.is_set():
            r, anon = _rss(), _status("RssAnon:")
            with self._lock:
                self.samples.append((round(time.monotonic() - self.t0, 2), r, anon))
                for c in self._stack:
                    c["peak"] = max(c["peak"], r)
            time.sleep(period)

    def wrap(self, owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def inner(*a, **k):
            self.fold()
            r = _rss()
            c = {"stage": label, "depth": len(self._stack), "t_enter": round(time.monotonic() - self.t0, 2),
                 "rss_enter": r, "anon_enter": _status("RssAnon:"), "peak": r}
            with self._lock:
                self._stack.append(c)
                self.calls.append(c)
            try:
                return fn(*a, **k)
            finally:
                self.fold()
                r2 = _rss()
                with self._lock:
                    c["peak"] = max(c["peak"], r2)
                    c["rss_exit"] = r2
                    c["anon_exit"] = _status("RssAnon:")
                    c["anon_peak_sampled"] = max((x[2] for x in self.samples if x[0] >= c["t_enter"]),
                                                 default=c["anon_exit"])
                    c["t_exit"] = round(time.monotonic() - self.t0, 2)
                    self._stack.remove(c)
                print(f"[profile] {label}: {c['t_exit'] - c['t_enter']:.1f} s, rss "
                      f"{c['rss_enter'] / 2**30:.2f} -> peak {c['peak'] / 2**30:.2f} -> "
                      f"{r2 / 2**30:.2f} GiB (anon {c['anon_enter'] / 2**30:.2f} -> sampled peak "
                      f"{c['anon_peak_sampled'] / 2**30:.2f} -> {c['anon_exit'] / 2**30:.2f})", flush=True)

        setattr(owner, attr, inner)

    def fold(self) -> None:
        """Fold the exact peak since the last fold into every open stage."""
        with self._lock:
            h = _hwm_and_reset()
            self.peak = max(self.peak, h)
            for c in self._stack:
                c["peak"] = max(c["peak"], h)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def install(p: Profile) -> None:
    from litert_torch._convert import converter_v2, core, litert_converter
    from litert_torch import model as model_lib
    from litert_torch.generative.export_hf.core import export_lib, litert_lm_builder
    from litert_torch.generative.export_hf.core.mu import mu_pass_lib

    for name, label in [
        ("export_embedder_model", "task: embedder sections"),
        ("export_text_prefill_decode_model", "task: prefill/decode"),
        ("export_additional_models", "task: additional models"),
        ("export_tokenizer", "task: tokenizer"),
    ]:
        p.wrap(export_lib, name, label)
    p.wrap(export_lib, "load_model", "task: load model")
    p.wrap(litert_lm_builder, "package_model", "task: package .litertlm")
    p.wrap(core, "export_torch_signature", "torch.export tracing")
    p.wrap(core, "_run_convert_passes", "FX passes")
    p.wrap(litert_converter, "exported_programs_to_flatbuffer", "lowering + TFLite conversion")
    p.wrap(model_lib.LiteRTModel, "export", "flatbuffer serialization (Model.export)")
    p.wrap(mu_pass_lib, "update_model", "mu passes (update_model)")
    p.wrap(converter_v2, "export_to_dir", "v2: trace+lower to MLIR dir")
    p.wrap(converter_v2, "_convert_mlir_bytecode", "v2: MLIR -> TFLite")
    p.wrap(converter_v2.ParameterRegistry, "save", "v2: params save")


def build_main(a) -> int:
    """Builder-side profile: ``pipeline.build`` with each ``_Stages.run`` call (stage + message) wrapped."""
    from edgekit.builder import pipeline
    from edgekit.builder import quantize as qz

    p = Profile()
    orig = pipeline._Stages.run

    def run(self, stage, message, fn, *args, **kwargs):
        holder = type("H", (), {})()
        holder.call = lambda *aa, **kk: fn(*aa, **kk)
        p.wrap(holder, "call", f"builder {stage}: {message}"[:90])
        return orig(self, stage, message, holder.call, *args, **kwargs)

    pipeline._Stages.run = run
    if a.plain_export:  # reuse an export cached before lightweight conversion became the default
        import functools

        from edgekit.builder import export as ex
        ex.ExportOptions = functools.partial(ex.ExportOptions, lightweight_conversion=False)
    p.wrap(qz, "plan_section", "builder: plan_section")
    err = None
    try:
        res = pipeline.build(a.preset, random_weights=True, width_div=a.width_div, text_only=True, scheme=a.scheme,
                             output=a.output, cache_dir=a.cache_dir, force=True, quality=False)
        size = res.bundle.stat().st_size
    except Exception as e:  # noqa: BLE001 - recorded in the profile
        err, size = f"{type(e).__name__}: {e}"[:500], None
    p.stop()
    p.fold()
    rec = {"preset": a.preset, "width_div": a.width_div, "error": err, "bundle_bytes": size, "vmhwm": p.peak,
           "seconds": round(time.monotonic() - p.t0, 1), "calls": p.calls, "samples": p.samples}
    with open(a.out, "w") as f:
        json.dump(rec, f)
    print(f"[profile] done: builder peak {p.peak / 2**30:.2f} GiB, error={err}", flush=True)
    return 1 if err else 0


def report(paths: list[str]) -> str:
    """Markdown: one table per profile JSON, one row per stage call (exact peaks)."""
    g = 2**30
    out = []
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        what = r.get("model") or f"{r.get('preset')} w{r.get('width_div')} build"
        mode = "v2" if r.get("v2") else "lightweight (all converts)" if r.get("lightweight_all") else \
            "lightweight" if r.get("lightweight") else "builder" if "preset" in r else "plain"
        out.append(f"### {os.path.basename(path)}: {what} [{mode}]\n")
        out.append(f"peak {r['vmhwm'] / g:.2f} GiB, {r['seconds']:.0f} s, error: {r.get('error')}\n")
        out.append("| stage | s | RSS at entry GiB | peak GiB | rise GiB | RSS at exit GiB |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for c in r["calls"]:
            if "t_exit" not in c:
                continue
            ind = "&nbsp;&nbsp;" * c["depth"]
            out.append(f"| {ind}{c['stage']} | {c['t_exit'] - c['t_enter']:.1f} | {c['rss_enter'] / g:.2f} | "
                       f"{c['peak'] / g:.2f} | {(c['peak'] - c['rss_enter']) / g:.2f} | {c['rss_exit'] / g:.2f} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["report"]:
        print(report(argv[1:]))
        return 0
    if argv[:1] == ["build"]:
        bp = argparse.ArgumentParser(prog="profile_export_memory.py build")
        bp.add_argument("--preset", default="e2b")
        bp.add_argument("--width-div", type=int, required=True)
        bp.add_argument("--scheme", default="wNa8o8")
        bp.add_argument("--cache-dir", required=True, help="EDGEKIT_CACHE holding the cached checkpoint/export")
        bp.add_argument("--output", required=True)
        bp.add_argument("--out", required=True)
        bp.add_argument("--plain-export", action="store_true")
        return build_main(bp.parse_args(argv[1:]))
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prefill", type=int, default=32)
    ap.add_argument("--cache-length", type=int, default=256)
    ap.add_argument("--v2", action="store_true", help="use_v2 + delete_in_memory_params")
    ap.add_argument("--lightweight", action="store_true", help="experimental_lightweight_conversion")
    ap.add_argument("--lightweight-all", action="store_true",
                    help="also for the converts export_hf does not pass it to (the per-layer embedder)")
    a = ap.parse_args(argv)
    p = Profile()
    install(p)
    from litert_torch.generative.export_hf import export as hf_export

    kwargs = dict(
        quantization_recipe="none", prefill_lengths=[a.prefill], cache_length=a.cache_length,
        externalize_embedder=True, split_cache=False, bundle_litert_lm=True,
        export_vision_encoder=False, export_audio_encoder=False,
    )
    if a.v2:
        kwargs.update(use_v2=True, delete_in_memory_params=True)
    if a.lightweight or a.lightweight_all:
        kwargs.update(experimental_lightweight_conversion=True)
    if a.lightweight_all:
        from edgekit.builder.export import lightweight_everywhere
        lw = lightweight_everywhere()  # kept referenced: a collected generator would undo it
        lw.__enter__()  # for the rest of this process
    err = None
    with tempfile.TemporaryDirectory(prefix="profexp-") as out:
        try:
            hf_export.export(model=a.model, output_dir=out, task="text_generation", **kwargs)
            bundle = os.path.join(out, "model.litertlm")
            size = os.path.getsize(bundle) if os.path.exists(bundle) else None
            if size and os.environ.get("PROFILE_KEEP"):
                import shutil
                shutil.copyfile(bundle, os.environ["PROFILE_KEEP"])
        except Exception as e:  # noqa: BLE001 - recorded in the profile
            err, size = f"{type(e).__name__}: {e}"[:500], None
    p.stop()
    p.fold()
    hwm = p.peak
    rec = {"model": a.model, "v2": a.v2, "lightweight": a.lightweight, "lightweight_all": a.lightweight_all, "error": err, "bundle_bytes": size, "vmhwm": hwm,
           "seconds": round(time.monotonic() - p.t0, 1), "calls": p.calls, "samples": p.samples}
    with open(a.out, "w") as f:
        json.dump(rec, f)
    print(f"[profile] done: peak (VmHWM folded over stages) {hwm / 2**30:.2f} GiB, error={err}", flush=True)
    return 1 if err else 0


if __name__ == "__main__":
    sys.exit(main())
