"""Open the HTML report in headless Debian chromium: the plots decode and the page is not blank."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from edgekit.cli.main import main
from fixtures_results import FIXTURES

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=5000"]

PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var d = document.createElement('pre');
  d.id = 'edgekit-probe';
  d.textContent = 'IMGS:' + imgs.map(function (i) {
    return (i.complete ? 'ok' : 'pending') + '/' + i.naturalWidth + 'x' + i.naturalHeight; }).join(',') + ':END';
  document.body.appendChild(d);
});
</script>"""


def _chromium(tmp_path, *args):
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail("chromium missing: `make system-deps` installs it")
        pytest.skip("chromium missing: `make system-deps` installs it")
    profile = tmp_path / "chromium-profile"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    d = tmp_path_factory.mktemp("report") / "res"
    shutil.copytree(FIXTURES / "synth-pixel8-wna8o8-vs-fp16", d)
    assert main(["report", str(d), "--no-profile-thresholds", "--fail-on", "decode_tps:-5%"]) == 0
    return d / "report.html"


def test_report_is_self_contained(report_html):
    html = report_html.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.count("data:image/png;base64,") == 3


def test_plots_decode_in_chromium(report_html, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(report_html.read_text().replace("</body>", PROBE + "</body>"))
    res = _chromium(tmp_path, "--dump-dom", probe.as_uri())
    m = re.search(r"IMGS:(.*?):END", res.stdout)
    assert m, f"probe not found in chromium's DOM (rc {res.returncode}): {res.stderr[-500:]}"
    imgs = m.group(1).split(",")
    assert len(imgs) == 3, imgs
    for entry in imgs:
        state, size = entry.split("/")
        w, h = (int(x) for x in size.split("x"))
        assert state == "ok" and w > 200 and h > 100, f"image did not decode: {entry}"


def test_screenshot_not_blank(report_html, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    res = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", report_html.as_uri())
    assert shot.is_file(), f"no screenshot (rc {res.returncode}): {res.stderr[-500:]}"
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 50, "screenshot is (nearly) one color"
    # the plot area (bars are blue/orange) is drawn: some strongly coloured pixels exist
    import numpy as np

    px = np.asarray(img.resize((300, 600)), dtype=int)
    coloured = int(((px.max(axis=2) - px.min(axis=2)) > 80).sum())
    assert coloured > 100
