"""Tables and figures from run folders; the results chapter renders from runs made here."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest

from serlib.errors import SerlibError
from serlib.results import (
    beside_label,
    beside_runs,
    confusion_table,
    fold_table,
    load_run,
    load_runs,
    plot_confusion,
    plot_confusion_pair,
    plot_learning_curves,
    provenance,
    table1,
    table4,
)
from tests.fake_runs import write_fake_grid, write_fake_run

matplotlib.use("Agg")
BOOK = Path(__file__).resolve().parents[1] / "book"


def test_tables_from_runs(tmp_path):
    runs = load_runs(write_fake_grid(tmp_path))
    t1 = table1(runs)
    assert "Satt et al. (2017)" in t1.index and "Ours: MFCC + focal loss" in t1.index
    summary = runs[("mfcc", "focal")].summary
    assert t1.loc["Ours: MFCC + focal loss", "WA"] == \
        f"{100 * summary['wa_mean']:.1f} ± {100 * summary['wa_std']:.1f}"
    t4 = table4(runs)
    assert len(t4) == 4 and t4.loc[("mfcc", "focal"), "paper UA"] == 66.7
    confusion = confusion_table(runs[("mfcc", "softmax")])
    np.testing.assert_allclose(confusion.sum(axis=1), 100, atol=0.3)
    assert list(confusion.index) == ["neu", "hap", "sad", "ang"]
    assert len(fold_table(runs[("mfcc", "softmax")])) == 2


def test_strong_recipe_and_baselines_stand_beside_the_paper_grid(tmp_path):
    runs_dir = write_fake_grid(tmp_path)
    write_fake_run(runs_dir / "baseline_logreg", feature="mfcc", loss="softmax", seed=7)
    write_fake_run(runs_dir / "spectrogram_focal_strong", feature="spectrogram", loss="focal",
                   seed=8)
    write_fake_run(runs_dir / "mfcc_focal_unfinished_strong", feature="mfcc", loss="focal")
    (runs_dir / "mfcc_focal_unfinished_strong" / "summary.json").unlink()
    beside = beside_runs(runs_dir)
    assert list(beside) == ["spectrogram_focal_strong", "baseline_logreg"]   # finished only
    labels = [beside_label(name, run) for name, run in beside.items()]
    assert labels == ["Ours: Spectrogram + focal loss, strong recipe",
                      "Baseline (measured): logistic regression on MFCC mean and std"]
    t1 = table1(load_runs(runs_dir), beside)
    assert list(t1.index[-4:]) == ["Ours: Spectrogram + focal loss", "Ours: MFCC + focal loss",
                                   *labels]
    assert (t1.loc[labels, "source"] == "this build").all()


def test_provenance_labels_generated_corpus(tmp_path):
    run = load_run(write_fake_run(tmp_path / "r", feature="mfcc", loss="focal"))
    line = provenance(run, profile="smoke")
    assert "generated IEMOCAP-shaped corpus (not IEMOCAP)" in line
    for needle in ("2-fold stratified", "profile: smoke", "commit: abc123"):
        assert needle in line


def test_figures(tmp_path):
    run = load_run(write_fake_run(tmp_path / "r", feature="mfcc", loss="focal"))
    fig = plot_learning_curves(run)
    assert len(fig.axes) == 2
    fig.canvas.draw()                    # the legend sits right of the data, not on it
    assert fig.axes[0].get_legend() is None
    legend = fig.axes[1].get_legend()
    assert legend.get_window_extent().x0 >= fig.axes[1].get_window_extent().x1
    assert len(plot_confusion_pair(confusion_table(run), confusion_table(run), title="x").axes) == 2
    ax = plot_confusion(confusion_table(run), title="mfcc + focal")
    assert ax.get_title() == "mfcc + focal" and len(ax.texts) == 16  # one annotation per cell
    with pytest.raises(SerlibError, match=r"shape \(3, 4\)"):
        plot_confusion(np.zeros((3, 4)), title="bad")


def test_missing_files_are_named(tmp_path):
    folder = write_fake_run(tmp_path / "r", feature="mfcc", loss="focal")
    (folder / "history.csv").unlink()
    with pytest.raises(SerlibError, match=r"history\.csv is missing"):
        load_run(folder)
    with pytest.raises(SerlibError, match="no finished run folder"):
        load_runs(tmp_path / "r" / "fold_1")


def test_results_chapter_renders_from_runs(tmp_path):
    import nbformat
    import papermill

    runs = write_fake_grid(tmp_path / "runs")
    out = tmp_path / "06_results.ipynb"
    papermill.execute_notebook(str(BOOK / "06_results.ipynb"), str(out), kernel_name="python3",
                               parameters={"runs_dir": str(runs), "profile": "test"},
                               progress_bar=False, cwd=str(tmp_path))
    text = "\n".join(str(o.get("data", o.get("text", "")))
                     for cell in nbformat.read(out, as_version=4).cells
                     for o in cell.get("outputs", []))
    assert "Ours: MFCC + focal loss" in text and "Satt et al. (2017)" in text
    assert "not IEMOCAP results" in text  # generated-corpus results are labelled
    assert "profile: test" in text and "image/png" in text


def test_recall_change_table_follows_the_confusions_and_the_paper(tmp_path):
    from serlib import paper
    from serlib.results import load_runs, recall_change_table

    runs = load_runs(write_fake_grid(tmp_path / "runs"))
    soft, focal = runs[("mfcc", "softmax")], runs[("mfcc", "focal")]
    table = recall_change_table(soft, focal)
    c_soft, c_focal = (np.asarray(r.summary["confusion"], float) for r in (soft, focal))
    k = 1   # happiness
    expected = 100 * (c_focal[k, k] / c_focal[k].sum() - c_soft[k, k] / c_soft[k].sum())
    assert table.loc["happiness", "change (points)"] == round(expected, 1)
    assert table.loc["happiness", "paper change (points)"] == round(52.0 - 25.2, 1)
    assert table.loc["anger", "test clips"] == int(c_focal[3].sum())
    assert list(table.index) == list(paper.TABLE2.index)


def test_seeds_pool_into_tables_with_wall_time_and_device(tmp_path):
    import json

    from serlib.results import load_seeded_runs, seed_runs

    runs_dir = write_fake_grid(tmp_path / "runs")
    for seed in (1, 2):
        write_fake_run(runs_dir / f"mfcc_focal_seed{seed}", feature="mfcc", loss="focal",
                       seed=10 + seed)
    write_fake_run(runs_dir / "mfcc_focal_strong", feature="mfcc", loss="focal", seed=5)
    assert [r.path.name for r in seed_runs(runs_dir, "mfcc_focal")] == [
        "mfcc_focal", "mfcc_focal_seed1", "mfcc_focal_seed2"]      # not the strong one
    runs = load_seeded_runs(runs_dir)
    assert len(runs[("mfcc", "focal")]) == 3 and len(runs[("mfcc", "softmax")]) == 1
    # wall time and device from summary.json; "-" on old runs without them
    for seed, folder in enumerate(["mfcc_focal", "mfcc_focal_seed1", "mfcc_focal_seed2"]):
        path = runs_dir / folder / "summary.json"
        summary = json.loads(path.read_text())
        summary.update(wall_seconds=110.0 + 10 * seed, device="cuda:0 (NVIDIA H200)")
        path.write_text(json.dumps(summary))
    runs = load_seeded_runs(runs_dir)
    t4 = table4(runs)
    ours = t4.loc[("mfcc", "focal")]
    ua = np.array([m["ua"] for r in runs[("mfcc", "focal")] for m in r.folds])
    assert ours["ours UA"] == f"{100 * ua.mean():.1f} ± {100 * ua.std(ddof=1):.1f}"
    assert ours["seeds x folds"] == "3 x 2"
    assert ours["wall time"] == "6.0 min" and ours["device"] == "cuda:0 (NVIDIA H200)"
    assert t4.loc[("mfcc", "softmax"), "wall time"] == "-"
    t1 = table1(runs)
    assert t1.loc["Ours: MFCC + focal loss", "wall time"] == "6.0 min"
    assert t1.loc["Satt et al. (2017)", "wall time"] == ""


def test_confusion_change_comes_from_exact_counts(tmp_path):
    from serlib.metrics import confusion_percent
    from serlib.results import confusion_change

    runs = load_runs(write_fake_grid(tmp_path / "runs"))
    soft, focal = runs[("mfcc", "softmax")], runs[("mfcc", "focal")]
    exact = (confusion_percent(np.asarray(focal.summary["confusion"]))
             - confusion_percent(np.asarray(soft.summary["confusion"])))
    np.testing.assert_allclose(confusion_change(soft, focal), exact)
    rounded = confusion_table(focal).to_numpy() - confusion_table(soft).to_numpy()
    assert not np.allclose(rounded, exact, atol=1e-9)     # the old way rounded first
