"""serlib.imbalance: training parts subsampled to fixed class shares, seeded, test folds and
speaker folds untouched; the controlled-imbalance study's runs pair on folds and seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serlib.config import TrainConfig
from serlib.errors import SerlibError
from serlib.imbalance import (
    allocate,
    class_shares,
    feasible_runs,
    imbalance_ratio,
    subsample_training_part,
    target_counts,
    training_priors,
)
from serlib.labels import PAPER_CLASSES

STUDY = {"controlled_imbalance": {
    "shared": {"feature": "mfcc", "protocol": "session", "imbalance": ["balanced", "ratio10"],
               "imbalance_fraction": 0.4},
    "runs": [{"loss": "softmax"}, {"loss": "focal", "gamma": 2.0},
             {"loss": "softmax", "class_weights": "inverse"},
             {"loss": "softmax", "sampler": "balanced"}],
    "reference": {"loss": "softmax"},
    "posthoc": [{"method": "logit_adjustment", "of": {"loss": "softmax"}, "tau": 1.0}]}}
BASE = {"folds": 5, "epochs": 1, "width": 4, "batch_size": 16, "patience": 0,
        "device": "cpu", "gamma": 2.0}


def test_profiles_shares_and_ratios():
    assert class_shares("balanced") == pytest.approx((0.25,) * 4)
    assert class_shares("iemocap") == pytest.approx((0.488, 0.123, 0.269, 0.120), abs=1e-3)
    for name in ("balanced", "iemocap", "ratio10", "ratio2.5"):
        assert sum(class_shares(name)) == pytest.approx(1.0)
    assert imbalance_ratio("ratio10") == pytest.approx(10.0)
    assert imbalance_ratio("balanced") == pytest.approx(1.0)
    assert imbalance_ratio("iemocap") == pytest.approx(0.488 / 0.120, rel=1e-3)
    for bad in ("ratio0.5", "skewed", "none"):
        with pytest.raises(SerlibError, match="imbalance="):
            class_shares(bad)
    with pytest.raises(SerlibError, match="TrainConfig.imbalance"):
        TrainConfig(imbalance="ratio-3")


def test_allocation_is_exact_where_it_can_be_and_sums_to_the_total():
    assert allocate(1000, class_shares("iemocap")) == [488, 123, 269, 120]
    assert allocate(100, class_shares("balanced")) == [25, 25, 25, 25]
    for total in (7, 33, 101):
        counts = allocate(total, class_shares("ratio10"))
        assert sum(counts) == total
        ideal = np.array(class_shares("ratio10")) * total
        assert np.all(np.abs(np.array(counts) - ideal) < 1)


def _labels(counts, seed=0):
    labels = np.repeat(np.arange(4), counts)
    return np.random.default_rng(seed).permutation(labels)


def test_subsampling_hits_the_shares_exactly_and_is_seeded():
    labels = _labels([600, 300, 400, 300])
    train = np.arange(0, 1600, 1)[200:]                       # 1400 rows; 200 held out
    kept = subsample_training_part(train, labels, name="iemocap", fraction=1000 / 1400,
                                   seed=3, fold=1)
    assert np.bincount(labels[kept], minlength=4).tolist() == [488, 123, 269, 120]
    assert set(kept) <= set(train) and len(set(kept)) == len(kept)
    again = subsample_training_part(train, labels, name="iemocap", fraction=1000 / 1400,
                                    seed=3, fold=1)
    np.testing.assert_array_equal(kept, again)
    other = subsample_training_part(train, labels, name="iemocap", fraction=1000 / 1400,
                                    seed=4, fold=1)
    assert not np.array_equal(kept, other)
    # another profile, another size: exact again (700 rows, 175 per class)
    balanced = subsample_training_part(train, labels, name="balanced", fraction=0.5, seed=3,
                                       fold=1)
    assert np.bincount(labels[balanced], minlength=4).tolist() == [175] * 4


def test_too_few_clips_is_refused_naming_the_class():
    labels = _labels([100, 5, 50, 50])
    with pytest.raises(SerlibError, match="happiness: 51 clips needed"):
        subsample_training_part(np.arange(205), labels, name="balanced", fraction=1.0,
                                seed=0, fold=2)


def test_prepare_run_subsamples_training_parts_only(synthetic_selection):
    from serlib.training import prepare_run

    plain = prepare_run(synthetic_selection, config=TrainConfig(
        protocol="session", folds=5, device="cpu"))
    cut = prepare_run(synthetic_selection, config=TrainConfig(
        protocol="session", folds=5, device="cpu", imbalance="ratio10",
        imbalance_fraction=0.5))
    for (train_a, test_a), (train_b, test_b) in zip(plain.folds, cut.folds, strict=True):
        np.testing.assert_array_equal(test_a, test_b)             # test folds untouched
        assert set(train_b) <= set(train_a)                       # speakers folds untouched
        want = target_counts(len(train_a), name="ratio10", fraction=0.5)
        assert np.bincount(cut.labels[train_b], minlength=4).tolist() == want
    assert cut.resolved["train"]["imbalance"] == "ratio10"
    assert "imbalance" not in plain.resolved["train"]           # older run folders unchanged


def test_the_studys_runs_pair_on_folds_and_seeds(synthetic_selection):
    """Every run of the study has the same test folds; runs of one profile and seed differ
    in their remedy only (the same subsampled training rows)."""
    from serlib.studies import expand_studies, study_rows
    from serlib.training import prepare_run

    runs = expand_studies(STUDY, base_training=BASE, seeds=[0, 1])
    assert len(runs) == 4 * 2 * 2
    setups = {name: prepare_run(synthetic_selection, config=TrainConfig(**{**BASE, **o}))
              for name, o in runs}
    tests = {tuple(map(tuple, (t for _, t in s.folds))) for s in setups.values()}
    assert len(tests) == 1
    for seed in (0, 1):
        for profile in ("balanced", "ratio10"):
            same = [s for s in setups.values()
                    if s.config.seed == seed and s.config.imbalance == profile]
            assert len(same) == 4
            trains = {tuple(map(tuple, (tr for tr, _ in s.folds))) for s in same}
            assert len(trains) == 1
    rows = study_rows(STUDY, "controlled_imbalance", base_training=BASE, seeds=[0, 1])
    for row in rows:
        if row.compare_with is not None:
            ref = next(r for r in rows if r.label == row.compare_with)
            assert ref.config["imbalance"] == row.config["imbalance"]
            assert [n.endswith("_seed1") for n in ref.runs] == \
                [n.endswith("_seed1") for n in row.runs]
    assert sum(r.kind == "posthoc" for r in rows) == 2        # one per profile


def test_infeasible_profiles_are_named_and_skipped(synthetic_selection):
    said = []
    runs = [("ok", TrainConfig(protocol="session", imbalance="ratio10",
                               imbalance_fraction=0.3)),
            ("too_big", TrainConfig(protocol="session", imbalance="balanced",
                                    imbalance_fraction=1.0)),
            ("plain", TrainConfig())]
    kept = feasible_runs(runs, synthetic_selection, say=said.append)
    assert [n for n, _ in kept] == ["ok", "plain"]
    assert len(said) == 1 and "too_big" in said[0] and "too few clips" in said[0]


def test_logit_adjustment_uses_the_subsampled_shares():
    predictions = pd.DataFrame({"fold": [1] * 20 + [2] * 30,
                                "label": (list(PAPER_CLASSES) * 13)[:50]})
    priors = training_priors(predictions, name="ratio10", fraction=0.5)
    assert list(priors.index) == [1, 2]
    np.testing.assert_allclose(priors.sum(axis=1), 1.0)
    # fold 1 trains on 30 rows -> 15 kept; fold 2 on 20 -> 10 kept
    assert priors.loc[1].tolist() == pytest.approx(
        [c / 15 for c in allocate(15, class_shares("ratio10"))])


def test_a_small_subsampled_training_part_still_gets_a_speaker_disjoint_validation_part():
    from serlib.splits import validation_split

    labels = np.repeat(np.arange(4), 6)                     # 24 clips, 6 per class
    speakers = np.array([f"s{i % 12}" for i in range(24)])   # 12 speakers > 6 per class
    fit, val = validation_split(np.arange(24), labels, fraction=0.1, seed=0, groups=speakers)
    assert len(val) > 0 and len(fit) + len(val) == 24
    assert not set(speakers[fit]) & set(speakers[val])
