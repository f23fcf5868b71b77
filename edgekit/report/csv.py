"""CSV view: one row per run (warmups marked), every metric in its unit. For spreadsheets and pandas.

A figure with no valid measurement is ``n/a`` (pandas reads it as NaN); ``<metric>_samples``
is how many readings the figure rests on (empty when not recorded) and ``na_reasons`` says
why each n/a figure of the run is absent.
"""

from __future__ import annotations

import csv
import io

from edgekit.results.metrics import RUN_METRICS
from edgekit.results.records import BenchResult

COLUMNS = ("order", "role", "phase", "index", "status", "bundle", "sha256", *RUN_METRICS,
           *(f"{m}_samples" for m in RUN_METRICS), "na_reasons",
           "thermal_start_c", "thermal_max_c", "thermal_end_c", "error")


def render_csv(result: BenchResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in sorted(result.runs, key=lambda x: x.order):
        b = result.bundles[r.role]
        t = r.thermal
        samples = [r.basis[m].samples if m in r.basis else None for m in RUN_METRICS]
        reasons = "; ".join(f"{m}: {r.reason(m)}" for m in RUN_METRICS if r.value(m) is None)
        w.writerow([r.order, r.role, r.phase, r.index, r.status, b.label, b.sha256,
                    *["n/a" if r.value(m) is None else repr(r.value(m)) for m in RUN_METRICS],
                    *["" if n is None else n for n in samples], reasons,
                    *["" if t is None or v is None else v for v in ((t.start_c, t.max_c, t.end_c) if t else (None,) * 3)],
                    r.error or ""])
    return buf.getvalue()
