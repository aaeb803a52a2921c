"""A run's ``report.html`` opened in a real browser: headless Chromium, driven by Playwright.

Debian's Chromium (``/usr/bin/chromium``) is the browser; Playwright (PyPI, the
``test`` extra) only drives it (``executable_path``: no browser download). Where
Chromium is missing the set-up installs it (``apt-get install chromium``, as root,
with apt); the tests skip, saying why, only where it cannot be installed.

Checked on a short in-process run's report (``runner.report.write_report``): the page
renders (title, every section heading visible), every ``<img>`` is loaded with a
natural size, one per PNG in ``report/`` and of the same pixel size, and the browser
logged no console error, page error or failed request. The same checks run on a page
of ``runner.html.page`` with two matplotlib PNGs, and on a broken page, which they must
catch.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from playwright.sync_api import Browser, sync_playwright

from runner import html
from tests.conftest import DEFAULT, tecosim

CHROMIUM = Path("/usr/bin/chromium")
APT_TIMEOUT_S = 900
# without the background-networking flags Chromium keeps trying to reach Google's
# hosts, which a machine without internet access refuses (noise, and slower starts)
LAUNCH_ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
RUN = ["--set", "study.start=2026-06-21T11:30:00-04:00", "--set", "study.duration=30min"]


# ---------------------------------------------------------------- the browser
def _apt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, timeout=APT_TIMEOUT_S,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, check=False)


def _install_chromium() -> str:
    """Install Debian's chromium where it is missing; '' when it is there, else why not."""
    if CHROMIUM.exists():
        return ""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"{CHROMIUM} is missing and installing it needs root (apt-get install chromium)"
    if shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and there is no apt-get to install it"
    try:
        r = _apt("install", "-y", "-q", "chromium")
        if r.returncode != 0:  # stale or empty package lists: update, then try again
            _apt("update", "-q")
            r = _apt("install", "-y", "-q", "chromium")
    except subprocess.TimeoutExpired:
        return f"apt-get install chromium did not finish in {APT_TIMEOUT_S} s"
    if r.returncode != 0 or not CHROMIUM.exists():
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-5:])
        return f"apt-get install chromium failed (exit {r.returncode}):\n{tail}"
    return ""


@pytest.fixture(scope="module")
def browser():
    why = _install_chromium()
    if why:
        pytest.skip(f"no headless Chromium: {why}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


# ---------------------------------------------------------------- what the browser saw
@dataclass
class Seen:
    title: str
    h1: str
    headings: list[tuple[str, bool]]  # every <h2>: text, visible
    images: list[dict]  # every <img>: complete, naturalWidth, naturalHeight, figure (its <figure> id)
    nav_links: int
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return ([f"console.{t}: {x}" for t, x in self.console if t == "error"]
                + [f"page error: {e}" for e in self.page_errors]
                + [f"request failed: {r}" for r in self.failed_requests])


def open_page(browser: Browser, path: Path) -> Seen:
    context = browser.new_context()
    try:
        page = context.new_page()
        console, page_errors, failed = [], [], []
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(f"{r.url[:80]}: {r.failure}"))
        page.goto(path.resolve().as_uri(), wait_until="load")
        h2 = page.locator("h2")
        seen = Seen(
            title=page.title(),
            h1=page.locator("h1").first.inner_text() if page.locator("h1").count() else "",
            headings=[(h2.nth(i).inner_text().strip(), h2.nth(i).is_visible()) for i in range(h2.count())],
            images=page.evaluate("""() => Array.from(document.images).map(i => ({
                complete: i.complete, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
                figure: i.closest('figure') ? i.closest('figure').id : null}))"""),
            nav_links=page.locator("nav a").count(),
        )
        seen.console, seen.page_errors, seen.failed_requests = console, page_errors, failed
        return seen
    finally:
        context.close()


