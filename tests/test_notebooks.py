"""Committed chapters: no outputs, kernel python3, a documented parameters cell."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def test_there_are_chapters():
    assert [p.stem for p in NOTEBOOKS] == [
        "02_data_selection", "03_features", "04_model_and_focal_loss", "05_training",
        "06_results", "06b_verdicts", "07_speaker_leakage", "08_imbalance", "08b_calibration",
        "08c_controlled_imbalance", "09_using_the_model"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_clean_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, cell.source[:40]
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    # every parameter is named in the chapter's introduction, for papermill users
    intro = nb.cells[0].source
    for line in tagged[0].source.splitlines():
        name = line.split("=")[0].strip()
        if name and not name.startswith("#"):
            assert f"`{name}`" in intro, name


def test_toc_lists_every_page():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {toc["root"]}
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            files.add(chapter["file"])
            files.update(s["file"] for s in chapter.get("sections", []))
    pages = {f"book/{p.stem}" for p in (ROOT / "book").glob("*.ipynb")}
    pages |= {f"book/{p.stem}" for p in (ROOT / "book").glob("*.md") if p.stem != "build_info"}
    assert pages == files
