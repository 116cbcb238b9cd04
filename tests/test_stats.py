"""serlib.stats on constructed run folders with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES
from serlib.results import load_run
from serlib.stats import (
    compare_pooled,
    compare_runs,
    corrected_ttest,
    speaker_bootstrap,
    verdict,
    wilcoxon_p,
)
from tests.stats_runs import assign_folds, predict, utterances, write_run


@pytest.fixture(scope="module")
def table():
    return utterances(n_per_speaker=40, seed=0)


def _run(tmp_path, table, name, *, accuracy, seed=0, pred_seed=0, protocol="session",
         fold_seed=0, **kwargs):
    folds = assign_folds(table, protocol=protocol, seed=fold_seed)
    probs = predict(table, accuracy=accuracy, seed=pred_seed)
    return write_run(tmp_path / name, table, folds, probs, seed=seed, protocol=protocol,
                     **kwargs)


def test_identical_runs_differ_by_zero_with_p_one(tmp_path, table):
    a = _run(tmp_path, table, "a", accuracy=0.6)
    b = _run(tmp_path, table, "b", accuracy=0.6)          # same predictions
    c = compare_runs(a, b, n_resamples=200)
    for m in ("wa", "ua"):
        test = c.metric(m)
        assert test.mean_difference == 0 and test.pooled_difference == 0
        assert test.p_t == 1 and test.wilcoxon_p == 1
        assert test.ci == (0.0, 0.0)
    assert c.n == 5
    assert verdict(c, direction=1) == {"wa": "inconclusive", "ua": "inconclusive",
                                       "overall": "inconclusive"}


def test_constant_shift_is_detected_in_both_directions(tmp_path, table):
    a = load_run(_run(tmp_path, table, "a", accuracy=0.6))
    b = load_run(_run(tmp_path, table, "b", accuracy=0.6))
    for m in b.folds:                                     # +5 points on every fold
        m["wa"] += 0.05
        m["ua"] += 0.05
    c = compare_runs(a, b, n_resamples=200)
    assert c.ua.mean_difference == pytest.approx(0.05)
    assert c.ua.t == np.inf and c.ua.p_t == 0
    assert verdict(c, direction=1)["overall"] == "agrees"
    assert verdict(c, direction=-1)["overall"] == "contradicts"


def test_corrected_t_matches_hand_computation():
    d = np.array([0.02, 0.05, -0.01, 0.04, 0.03])
    ratio = 0.25
    mean, var = d.mean(), d.var(ddof=1)
    t_hand = mean / np.sqrt((1 / 5 + ratio) * var)
    p_hand = 2 * (1 - sps.t.cdf(abs(t_hand), 4))
    t, p = corrected_ttest(d, test_train_ratio=ratio)
    assert t == pytest.approx(t_hand) and p == pytest.approx(p_hand)
    # the correction makes it more conservative than the plain paired t-test
    assert p > sps.ttest_1samp(d, 0).pvalue
    t0, p0 = corrected_ttest(d, test_train_ratio=0)
    assert t0 == pytest.approx(sps.ttest_1samp(d, 0).statistic)


def test_compare_runs_uses_fold_sizes_for_the_ratio(tmp_path, table):
    a = _run(tmp_path, table, "a", accuracy=0.5)
    b = _run(tmp_path, table, "b", accuracy=0.7, pred_seed=1)
    c = compare_runs(a, b, n_resamples=200)
    # each session fold tests 80 of 400 utterances, trains on 310 + 10 validation
    assert c.test_train_ratio == pytest.approx(80 / 320)
    d = c.differences["d_ua"].to_numpy()
    assert c.ua.t == pytest.approx(d.mean() / np.sqrt((1 / 5 + 0.25) * d.var(ddof=1)))
    assert c.ua.wilcoxon_p == pytest.approx(sps.wilcoxon(d).pvalue)
    lo, hi = c.ua.ci
    assert lo < c.ua.pooled_difference < hi and lo > 0     # 20 points better: CI above 0


def test_repeated_seeds_pair_by_seed(tmp_path, table):
    a = [_run(tmp_path, table, f"a{s}", accuracy=0.5, seed=s, pred_seed=s) for s in (1, 0)]
    b = [_run(tmp_path, table, f"b{s}", accuracy=0.6, seed=s, pred_seed=10 + s)
         for s in (0, 1)]
    c = compare_runs(a, b, n_resamples=200)
    assert c.n == 10 and c.seeds == (0, 1)
    one = compare_runs(a[1], b[0], n_resamples=200)      # seed 0 alone
    assert np.allclose(c.differences.query("seed == 0")["d_ua"], one.differences["d_ua"])
    with pytest.raises(SerlibError, match="seeds"):
        compare_runs(a, b[:1])


def test_refuses_runs_whose_folds_differ(tmp_path, table):
    a = _run(tmp_path, table, "a", accuracy=0.6, protocol="stratified", fold_seed=0)
    b = _run(tmp_path, table, "b", accuracy=0.6, protocol="stratified", fold_seed=1)
    with pytest.raises(SerlibError, match="fold 1's test utterances differ"):
        compare_runs(a, b)
    s = _run(tmp_path, table, "s", accuracy=0.6, protocol="session")
    with pytest.raises(SerlibError, match="protocol differs"):
        compare_runs(a, s)
    part = table.iloc[::2].reset_index(drop=True)         # every session, half the clips
    fewer = write_run(tmp_path / "fewer", part, assign_folds(part, protocol="session"),
                      predict(part, accuracy=0.6, seed=0))
    with pytest.raises(SerlibError, match="different utterances"):
        compare_runs(s, fewer)
    other_seed = _run(tmp_path, table, "seed1", accuracy=0.6, seed=1)
    with pytest.raises(SerlibError, match="seeds"):
        compare_runs(s, other_seed)


def test_bootstrap_resamples_speakers_not_utterances():
    # two speakers; within each, the difference between the sides is fixed, so a speaker
    # resample can only take three values (AA, AB, BB); an utterance resample would take many
    rng = np.random.default_rng(0)
    rows = []
    for speaker, other_right in (("Ses01F", 0.9), ("Ses01M", 0.3)):
        for i in range(200):
            label = PAPER_CLASSES[i % 4]
            rows.append({"speaker": speaker, "label": label, "correct_ref": rng.random() < 0.5,
                         "correct_other": i % 10 < 10 * other_right})
    frame = pd.DataFrame(rows)
    out = speaker_bootstrap([frame], n_resamples=500, seed=0, level=0.95)
    values = np.unique(np.round(out["ua"][2], 12))
    assert len(values) <= 3
    # seeded: the same interval twice
    again = speaker_bootstrap([frame], n_resamples=500, seed=0, level=0.95)
    assert again["ua"][1] == out["ua"][1]


def test_wilcoxon_all_zero_is_p_one():
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(
        sps.wilcoxon([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).pvalue)


def test_compare_pooled_pairs_utterances_across_protocols(tmp_path, table):
    strat = _run(tmp_path, table, "strat", accuracy=0.8, protocol="stratified")
    sess = _run(tmp_path, table, "sess", accuracy=0.5, pred_seed=3, protocol="session")
    with pytest.raises(SerlibError):
        compare_runs(strat, sess)
    c = compare_pooled(strat, sess, n_resamples=300)
    assert c.paired_by == "speaker" and c.n == 10
    assert c.ua.pooled_difference < 0 and c.ua.ci[1] < 0
    assert c.ua.p == c.ua.wilcoxon_p < 0.05
    assert verdict(c, direction=-1)["ua"] == "agrees"     # session lower, as leakage predicts


# ----------------------------------------------------------------------------- logit adjustment
def test_logit_adjustment_tau_zero_keeps_predictions(tmp_path, table):
    from serlib.posthoc import logit_adjust

    run = load_run(_run(tmp_path, table, "a", accuracy=0.6))
    same = logit_adjust(run, tau=0.0)
    assert (same.predictions["predicted"] == run.predictions["predicted"]).all()
    for m0, m1 in zip(run.folds, same.folds, strict=True):
        assert m1["ua"] == pytest.approx(m0["ua"]) and m1["wa"] == pytest.approx(m0["wa"])
        assert m1["n_train"] == m0["n_train"]
    c = compare_runs(run, same, n_resamples=100)          # pairs with its source
    assert c.ua.mean_difference == 0


def test_logit_adjustment_uses_training_fold_priors(tmp_path, table):
    from serlib.posthoc import logit_adjust, training_priors, write_run

    run = load_run(_run(tmp_path, table, "a", accuracy=0.6))
    priors = training_priors(run.predictions)
    k = 2
    outside = run.predictions[run.predictions["fold"] != k]["label"].value_counts(
        normalize=True)
    assert priors.loc[k].to_dict() == pytest.approx(outside.reindex(PAPER_CLASSES).to_dict())
    tau = 1.0
    adjusted = logit_adjust(run, tau=tau)
    row = run.predictions.iloc[7]
    p = row[[f"p_{c}" for c in PAPER_CLASSES]].to_numpy(dtype=float)
    expected = PAPER_CLASSES[int(np.argmax(np.log(p) - tau * np.log(
        priors.loc[row["fold"]].to_numpy())))]
    assert adjusted.predictions.iloc[7]["predicted"] == expected
    # the adjustment moves predictions toward the rare classes
    rare = adjusted.predictions["predicted"].isin(["happiness", "anger"]).mean()
    assert rare > run.predictions["predicted"].isin(["happiness", "anger"]).mean()
    folder = write_run(adjusted, tmp_path / "adjusted")
    back = load_run(folder)
    assert back.summary["posthoc"]["tau"] == tau
    assert back.summary["ua_mean"] == pytest.approx(adjusted.summary["ua_mean"])
    with pytest.raises(SerlibError, match="tau"):
        logit_adjust(run, tau=-1)
