"""serlib.report: the study chapters' tables and figures, on fake run folders of a study."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest

from serlib.errors import SerlibError
from serlib.report import (
    best_other_remedy,
    compare_rows,
    gamma_curve,
    leakage_table,
    load_study,
    minority_shift_table,
    paper_minority_shift,
    per_speaker_table,
    plot_gamma_curve,
    plot_per_speaker,
    remedy_table,
    verdict_sentence,
)
from serlib.stats import infer
from serlib.studies import DEFAULT_STUDIES, study_rows
from tests.stats_runs import write_study_runs

matplotlib.use("Agg")
BASE = {"gamma": 2.0, "protocol": "stratified", "seed": 0}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return write_study_runs(tmp_path_factory.mktemp("runs"), studies=DEFAULT_STUDIES,
                            base_training=BASE, seeds=[0, 1])


def _study(runs_dir, name):
    rows = study_rows(DEFAULT_STUDIES, name, base_training=BASE, seeds=[0, 1])
    return rows, load_study(runs_dir, rows)


def test_leakage_table_pairs_protocols_by_utterance(runs_dir):
    rows, runs = _study(runs_dir, "leakage")
    comparisons = compare_rows(rows, runs, alpha=0.05, direction=-1, n_resamples=200)
    assert len(comparisons) == 4
    c, v = comparisons["mfcc, focal, session"]
    assert c.paired_by == "speaker" and c.n == 10
    assert c.ua.ci[1] < 0 and v["overall"] == "agrees"   # the fake session runs are worse
    table = leakage_table(rows, runs, comparisons)
    assert list(table.index) == [("spectrogram", "softmax"), ("spectrogram", "focal"),
                                 ("mfcc", "softmax"), ("mfcc", "focal")]
    assert table.loc[("mfcc", "focal"), "paper UA"] == 66.7
    assert {"stratified UA", "session UA", "Δ UA [90 % CI]", "p UA (one-sided)", "MDE UA",
            "verdict UA", "verdict WA"} <= set(table.columns)
    text = verdict_sentence("MFCC + focal", c, v, claim="leakage inflates", alpha=0.05,
                            direction=-1)
    assert "agrees with" in text and "mean of 10 paired speaker differences" in text
    # the printed effect is the tested one, in points, with its 90 % interval
    inf = infer(c.ua, direction=-1, alpha=0.05)
    lo, hi = inf.interval
    assert f"UA {100 * inf.effect:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] points" in text
    assert table.loc[("mfcc", "focal"), "Δ UA [90 % CI]"] == (
        f"{100 * inf.effect:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    assert "bootstrap" not in text        # one interval per verdict: the one that decides
    assert "p = <" not in text            # "p < 0.001", never "p = < 0.001"
    expected = "p < 0.001" if inf.p < 0.001 else f"p = {inf.p:.3f}"
    assert f"one-sided {expected}," in text
    with pytest.raises(SerlibError, match="direction"):      # words must follow the numbers
        verdict_sentence("x", c, v, claim="leakage inflates", alpha=0.05, direction=1)


def _parse(cell: str) -> tuple[float, float, float]:
    effect, interval = cell.split(" [")
    lo, hi = interval.rstrip("]").split(", ")
    return float(effect), float(lo), float(hi)


def test_no_inconclusive_row_has_an_interval_that_excludes_zero(runs_dir):
    for name, direction in (("leakage", -1), ("imbalance", 1)):
        rows, runs = _study(runs_dir, name)
        comparisons = compare_rows(rows, runs, alpha=0.05, direction=direction,
                                   n_resamples=100)
        table = (leakage_table if name == "leakage" else remedy_table)(rows, runs, comparisons)
        checked = 0
        for _, row in table.iterrows():
            if row["verdict UA"] in ("", "reference"):
                continue
            for m in ("UA", "WA"):
                _, lo, hi = _parse(row[f"Δ {m} [90 % CI]"])
                if lo > 0 or hi < 0:      # one decimal: a bound of 0.0 stays ambiguous
                    assert row[f"verdict {m}"] != "inconclusive"
                    checked += 1
        assert checked > 0
        for c, v in comparisons.values():
            for m in ("ua", "wa"):
                inf = infer(c.metric(m), direction=direction, alpha=0.05)
                lo, hi = inf.interval
                assert (v[m] == "inconclusive") == (lo <= 0 <= hi)


def test_per_speaker_table_and_figure(runs_dir):
    rows, runs = _study(runs_dir, "leakage")
    table = per_speaker_table(runs["mfcc, focal, session"])
    assert len(table) == 10 and set(table["gender"]) == {"F", "M"}
    assert (table["utterances"] == 40).all()
    ax = plot_per_speaker(table, title="x")
    assert len(ax.patches) >= 10
    # the legend sits outside the data area (right of the axes)
    fig = ax.figure
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1


def test_remedy_table_against_softmax(runs_dir):
    rows, runs = _study(runs_dir, "imbalance")
    comparisons = compare_rows(rows, runs, alpha=0.05, direction=1, n_resamples=200)
    assert set(comparisons) == {r.label for r in rows if not r.reference}
    c, _ = comparisons["focal, gamma 2"]
    assert c.paired_by == "fold" and c.n == 10           # 2 seeds x 5 folds
    table = remedy_table(rows, runs, comparisons)
    assert table.loc["softmax", "verdict UA"] == "reference"
    assert "softmax + logit adjustment (tau 1)" in table.index
    assert {"neu %", "hap %", "sad %", "ang %", "p UA (one-sided)", "MDE UA",
            "verdict UA", "verdict WA"} <= set(table.columns)
    focal, other = best_other_remedy(rows, runs)
    assert runs[focal][0].summary["loss"] == "focal"
    assert runs[other][0].summary["loss"] == "softmax" and other != "softmax"


def test_gamma_curve_starts_at_softmax(runs_dir):
    rows, runs = _study(runs_dir, "imbalance")
    curve = gamma_curve(rows, runs, n_resamples=200)
    assert list(curve["gamma"]) == [0.0, 0.5, 1.0, 2.0, 5.0]
    assert (curve["low"] <= curve["UA %"]).all() and (curve["UA %"] <= curve["high"]).all()
    assert plot_gamma_curve(curve, title="x") is not None


def test_minority_shift_against_the_papers(runs_dir):
    shift = paper_minority_shift()
    assert shift["happiness"] == pytest.approx(52.0 - 25.2)
    assert shift["anger"] == pytest.approx(52.9 - 42.8)
    rows, runs = _study(runs_dir, "imbalance")
    table = minority_shift_table(rows, runs)
    assert table.index[0].startswith("paper")
    assert "test clips (hap / ang)" in table.columns
    anger_first = minority_shift_table(rows, runs, minority=("sadness",))
    assert "test clips (sad)" in anger_first.columns
    assert table.loc["focal, gamma 2", "Δ hap"] > 0          # the fake focal runs boost it
    assert np.isfinite(table["Δ ang"].astype(float)).all()


def test_recipe_comparison_pairs_each_run_and_names_the_best(tmp_path):
    from serlib.report import recipe_comparison
    from serlib.results import load_run
    from tests.stats_runs import assign_folds, predict, utterances, write_run

    table = utterances(seed=1)
    same = assign_folds(table, protocol="session")
    made = {}
    for i, (name, accuracy, folds) in enumerate([
            ("mfcc_focal", 0.45, same), ("mfcc_focal_strong", 0.95, same),
            ("baseline_logreg", 0.65, same),
            ("baseline_egemaps-svm", 0.7, assign_folds(table, protocol="stratified"))]):
        write_run(tmp_path / name, table, folds, predict(table, accuracy=accuracy, seed=i),
                  loss="focal")
        made[name] = load_run(tmp_path / name)
    # a baseline's folder records its seed as serlib.baselines writes it
    config = tmp_path / "baseline_logreg" / "config.json"
    config.write_text(json.dumps({"baseline": {"model": "logreg", "seed": 0}}))
    made["baseline_logreg"] = load_run(tmp_path / "baseline_logreg")
    reference = made.pop("mfcc_focal")
    frame, sentences = recipe_comparison(reference, made, n_resamples=200,
                                         labels={"mfcc_focal_strong": "strong"})
    assert list(frame.index) == ["paper recipe (mfcc_focal)", "strong", "baseline_logreg",
                                 "baseline_egemaps-svm"]
    strong_ua = 100 * made["mfcc_focal_strong"].summary["ua_mean"]
    assert frame.loc["strong", "UA %"].startswith(f"{strong_ua:.1f} ±")
    text = "\n".join(sentences)
    # against the paper's recipe: the strong recipe and logreg are paired and better
    assert "**strong** agrees with the claim that it beats the paper's recipe" in text
    # the strong recipe against each baseline; a baseline on other folds is never paired
    assert ("**strong against baseline_logreg** agrees with the claim that it beats the "
            "baseline") in text
    assert "**strong against baseline_egemaps-svm** is not paired" in text
    assert str(tmp_path) not in text                     # folder names, not build paths
    assert "cannot pair baseline_egemaps-svm with mfcc_focal_strong" in text
    assert sentences[-1].startswith("- Highest mean UA over seeds x folds here: **strong**")
    # the fake strong run is narrower than the recipe: said; a full-size one: not
    assert ("**strong** ran at width 8 for 3 epochs, not the recipe's 32 and 30" in text)
    full = made["mfcc_focal_strong"]
    full.summary.update(width=32, epochs=30)
    _, again = recipe_comparison(reference, {"mfcc_focal_strong": full}, n_resamples=50)
    assert not any("ran at width" in line for line in again)


@pytest.mark.parametrize("p, table, clause", [(0.0942, "0.094", "p = 0.094"),
                                              (0.0004, "< 0.001", "p < 0.001"),
                                              (float("nan"), "—", "p = —")])
def test_p_values_read_the_same_in_tables_and_sentences(p, table, clause):
    from serlib.report import _p_clause, format_p

    assert format_p(p) == table
    assert _p_clause(p) == clause


def test_mixed_verdicts_read_as_one_sentence(runs_dir, monkeypatch):
    """UA and WA verdicts that differ are named per metric after the claim (not 'is
    inconclusive about on UA and agrees with on WA the claim')."""
    import serlib.report as report

    rows, runs = _study(runs_dir, "leakage")
    c, _ = compare_rows(rows, runs, alpha=0.05, direction=-1,
                        n_resamples=200)["mfcc, focal, session"]
    monkeypatch.setattr(report, "verdict", lambda *a, **k: {"ua": "inconclusive",
                                                            "wa": "agrees"})
    text = report.verdict_sentence("MFCC + focal", c, claim="leakage inflates", alpha=0.05,
                                   direction=-1)
    assert text.startswith("**MFCC + focal** on the claim that leakage inflates: "
                           "inconclusive on UA, agrees on WA: UA ")
