"""Options shared by several commands (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path

import click


def gate_options(fn):
    """The threshold options shared by `gate`, `bench` and `report`."""
    options = [
        click.option("--fail-on", "fail_on", multiple=True, metavar="THRESHOLD",
                     help="decode_tps:-5%, peak_anon_mb:+10% (vs baseline) or peak_anon_mb<=1000 (absolute). "
                          "Repeatable."),
        click.option("--profile-thresholds/--no-profile-thresholds", default=True, show_default=True,
                     help="Also apply the device profile's [gate] fail_on and budget "
                          "(--fail-on replaces the same metric)."),
        click.option("--allow-mismatch", is_flag=True, help="Compare even when key settings differ."),
        click.option("--junit", type=click.Path(path_type=Path), help="Write JUnit XML (one testcase per threshold)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
