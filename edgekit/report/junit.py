"""JUnit XML for CI systems: one testcase per gate threshold.

A crossed threshold is a ``<failure>``; a threshold that could not be decided
(not comparable, insufficient data, failed bench) is an ``<error>``, so a CI
view shows the same verdict as the exit code.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from edgekit.results.gate import EXIT_INFRA, FAIL, UNDECIDED, GateResult


def render_junit(gate: GateResult, suite: str = "edgekit.gate", timestamp: str | None = None) -> str:
    cases = list(gate.checks)
    failures = sum(1 for c in cases if c.status == FAIL)
    errors = sum(1 for c in cases if c.status == UNDECIDED)
    infra = gate.exit_code == EXIT_INFRA
    root = ET.Element("testsuites", name="edgekit")
    ts = ET.SubElement(root, "testsuite", name=suite,
                       tests=str(len(cases) + (1 if infra else 0)),
                       failures=str(failures), errors=str(errors + (1 if infra else 0)), skipped="0")
    if timestamp:
        ts.set("timestamp", timestamp)
    props = ET.SubElement(ts, "properties")
    ET.SubElement(props, "property", name="exit_code", value=str(gate.exit_code))
    ET.SubElement(props, "property", name="verdict", value=gate.reason)
    classname = f"edgekit.gate.{gate.device}" if gate.device else "edgekit.gate"
    if infra:
        tc = ET.SubElement(ts, "testcase", classname=classname, name="bench")
        e = ET.SubElement(tc, "error", type="device", message=gate.reason)
        e.text = gate.reason
    for c in cases:
        tc = ET.SubElement(ts, "testcase", classname=classname, name=c.threshold.text)
        if c.status == FAIL:
            f = ET.SubElement(tc, "failure", type="threshold", message=c.message)
            f.text = c.message
        elif c.status == UNDECIDED:
            e = ET.SubElement(tc, "error", type=c.verdict or "undecided", message=c.message)
            e.text = c.message
        else:
            ET.SubElement(tc, "system-out").text = c.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
