"""serlib.fusion and ``serlib fuse``: weights chosen without the test fold, fused run folders."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from serlib.cli import main
from serlib.errors import SerlibError
from serlib.fusion import choose_weight, fuse_runs, fusion_weights
from serlib.labels import PAPER_CLASSES
from serlib.metrics import classification_report_dict
from serlib.posthoc import write_run
from serlib.results import Run, load_run

P = [f"p_{c}" for c in PAPER_CLASSES]


def make_run(path, *, labels, folds, probs, seed=0, baseline=False) -> Run:
    ids = [f"u{i:03d}" for i in range(len(labels))]
    predictions = pd.DataFrame({
        "utterance_id": ids, "fold": folds, "speaker": [f"s{f}{i % 2}" for i, f in
                                                        enumerate(folds)],
        "label": [PAPER_CLASSES[i] for i in labels],
        "predicted": [PAPER_CLASSES[i] for i in probs.argmax(1)],
        **{c: probs[:, k] for k, c in enumerate(P)}})
    fold_metrics = []
    for k in sorted(set(folds)):
        test = folds == k
        fold_metrics.append({"fold": int(k), **classification_report_dict(
            labels[test], probs[test].argmax(1), class_names=PAPER_CLASSES),
            "n_train": int((~test).sum()), "n_test": int(test.sum())})
    summary = {"wa_mean": 0.0, "wa_std": 0.0, "ua_mean": 0.0, "ua_std": 0.0,
               "macro_f1_mean": 0.0, "folds": fold_metrics, "protocol": "session",
               "n_folds": int(folds.max()), "feature": "spectrogram", "loss": "focal",
               "gamma": 2.0, "width": 4, "epochs": 1, "corpus": "test",
               "n_utterances": len(labels), "class_names": list(PAPER_CLASSES)}
    config = {"baseline": {"model": "logreg", "seed": seed}} if baseline else \
        {"train": {"seed": seed, "feature": "spectrogram"}}
    history = pd.DataFrame({"fold": sorted(set(folds)), "epoch": 1, "train_loss": 1.0})
    return Run(path=path, summary=summary, config=config, folds=fold_metrics,
               predictions=predictions, history=history)


def noisy(labels, rng, *, strength):
    """Probabilities whose argmax is right more often the larger ``strength`` is."""
    logits = rng.normal(size=(len(labels), 4))
    logits[np.arange(len(labels)), labels] += strength
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    folds = np.repeat(np.arange(1, 6), 40)
    deep = make_run(tmp_path / "deep", labels=labels, folds=folds,
                    probs=noisy(labels, rng, strength=1.5))
    base = make_run(tmp_path / "base", labels=labels, folds=folds,
                    probs=noisy(labels, rng, strength=1.0), baseline=True)
    return deep, base


def test_weight_of_a_fold_never_looks_at_its_test_part(pair):
    deep, base = pair
    before = fusion_weights(deep, base)
    assert set(before["source"]) == {"other-folds"}
    assert (before["n_selection"] == 160).all()           # the four other folds
    # scramble fold 1's test part in both runs (labels too): fold 1's weight stays
    rng = np.random.default_rng(1)
    changed = []
    for run in (deep, base):
        run = copy.deepcopy(run)
        test = run.predictions["fold"] == 1
        run.predictions.loc[test, P] = noisy(rng.integers(0, 4, test.sum()), rng, strength=9)
        changed.append(run)
    changed[1].predictions["label"] = changed[0].predictions["label"] = np.where(
        changed[0].predictions["fold"] == 1, "anger", changed[0].predictions["label"])
    after = fusion_weights(*changed)
    assert after.loc[0, "weight"] == before.loc[0, "weight"]
    assert after.loc[0, "selection_ua"] == before.loc[0, "selection_ua"]


def test_validation_predictions_are_used_when_both_runs_keep_them(pair, tmp_path):
    deep, base = pair
    rng = np.random.default_rng(2)
    # validation parts where the baseline is perfect and the deep run is noise
    for run, strength in ((deep, 0.0), (base, 30.0)):
        for k in range(1, 6):
            y = rng.integers(0, 4, size=30) if run is deep else \
                pd.read_csv(deep.path / f"fold_{k}" / "validation.csv")["label"].map(
                    PAPER_CLASSES.index).to_numpy()
            rng_k = np.random.default_rng(k + (0 if run is deep else 10))
            probs = noisy(y, rng_k, strength=strength)
            folder = run.path / f"fold_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"utterance_id": [f"v{k}_{i}" for i in range(30)], "fold": k,
                          "speaker": "s", "label": [PAPER_CLASSES[i] for i in y],
                          "predicted": [PAPER_CLASSES[i] for i in probs.argmax(1)],
                          **{c: probs[:, j] for j, c in enumerate(P)}}).to_csv(
                folder / "validation.csv", index=False)
    weights = fusion_weights(deep, base)
    assert set(weights["source"]) == {"validation"} and (weights["n_selection"] == 30).all()
    assert (weights["weight"] == 0.0).all()                # the baseline alone wins there
    # the test parts do not matter at all now
    scrambled = copy.deepcopy(deep)
    scrambled.predictions[P] = scrambled.predictions[P].to_numpy()[::-1]
    pd.testing.assert_frame_equal(fusion_weights(scrambled, base), weights)
    with pytest.raises(SerlibError, match="validation.csv missing"):
        labels = deep.predictions["label"].map(PAPER_CLASSES.index).to_numpy()
        fusion_weights(deep, make_run(tmp_path / "other", labels=labels,
                                      folds=np.repeat(np.arange(1, 6), 40),
                                      probs=np.full((200, 4), 0.25)), source="validation")


def test_fused_probabilities_are_the_weighted_mean(pair):
    deep, base = pair
    fused = fuse_runs(deep, base)
    weights = fusion_weights(deep, base).set_index("fold")["weight"]
    w = deep.predictions["fold"].map(weights).to_numpy()[:, None]
    want = w * deep.predictions[P].to_numpy() + (1 - w) * base.predictions[P].to_numpy()
    np.testing.assert_allclose(fused.predictions[P].to_numpy(), want)
    assert list(fused.predictions["utterance_id"]) == list(deep.predictions["utterance_id"])
    y = deep.predictions["label"].map(PAPER_CLASSES.index).to_numpy()
    test = (deep.predictions["fold"] == 3).to_numpy()
    assert fused.folds[2]["ua"] == pytest.approx(classification_report_dict(
        y[test], want[test].argmax(1), class_names=PAPER_CLASSES)["ua"])
    assert fused.summary["fusion"]["weights"]["3"] == weights[3]
    # it trains nothing: no training time of its own (the tables show '-', not the deep run's)
    assert fused.summary["wall_seconds"] is None


def test_choose_weight_prefers_the_informative_run_and_breaks_ties_near_half():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    good, bad = noisy(y, rng, strength=6), np.full((300, 4), 0.25)
    assert choose_weight(y, good, bad)[0] > 0.5
    assert choose_weight(y, bad, good)[0] < 0.5
    assert choose_weight(y, good, good)[0] == 0.5          # every weight ties
    with pytest.raises(SerlibError, match="weights"):
        choose_weight(y, good, bad, weights=[1.5])


def test_log_loss_criterion_takes_the_weight_of_lowest_log_loss():
    from serlib.fusion import DEFAULT_WEIGHTS

    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 400)
    # an over-confident run against an under-confident one of similar accuracy
    sharp, soft = noisy(y, rng, strength=1.2) ** 4, noisy(y, rng, strength=1.2) ** 0.3
    sharp, soft = (p / p.sum(1, keepdims=True) for p in (sharp, soft))

    def nll(w):
        p = w * sharp + (1 - w) * soft
        return -np.mean(np.log(p[np.arange(len(y)), y]))

    w, ua = choose_weight(y, sharp, soft, criterion="log-loss")
    assert nll(w) == pytest.approx(min(nll(v) for v in DEFAULT_WEIGHTS))
    fused = w * sharp + (1 - w) * soft
    assert ua == pytest.approx(classification_report_dict(
        y, fused.argmax(1), class_names=PAPER_CLASSES)["ua"])
    with pytest.raises(SerlibError, match="criterion='brier'"):
        choose_weight(y, sharp, soft, criterion="brier")


def test_fused_run_records_its_criterion(pair):
    deep, base = pair
    by_loss = fuse_runs(deep, base, criterion="log-loss")
    assert by_loss.summary["fusion"]["criterion"] == "log-loss"
    assert by_loss.summary["fusion"]["rule"].startswith("lowest log-loss")
    weights = fusion_weights(deep, base, criterion="log-loss").set_index("fold")["weight"]
    assert {int(k): v for k, v in by_loss.summary["fusion"]["weights"].items()} == \
        weights.to_dict()
    assert fuse_runs(deep, base).summary["fusion"]["criterion"] == "ua"


def test_runs_on_other_folds_are_refused(pair, tmp_path):
    deep, base = pair
    other = copy.deepcopy(base)
    other.predictions["fold"] = np.roll(other.predictions["fold"].to_numpy(), 1)
    with pytest.raises(SerlibError, match="test different utterances"):
        fusion_weights(deep, other)


def test_fuse_command_writes_a_run_that_pairs_like_any_run(pair, tmp_path, capsys):
    from serlib.stats import compare_runs

    deep, base = pair
    write_run(deep, tmp_path / "deep_run")
    write_run(base, tmp_path / "base_run")
    out = tmp_path / "fused"
    assert main(["fuse", "--deep", str(tmp_path / "deep_run"), "--baseline",
                 str(tmp_path / "base_run"), "--out", str(out)]) == 0
    assert "chosen by ua on other-folds" in capsys.readouterr().out
    fused = load_run(out)
    config = json.loads((out / "config.json").read_text())
    assert config["fusion"]["baseline"].endswith("base_run")
    comparison = compare_runs(load_run(tmp_path / "deep_run"), fused, n_resamples=50)
    assert len(comparison.differences) == 5
    assert fused.summary["ua_mean"] == pytest.approx(np.mean([m["ua"] for m in fused.folds]))