class _H2(HTMLParser):
    """The <h2> texts of the HTML source: the page's sections."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self._in = False

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._in = True
            self.texts.append("")

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in = False

    def handle_data(self, data):
        if self._in:
            self.texts[-1] += data


def sections_of(html_text: str) -> list[str]:
    p = _H2()
    p.feed(html_text)
    return [t.strip() for t in p.texts]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def problems(seen: Seen, html_path: Path, png_dir: Path) -> list[str]:
    """Everything wrong with the page as the browser showed it (empty: all good)."""
    out = list(seen.errors)
    if not seen.title.strip():
        out.append("no <title>")
    if seen.h1.strip() != seen.title.strip():
        out.append(f"<h1> {seen.h1!r} is not the title {seen.title!r}")
    sections = sections_of(html_path.read_text(encoding="utf-8"))
    if not sections:
        out.append("no section")
    if [t for t, _ in seen.headings] != sections:
        out.append(f"section headings shown {[t for t, _ in seen.headings]}, in the HTML {sections}")
    out += [f"section heading {t!r} not visible" for t, visible in seen.headings if not visible]
    if seen.nav_links != len(sections):
        out.append(f"{seen.nav_links} contents links for {len(sections)} sections")
    out += [f"image {i} (figure {im['figure']!r}) not loaded: {im}" for i, im in enumerate(seen.images)
            if not im["complete"] or im["naturalWidth"] <= 0 or im["naturalHeight"] <= 0]
    pngs = sorted(png_dir.glob("*.png"))
    if len(seen.images) != len(pngs):
        out.append(f"{len(seen.images)} images in the page, {len(pngs)} PNGs in {png_dir.name}/")
    shown = Counter((im["naturalWidth"], im["naturalHeight"]) for im in seen.images)
    files = Counter(png_size(p) for p in pngs)
    if shown != files:
        out.append(f"image sizes in the page {dict(shown)} differ from the PNG files' {dict(files)}")
    ids = sorted(str(im["figure"]) for im in seen.images)
    if ids != sorted(p.stem for p in pngs):
        out.append(f"figure ids {ids} are not the PNG names {[p.stem for p in pngs]}")
    return out


# ---------------------------------------------------------------- the pages
@pytest.fixture(scope="module")
def report_run(tmp_path_factory) -> Path:
    """A short in-process run (midday: curtailment and control have work to do) and its report."""
    from runner.report import write_report

    out = tmp_path_factory.mktemp("report_run") / "run"
    r = tecosim("run", str(DEFAULT), "--engine", "inprocess", "--out", str(out), *RUN)
    assert r.returncode == 0, f"run failed:\n{r.stdout}\n{r.stderr}"
    if not (out / "report.html").exists():  # tecosim run writes it (with write_report) unless told not to
        write_report(out, quiet=True)
    return out


@pytest.mark.feeder
def test_the_report_renders_in_chromium(browser, report_run):
    html_path = report_run / "report.html"
    seen = open_page(browser, html_path)
    assert seen.title.startswith("tecosim report")
    assert len(seen.images) >= 5, f"only {len(seen.images)} figures in the midday report"
    bad = problems(seen, html_path, report_run / "report")
    assert not bad, "report.html in Chromium:\n" + "\n".join(bad)


def _png(width_in: float, height_in: float) -> bytes:
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1, 2], [1.0, 1.04, 0.98])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_a_page_of_the_page_builder_renders_in_chromium(browser, tmp_path):
    figs = [html.Figure("first", "First figure", _png(4, 2.5), "A caption"),
            html.Figure("second", "Second <figure> & co", _png(3, 2))]
    (tmp_path / "report").mkdir()
    for f in figs:
        (tmp_path / "report" / f"{f.id}.png").write_bytes(f.png)
    text = html.page("A page", "made by runner.html.page", [
        ("Figures", figs),
        ("Numbers", [html.Table("A table", pd.DataFrame({"kpi": ["a", "b"], "value": [1.5, float("nan")]})),
                     html.Text("Text with <tags> & entities.")]),
    ])
    page_path = tmp_path / "page.html"
    page_path.write_text(text, encoding="utf-8")
    seen = open_page(browser, page_path)
    assert seen.title == "A page"
    assert [t for t, _ in seen.headings] == ["Figures", "Numbers"]
    assert [(im["naturalWidth"], im["naturalHeight"]) for im in seen.images] == [(400, 250), (300, 200)]
    bad = problems(seen, page_path, tmp_path / "report")
    assert not bad, "\n".join(bad)


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    """A console error, a script error, a missing and a broken image are all reported."""
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "x.png").write_bytes(_png(2, 2))
    page_path = tmp_path / "broken.html"
    page_path.write_text(
        "<!DOCTYPE html><html><head><title>Broken</title></head><body><h1>Broken</h1>"
        "<nav><a href='#s0'>A</a></nav><section id='s0'><h2>A</h2>"
        "<figure id='x'><img src='missing.png'></figure>"
        "<img src='data:image/png;base64,bm90IGEgcG5n'>"
        "<h2 style='display:none'>Hidden</h2></section>"
        "<script>console.error('something broke'); undefinedFunction();</script></body></html>",
        encoding="utf-8")
    bad = "\n".join(problems(open_page(browser, page_path), page_path, tmp_path / "report"))
    for expected in ("console.error: something broke", "page error:", "request failed:", "not loaded",
                     "'Hidden' not visible", "1 contents links for 2 sections", "2 images in the page, 1 PNGs"):
        assert expected in bad, f"{expected!r} not reported in:\n{bad}"
