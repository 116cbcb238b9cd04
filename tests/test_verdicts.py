"""serlib.verdicts: one row per claim, on fake run folders of a whole build."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serlib.studies import DEFAULT_STUDIES
from serlib.verdicts import COLUMNS, verdict_note, verdict_table
from tests.stats_runs import (
    EMODB_SHARES,
    SHARES,
    assign_folds,
    predict,
    utterances,
    write_run,
    write_study_runs,
)

BASE = {"gamma": 2.0, "protocol": "stratified", "seed": 0}
SEEDS = [0, 1, 2]


def _build(runs_dir, *, corpus="generated"):
    """A whole build's runs; on "emodb" with EmoDB's class shares (anger the largest)."""
    shares = EMODB_SHARES if corpus == "emodb" else SHARES
    rare = ("sadness",) if corpus == "emodb" else ("happiness", "anger")
    write_study_runs(runs_dir, studies=DEFAULT_STUDIES, base_training=BASE, seeds=SEEDS,
                     shares=shares, rare=rare)
    table = utterances(n_per_speaker=40, seed=0, shares=shares)
    for seed in SEEDS:
        suffix = f"_seed{seed}" if seed else ""
        folds = assign_folds(table, protocol="stratified", seed=seed)
        for name, accuracy in (("baseline_logreg", 0.85), ("spectrogram_focal_strong", 0.9)):
            folder = write_run(runs_dir / f"{name}{suffix}", table, folds,
                               predict(table, accuracy=accuracy, seed=50 + seed),
                               protocol="stratified", seed=seed, loss="focal")
            if name.startswith("baseline"):
                (folder / "config.json").write_text(json.dumps(
                    {"baseline": {"model": "logreg", "seed": seed}}))
    if corpus != "generated":
        for summary in runs_dir.rglob("summary.json"):
            data = json.loads(summary.read_text())
            data["corpus"] = corpus
            summary.write_text(json.dumps(data))
    return runs_dir


def _number(text: str) -> float:
    return 0.0 if text.startswith("<") else float(text)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    runs_dir = _build(tmp_path_factory.mktemp("runs"))
    return verdict_table(runs_dir, studies=DEFAULT_STUDIES, training=BASE, seeds=SEEDS,
                         n_resamples=50)


def test_one_row_per_claim_with_every_column(table):
    assert list(table.columns) == list(COLUMNS)
    claims = list(table["claim"])
    for needle in ("Focal loss beats softmax (Spectrogram)", "Focal loss beats softmax (MFCC)",
                   "Focal loss raises the rare classes' recall (MFCC)",
                   "MFCC beats the spectrogram (focal loss)",
                   "The proposed model beats Lee & Tashev (2015)",
                   "Speaker leakage inflates the score (mfcc + focal)",
                   "The ResNet (paper's recipe, MFCC + focal) beats logistic regression",
                   "The strong recipe beats the paper's recipe"):
        assert any(c.startswith(needle) for c in claims), needle
    # focal against each other remedy and the best of them
    remedies = table[table["claim"].str.startswith("Focal loss (focal, gamma 2) beats")]
    assert len(remedies) == 4
    assert remedies["claim"].str.contains("the best other remedy").sum() == 1
    # focal vs softmax on both metrics, per feature
    mfcc = table[table["claim"] == "Focal loss beats softmax (MFCC)"]
    assert sorted(mfcc["metric"]) == ["UA", "WA"]
    assert (table["by"].isin(["paper", "ours"])).all()


def test_literature_rows_are_not_testable_on_another_corpus(table):
    lit = table[table["claim"].str.contains("Tashev|Satt|Yenigalla")]
    assert len(lit) == 3 and (lit["verdict"] == "not testable here").all()
    assert lit["note"].str.contains("IEMOCAP").all()
    assert lit["protocol"].str.contains("speaker-independent|utterances").all()


def test_verdict_follows_the_interval_and_holm_is_applied(table):
    tested = table[table["p (one-sided)"] != ""]
    assert len(tested) >= 15
    for _, row in tested.iterrows():
        effect, interval = row["effect [CI] (points)"].split(" [")
        lo, hi = (float(x) for x in interval.rstrip("]").split(", "))
        assert lo <= float(effect) <= hi
        if lo > 0 or hi < 0:
            assert row["verdict"] != "inconclusive", row["claim"]
        if row["verdict"] == "inconclusive":
            assert lo <= 0.05 and hi >= -0.05
        p, p_holm = row["p (one-sided)"], row["p (Holm)"]
        assert _number(p_holm) >= _number(p)
        assert float(row["MDE (points)"]) > 0
    # the fake session runs are worse: leakage agrees; the fake baseline beats the ResNet
    leak = tested[tested["claim"].str.startswith("Speaker leakage")]
    assert (leak["verdict"] == "agrees").all()
    resnet = tested[tested["claim"].str.startswith("The ResNet")]
    assert resnet.set_index("metric").loc["WA", "verdict"] == "contradicts"
    assert "holds after Holm" in table and set(tested["holds after Holm"]) <= {"yes", "no"}
    assert "90 % t-interval" in verdict_note(alpha=0.05, seeds=SEEDS)


def test_on_emodb_the_strong_recipe_is_optimistic_and_anger_is_largest(tmp_path):
    runs_dir = _build(tmp_path / "runs", corpus="emodb")
    table = verdict_table(runs_dir, studies=DEFAULT_STUDIES, training=BASE, seeds=SEEDS,
                          n_resamples=50)
    strong = table[table["claim"].str.startswith("The strong recipe")]
    assert len(strong) == 2 and strong["note"].str.contains("optimistic").all()
    assert (table["corpus"] == "EmoDB").all()
    rare = table[table["claim"].str.startswith("Focal loss raises the rare")].iloc[0]
    assert "sadness" in rare["metric"] and "anger" not in rare["metric"]
    assert "the largest is anger" in rare["note"]
    leak = table[table["claim"].str.startswith("Speaker leakage")]
    assert leak["protocol"].str.contains("speaker folds").all()
    assert not leak["protocol"].str.contains("session").any()


def test_missing_runs_are_said_not_hidden(tmp_path):
    runs_dir = _build(tmp_path / "runs")
    import shutil

    for name in ("baseline_logreg", "baseline_logreg_seed1", "baseline_logreg_seed2"):
        shutil.rmtree(runs_dir / name)
    shutil.rmtree(runs_dir / "mfcc_softmax_seed2")
    table = verdict_table(runs_dir, studies=DEFAULT_STUDIES, training=BASE, seeds=SEEDS,
                          n_resamples=50)
    assert not table["claim"].str.startswith("The ResNet").any()
    mfcc = table[table["claim"] == "Focal loss beats softmax (MFCC)"]
    assert len(mfcc) == 1 and mfcc["verdict"].iloc[0] == "not paired"
    assert np.all(table.loc[table["verdict"] == "not paired", "effect [CI] (points)"] == "—")
