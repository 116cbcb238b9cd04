"""Shared fixtures: a tiny generated IEMOCAP-shaped corpus and its paper selection.

Session-scoped so that the corpus is generated once per test run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
EMODB = SHARED / "data" / "emodb"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Root of a tiny generated IEMOCAP-shaped tree (``IEMOCAP_full_release`` layout)."""
    from serlib.corpora.synthetic import generate_corpus

    out = tmp_path_factory.mktemp("synthetic")
    return generate_corpus(out, seed=0, size="tiny", progress=False)


@pytest.fixture(scope="session")
def synthetic_selection(synthetic_root):
    """The paper's selection (defaults) of the tiny generated corpus, as a DataFrame."""
    from serlib.corpora import load_iemocap, select_utterances

    return select_utterances(load_iemocap(synthetic_root))


@pytest.fixture(scope="session")
def emodb_manifest() -> Path:
    """The real EmoDB copy beside the project; skips when ../shared is absent."""
    manifest = EMODB / "manifest.csv"
    if not manifest.exists():
        pytest.skip("../shared/data/emodb is absent")
    return manifest


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """HTML of an executed book: $SERLIB_BOOK_HTML if set (CI points it at the README's
    smoke build), else a build of the tiny profile made here (about two minutes)."""
    import os

    from serlib.book import build_book

    given = os.environ.get("SERLIB_BOOK_HTML")
    if given:
        html = Path(given)
        assert (html / "index.html").is_file(), f"SERLIB_BOOK_HTML={given} has no index.html"
        return html
    return build_book(profile="tiny", out_dir=tmp_path_factory.mktemp("book"), quiet=True)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for a module's tests: tiny networks train faster, and are
    immune to a busy machine's OpenMP spin-waits (2 threads made them 5-20x slower under
    load). Modules ask for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """48 short tone clips (6 speakers x 8) as a selection CSV, one copy per test module."""
    from tests.test_cli_cv import write_wav_selection

    return write_wav_selection(tmp_path_factory.mktemp("tones"))
