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
    holm,
    infer,
    minimum_detectable_effect,
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
        assert test.ci == (0.0, 0.0) and test.bootstrap_ci == (0.0, 0.0)
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
    lo, hi = c.ua.ci                                       # the t-interval of the mean
    half = sps.t.ppf(0.975, 4) * np.sqrt((1 / 5 + 0.25) * d.var(ddof=1))
    assert (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half))
    assert lo > 0                                          # 20 points better: above 0
    blo, bhi = c.ua.bootstrap_ci                           # descriptive, of the pooled one
    assert blo < c.ua.pooled_difference < bhi and blo > 0


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
    assert c.ua.pooled_difference < 0 and c.ua.bootstrap_ci[1] < 0
    d = c.differences["d_ua"].to_numpy()                   # paired t over the 10 speakers
    assert c.ua.mean_difference == pytest.approx(d.mean())
    assert c.ua.p == pytest.approx(sps.ttest_1samp(d, 0).pvalue) and c.ua.p < 0.05
    assert c.ua.ci[1] < 0 and c.ua.wilcoxon_p == pytest.approx(sps.wilcoxon(d).pvalue)
    assert verdict(c, direction=-1)["ua"] == "agrees"     # session lower, as leakage predicts


# ----------------------------------------------------------------------------- one inference
def _shifted(tmp_path, table, name, *, shifts, seeds=(0,)):
    """Pairs of runs whose fold UA / WA differences are exactly ``shifts`` (per fold)."""
    import json

    out = []
    for side in ("ref", "oth"):
        runs = []
        for s in seeds:
            folder = _run(tmp_path, table, f"{name}_{side}{s}", accuracy=0.6, seed=s)
            if side == "oth":
                summary = json.loads((folder / "summary.json").read_text())
                for m, shift in zip(summary["folds"], shifts, strict=True):
                    m["wa"] += shift
                    m["ua"] += shift
                (folder / "summary.json").write_text(json.dumps(summary))
                for m in summary["folds"]:
                    (folder / f"fold_{m['fold']}" / "metrics.json").write_text(json.dumps(m))
            runs.append(folder)
        out.append(runs)
    return out


@pytest.mark.parametrize("shifts", [
    [0.02, 0.05, -0.01, 0.04, 0.03],          # clearly up
    [0.04, 0.06, -0.05, 0.03, 0.01],          # up, not clearly
    [0.001, -0.03, 0.02, -0.01, 0.015],       # nothing
    [-0.06, -0.04, -0.05, -0.07, -0.03],      # clearly down
    [0.09, -0.02, 0.05, 0.06, 0.00],          # near the edge
])
def test_interval_excludes_zero_exactly_when_the_test_rejects(tmp_path, table, shifts):
    ref, oth = _shifted(tmp_path, table, "x", shifts=shifts)
    c = compare_runs(ref, oth, n_resamples=50)
    test = c.ua
    assert test.mean_difference == pytest.approx(np.mean(shifts))     # the effect tested
    for alpha in (0.01, 0.05, 0.1, 0.2):
        lo, hi = test.interval(1 - alpha)
        assert (test.p_value("two-sided") < alpha) == (lo > 0 or hi < 0)
        for direction in (1, -1):
            inf = infer(test, direction=direction, alpha=alpha)
            lo, hi = inf.interval
            assert inf.level == pytest.approx(1 - 2 * alpha)
            excludes = lo > 0 or hi < 0
            assert (inf.verdict != "inconclusive") == excludes
            claimed_side = lo > 0 if direction == 1 else hi < 0
            assert (inf.verdict == "agrees") == claimed_side
    # the stored interval is the comparison level's
    assert test.ci == pytest.approx(test.interval(c.level))


def test_one_sided_p_is_half_the_two_sided_in_the_direction_of_the_effect(tmp_path, table):
    ref, oth = _shifted(tmp_path, table, "y", shifts=[0.04, 0.07, -0.01, 0.03, 0.05])
    test = compare_runs(ref, oth, n_resamples=50).ua
    assert test.mean_difference > 0
    two = test.p_value("two-sided")
    assert test.p_value("greater") == pytest.approx(two / 2)
    assert test.p_value("less") == pytest.approx(1 - two / 2)
    d = np.array([0.04, 0.07, -0.01, 0.03, 0.05])
    _, p_hand = corrected_ttest(d, test_train_ratio=test.test_train_ratio,
                                alternative="greater")
    assert test.p_value("greater") == pytest.approx(p_hand)
    # a two-sided p between alpha and 2 alpha: inconclusive two-sided, agrees one-sided
    alpha = 0.75 * two
    assert two / 2 < alpha < two < 0.5
    assert infer(test, direction=1, alpha=alpha).verdict == "agrees"
    assert infer(test, direction=-1, alpha=alpha).verdict == "contradicts"


def test_minimum_detectable_effect_shrinks_with_more_seeds():
    kwargs = dict(sd=0.04, test_train_ratio=0.25, alpha=0.05)
    one, three, ten = (minimum_detectable_effect(n=5 * s, **kwargs) for s in (1, 3, 10))
    assert one > three > ten > 0
    # the correction sets a floor: never below the z-test bound on sd * sqrt(ratio)
    floor = (sps.norm.ppf(0.95) + sps.norm.ppf(0.8)) * 0.04 * np.sqrt(0.25)
    assert ten > floor
    # power 0.8 at the MDE, checked by simulation of the noncentral t
    mde = minimum_detectable_effect(n=15, **kwargs)
    se = 0.04 * np.sqrt(1 / 15 + 0.25)
    assert sps.nct.sf(sps.t.ppf(0.95, 14), 14, mde / se) == pytest.approx(0.8, abs=1e-6)
    assert minimum_detectable_effect(n=5, sd=0.0) == 0.0
    with pytest.raises(SerlibError, match="n=1"):
        minimum_detectable_effect(n=1, sd=0.1)


def test_minimum_detectable_effect_of_a_comparison_with_three_seeds(tmp_path, table):
    shifts = [0.04, 0.06, -0.05, 0.03, 0.01]
    one = compare_runs(*_shifted(tmp_path, table, "s1", shifts=shifts), n_resamples=50)
    three = compare_runs(*_shifted(tmp_path, table, "s3", shifts=shifts, seeds=(0, 1, 2)),
                         n_resamples=50)
    assert three.n == 15 and one.n == 5
    assert three.ua.sd == pytest.approx(np.std(shifts * 3, ddof=1))
    assert infer(three.ua, direction=1).mde < infer(one.ua, direction=1).mde


def test_holm_matches_the_step_down_rule():
    p = [0.01, 0.04, 0.03, 0.2, float("nan")]
    adjusted = holm(p)
    assert adjusted[:4] == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert np.isnan(adjusted[4])
    assert np.all(adjusted[:4] >= np.array(p[:4]))
    assert holm([]).size == 0


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
