"""The rendered book in a real browser: headless Chromium on pages served from 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading

import pytest

pytestmark = pytest.mark.slow

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
         "--window-size=1280,2000", "--virtual-time-budget=15000"]


@pytest.fixture(scope="module")
def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("Chromium is not installed; .ci/run installs it (apt-get install chromium)")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def server(built_book):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(built_book))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def browse(chromium, tmp_path, url, *extra):
    profile = tmp_path / "chromium-profile"
    result = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return result.stdout


def assert_not_blank(png):
    import numpy as np
    from PIL import Image

    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 2000)
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    ink = float((pixels.sum(axis=1) < 600).mean())
    colours = len(np.unique(pixels, axis=0))
    assert ink > 0.02, f"{png}: {ink:.1%} non-white pixels"
    assert colours > 50, f"{png}: only {colours} colours"


@pytest.mark.parametrize("page", ["index.html", "book/06_results.html",
                                  "book/04_model_and_focal_loss.html"])
def test_screenshot_is_not_blank(chromium, server, tmp_path, page):
    png = tmp_path / "page.png"
    browse(chromium, tmp_path, f"{server}/{page}", f"--screenshot={png}")
    assert png.is_file(), f"no screenshot of {page}"
    assert_not_blank(png)


def test_results_page_shows_table_1(chromium, server, tmp_path):
    dom = browse(chromium, tmp_path, f"{server}/book/06_results.html", "--dump-dom")
    assert "Table 1" in dom
    table = dom[dom.index("Satt et al. (2017)") - 3000:]
    assert "<table" in dom and "Ours: MFCC + focal loss" in table
    assert "not IEMOCAP results" in dom


def test_equations_are_typeset(chromium, server, tmp_path):
    dom = browse(chromium, tmp_path, f"{server}/book/04_model_and_focal_loss.html",
                 "--dump-dom")
    assert "<mjx-container" in dom, "MathJax did not typeset the equations (offline?)"


@pytest.mark.parametrize("page, must_show", [
    ("book/07_speaker_leakage.html", ("session", "stratified")),
    ("book/08_imbalance.html", ("inverse class weights", "gamma")),
    ("book/08b_calibration.html", ("ECE", "temperature", "Reliability")),
    ("book/08c_controlled_imbalance.html", ("balanced", "ratio10", "logit adjustment")),
])
def test_study_pages_show_their_tables_and_figures(chromium, server, tmp_path, page, must_show):
    dom = browse(chromium, tmp_path, f"{server}/{page}", "--dump-dom")
    assert dom.count("<table") >= 1, f"{page}: no table"
    assert "<img" in dom, f"{page}: no figure"
    for text in must_show:
        assert text in dom, f"{page}: {text!r} not on the page"
    assert any(word in dom for word in ("agrees", "contradicts", "inconclusive")), \
        f"{page}: no verdict"
    png = tmp_path / "study.png"
    browse(chromium, tmp_path, f"{server}/{page}", f"--screenshot={png}")
    assert_not_blank(png)


def test_verdicts_page_has_a_row_per_claim(chromium, server, tmp_path):
    dom = browse(chromium, tmp_path, f"{server}/book/06b_verdicts.html", "--dump-dom")
    assert "<table" in dom, "the verdicts page has no table"
    table = dom[dom.index("<table"):]
    for claim in ("Focal loss beats softmax (Spectrogram)", "Focal loss beats softmax (MFCC)",
                  "raises the rare classes", "MFCC beats the spectrogram",
                  "Satt et al. (2017)", "Yenigalla et al. (2018)", "Tashev (2015)",
                  "Speaker leakage inflates the score", "Focal loss (focal, gamma 2) beats",
                  "beats logistic regression", "The strong recipe beats the paper"):
        assert claim in table, f"no row for {claim!r} on the verdicts page"
    for column in ("MDE (points)", "p (Holm)", "verdict", "chapter"):
        assert column in table, column
    assert any(word in table for word in ("agrees", "contradicts", "inconclusive"))
    png = tmp_path / "verdicts.png"
    browse(chromium, tmp_path, f"{server}/book/06b_verdicts.html", f"--screenshot={png}")
    assert_not_blank(png)
