"""Folds: stratified, leave-one-session-out, speaker groups; the inner validation split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serlib.errors import SerlibError
from serlib.splits import make_folds, validation_split


def table(n=200, sessions=True):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "label": rng.choice(["neutral", "happiness", "sadness", "anger"], n,
                            p=[0.5, 0.12, 0.26, 0.12]),
        "speaker": [f"s{i % 10}" for i in range(n)],
    })
    frame["session"] = [i % 5 + 1 for i in range(n)] if sessions else None
    return frame


def check_partition(folds, n):
    tests = np.concatenate([test for _, test in folds])
    assert sorted(tests) == list(range(n))
    for train, test in folds:
        assert not set(train) & set(test)
        assert len(train) + len(test) == n


def test_stratified():
    frame = table()
    folds = make_folds(frame, protocol="stratified", n_folds=5, seed=0)
    check_partition(folds, len(frame))
    overall = frame["label"].value_counts(normalize=True)
    for _, test in folds:
        share = frame["label"].iloc[test].value_counts(normalize=True)
        assert (share - overall).abs().max() < 0.05
    again = make_folds(frame, protocol="stratified", n_folds=5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = make_folds(frame, protocol="stratified", n_folds=5, seed=1)
    assert not np.array_equal(folds[0][1], other[0][1])


def test_session_leaves_one_session_out():
    frame = table()
    folds = make_folds(frame, protocol="session", n_folds=5, seed=0)
    check_partition(folds, len(frame))
    for _, test in folds:
        assert frame["session"].iloc[test].nunique() == 1
    with pytest.raises(SerlibError, match="n_folds=4 must equal the number of sessions"):
        make_folds(frame, protocol="session", n_folds=4, seed=0)


def test_speaker_groups_without_sessions():
    frame = table(sessions=False)
    folds = make_folds(frame, protocol="session", n_folds=5, seed=0)
    check_partition(folds, len(frame))
    for train, test in folds:
        assert not set(frame["speaker"].iloc[train]) & set(frame["speaker"].iloc[test])


def test_bad_protocol():
    with pytest.raises(SerlibError, match="protocol='random'"):
        make_folds(table(), protocol="random", n_folds=5, seed=0)


def test_validation_split_comes_from_training_part():
    frame = table()
    labels = frame["label"].to_numpy()
    train, test = make_folds(frame, protocol="stratified", n_folds=5, seed=0)[0]
    fit, val = validation_split(train, labels, fraction=0.1, seed=0)
    assert set(fit) | set(val) == set(train)
    assert not set(val) & set(test) and not set(fit) & set(val)
    assert abs(len(val) - 0.1 * len(train)) <= 1


def test_validation_split_by_speaker():
    frame = table(sessions=False)
    labels, speakers = frame["label"].to_numpy(), frame["speaker"].to_numpy()
    train, test = make_folds(frame, protocol="session", n_folds=5, seed=0)[0]
    fit, val = validation_split(train, labels, fraction=0.1, seed=0, groups=speakers)
    assert sorted(np.concatenate([fit, val])) == sorted(train)
    assert not set(speakers[fit]) & set(speakers[val])
    assert set(speakers[val]) <= set(speakers[train])
    assert len(set(speakers[val])) == 1  # 8 training speakers: one held out (~12 %)
    again = validation_split(train, labels, fraction=0.1, seed=0, groups=speakers)
    assert np.array_equal(val, again[1])
    with pytest.raises(SerlibError, match=">= 2 speakers"):
        validation_split(np.flatnonzero(speakers == "s1"), labels, fraction=0.1, seed=0,
                         groups=speakers)


def test_speaker_validation_split_seed_only_breaks_ties():
    """As documented: with speakers, the held-out speaker is chosen by its label
    distribution; the seed matters only between speakers whose distributions tie."""
    rng = np.random.default_rng(1)
    classes = np.array(["neutral", "happiness", "sadness", "anger"])
    # ten speakers of 40 clips, each with its own label mix: no ties
    labels = np.concatenate([rng.choice(classes, 40, p=rng.dirichlet(np.ones(4)))
                             for _ in range(10)])
    speakers = np.repeat([f"s{i}" for i in range(10)], 40)
    train = np.arange(len(labels))
    held_out = {tuple(sorted(set(speakers[validation_split(
        train, labels, fraction=0.1, seed=seed, groups=speakers)[1]]))) for seed in range(8)}
    assert len(held_out) == 1
    # ten speakers with the same label mix: every speaker ties, and the seed decides
    tied = np.tile(np.repeat(classes, 10), 10)
    held_out = {tuple(sorted(set(speakers[validation_split(
        train, tied, fraction=0.1, seed=seed, groups=speakers)[1]]))) for seed in range(8)}
    assert len(held_out) > 1
