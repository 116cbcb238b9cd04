"""Cross-validated training on the tiny generated corpus: outputs, resume, determinism."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import serlib.training as training
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES
from serlib.runs import without_timing
from serlib.training import TrainConfig, load_checkpoint, run_cross_validation

CONFIG = TrainConfig(feature="mfcc", folds=2, epochs=2, width=4, batch_size=16, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")   # torch on one thread (conftest.py)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def finished_run(synthetic_selection, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = run_cross_validation(synthetic_selection, config=CONFIG, out_dir=out,
                                   cache_dir=cache, progress=False)
    return out, summary


def test_run_leaves_every_output(finished_run, synthetic_selection):
    out, summary = finished_run
    for k in (1, 2):
        for name in ("checkpoint.pt", "metrics.json", "predictions.csv", "history.csv"):
            assert (out / f"fold_{k}" / name).is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["train"] == CONFIG.to_dict()
    assert config["features"]["kind"] == "mfcc"
    assert config["selection"]["corpus"] == "generated"

    predictions = pd.read_csv(out / "predictions.csv")
    assert sorted(predictions["utterance_id"]) == sorted(synthetic_selection["utterance_id"])
    probs = predictions[[f"p_{c}" for c in PAPER_CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["fold", "epoch", "train_loss", "val_loss", "val_wa",
                                     "val_ua", "lr"]
    assert len(history) == 4

    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "stratified" and summary["corpus"] == "generated"
    assert summary["device"].startswith("cpu") and summary["commit"]
    assert 0 <= summary["ua_mean"] <= 1 and len(summary["folds"]) == 2
    assert np.sum(summary["confusion"]) == len(synthetic_selection)
    fold = json.loads((out / "fold_1" / "metrics.json").read_text())
    assert set(fold) >= {"fold", "wa", "ua", "macro_f1", "per_class_recall", "confusion",
                         "best_epoch", "n_train", "n_val", "n_test"}
    assert fold["n_train"] + fold["n_val"] + fold["n_test"] == len(synthetic_selection)


def test_summary_records_wall_time_and_device(finished_run):
    out, summary = finished_run
    seconds = [json.loads((out / f"fold_{k}" / "metrics.json").read_text())["train_seconds"]
               for k in (1, 2)]
    assert all(isinstance(t, float) and t > 0 for t in seconds)
    assert summary["wall_seconds"] == pytest.approx(sum(seconds))
    assert summary["device"].startswith("cpu (")         # e.g. "cpu (x86_64, 1 threads)"
    # a fold written before timing was recorded: the run's total is unknown, not a guess
    legacy = [{k: v for k, v in m.items() if k != "train_seconds"} for m in summary["folds"]]
    again = training.summarise([summary["folds"][0], legacy[1]], config=CONFIG,
                               corpus="generated", n_utterances=10, device="cpu")
    assert again["wall_seconds"] is None
    assert without_timing(summary["folds"]) == legacy


def test_checkpoint_loads_weights_only(finished_run):
    out, _ = finished_run
    checkpoint = torch.load(out / "fold_1" / "checkpoint.pt", weights_only=True)
    assert checkpoint["mean"].shape == (40,) and "optimizer" in checkpoint
    model, _ = load_checkpoint(out / "fold_1" / "checkpoint.pt")
    assert model(torch.zeros(2, 1, 40, 259)).shape == (2, 4)


def test_rerun_does_no_training(finished_run, synthetic_selection, cache, monkeypatch):
    out, summary = finished_run

    def fail(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(training, "train_fold", fail)
    again = run_cross_validation(synthetic_selection, config=CONFIG, out_dir=out,
                                 cache_dir=cache, progress=False)
    assert again == summary


def test_interrupted_run_resumes_and_matches(finished_run, synthetic_selection, cache,
                                             tmp_path, monkeypatch):
    _, uninterrupted = finished_run
    original = training.train_fold

    def interrupt_in_fold_2(*args, fold, **kwargs):
        if fold == 2:
            raise KeyboardInterrupt
        return original(*args, fold=fold, **kwargs)

    monkeypatch.setattr(training, "train_fold", interrupt_in_fold_2)
    with pytest.raises(KeyboardInterrupt):
        run_cross_validation(synthetic_selection, config=CONFIG, out_dir=tmp_path,
                             cache_dir=cache, progress=False)
    assert (tmp_path / "fold_1" / "metrics.json").exists()
    assert not (tmp_path / "fold_2").exists() and not (tmp_path / "summary.json").exists()

    calls = []

    def count(*args, fold, **kwargs):
        calls.append(fold)
        return original(*args, fold=fold, **kwargs)

    monkeypatch.setattr(training, "train_fold", count)
    resumed = run_cross_validation(synthetic_selection, config=CONFIG, out_dir=tmp_path,
                                   cache_dir=cache, progress=False)
    assert calls == [2]  # only the unfinished fold trains
    # same seed on the CPU: identical numbers to the uninterrupted run
    assert without_timing(resumed["folds"]) == without_timing(uninterrupted["folds"])
    assert resumed["wa_mean"] == uninterrupted["wa_mean"]


def test_other_config_in_same_folder_is_refused(finished_run, synthetic_selection, cache):
    out, _ = finished_run
    other = TrainConfig(**{**CONFIG.to_dict(), "epochs": 3})
    with pytest.raises(SerlibError, match="different configuration"):
        run_cross_validation(synthetic_selection, config=other, out_dir=out, cache_dir=cache,
                             progress=False)
    # same size, other utterances: a different selection is refused too
    relabelled = synthetic_selection.copy()
    relabelled["label"] = relabelled["label"].to_numpy()[::-1]
    with pytest.raises(SerlibError, match="different configuration or selection"):
        run_cross_validation(relabelled, config=CONFIG, out_dir=out, cache_dir=cache,
                             progress=False)


def test_same_selection_from_a_csv_elsewhere_is_the_same_run(finished_run, synthetic_selection,
                                                             cache, tmp_path, monkeypatch):
    from serlib.corpora import write_selection

    out, summary = finished_run
    csv = write_selection(synthetic_selection, tmp_path / "moved" / "selection.csv")
    monkeypatch.setattr(training, "train_fold", None)  # must not be called
    assert run_cross_validation(csv, config=CONFIG, out_dir=out, cache_dir=cache,
                                progress=False) == summary


def arrays(n=48, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    features = rng.normal(size=(n, 6, 8)).astype(np.float32)
    features += labels[:, None, None].astype(np.float32)  # learnable
    return features, labels


def test_same_seed_gives_identical_results_on_cpu():
    features, labels = arrays()
    train, test = np.arange(36), np.arange(36, 48)
    config = TrainConfig(folds=2, epochs=2, width=2, batch_size=8, device="cpu")

    def run(config):
        return training.train_fold(features, labels, train, test, config=config, fold=1,
                                   device=torch.device("cpu"), progress=False)

    first, second = run(config), run(config)
    np.testing.assert_array_equal(first["probabilities"], second["probabilities"])
    assert first["history"] == second["history"]
    for name, tensor in first["state"].items():
        assert torch.equal(tensor, second["state"][name]), name
    other = run(TrainConfig(**{**config.to_dict(), "seed": 1}))
    assert not np.array_equal(first["probabilities"], other["probabilities"])
    # the deterministic-kernel switch is restored after training
    assert not torch.are_deterministic_algorithms_enabled()


def test_speaker_groups_give_speaker_disjoint_validation(monkeypatch):
    features, labels = arrays()
    speakers = np.array([f"spk{i % 6}" for i in range(len(labels))])
    train = np.flatnonzero(~np.isin(speakers, ["spk0"]))
    test = np.flatnonzero(speakers == "spk0")
    seen = {}
    original = training.validation_split

    def spy(*args, **kwargs):
        seen["fit"], seen["val"] = original(*args, **kwargs)
        return seen["fit"], seen["val"]

    monkeypatch.setattr(training, "validation_split", spy)
    config = TrainConfig(protocol="session", folds=2, epochs=1, width=2, batch_size=8,
                         device="cpu")
    result = training.train_fold(features, labels, train, test, config=config, fold=1,
                                 device=torch.device("cpu"), groups=speakers, progress=False)
    assert not set(speakers[seen["fit"]]) & set(speakers[seen["val"]])
    assert result["n_fit"] + result["n_val"] == len(train)


def test_session_protocol_is_speaker_independent(synthetic_selection, cache, tmp_path):
    config = TrainConfig(feature="mfcc", protocol="session", folds=5, epochs=1, width=4,
                         batch_size=16, device="cpu")
    summary = run_cross_validation(synthetic_selection, config=config, out_dir=tmp_path,
                                   cache_dir=cache, progress=False)
    assert summary["protocol"] == "session" and len(summary["folds"]) == 5
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    sessions = dict(zip(synthetic_selection["utterance_id"], synthetic_selection["session"],
                        strict=True))
    per_fold = predictions.assign(session=predictions["utterance_id"].map(sessions))
    assert (per_fold.groupby("fold")["session"].nunique() == 1).all()


def test_normalisation_uses_training_part_only():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 6, 8)).astype(np.float32)
    labels = np.arange(40) % 4
    train, test = np.arange(30), np.arange(30, 40)
    config = TrainConfig(folds=2, epochs=1, width=2, batch_size=8, device="cpu")
    result = training.train_fold(features, labels, train, test, config=config, fold=1,
                                 device=torch.device("cpu"), progress=False)
    poisoned = features.copy()
    poisoned[test] = 1e6  # the test fold must not leak into the statistics
    again = training.train_fold(poisoned, labels, train, test, config=config, fold=1,
                                device=torch.device("cpu"), progress=False)
    np.testing.assert_array_equal(result["mean"], again["mean"])
    assert result["n_fit"] + result["n_val"] == 30


def test_config_validation_and_roundtrip():
    assert TrainConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with_alpha = TrainConfig(alpha=(1.0, 2.0, 1.0, 2.0))
    assert TrainConfig.from_dict(with_alpha.to_dict()) == with_alpha
    with pytest.raises(SerlibError, match="TrainConfig.loss='hinge'"):
        TrainConfig(loss="hinge")
    with pytest.raises(SerlibError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(SerlibError, match="TrainConfig.amp='yes'"):
        TrainConfig(amp="yes")
    assert TrainConfig.from_dict(TrainConfig(amp=False).to_dict()).amp is False
    assert training.resolve_device("cpu").type == "cpu"
    with pytest.raises(SerlibError, match="device='tpu9'"):
        training.resolve_device("tpu9")


def test_cross_validate_arrays_in_memory():
    features, labels = arrays(n=60)
    config = TrainConfig(folds=3, epochs=2, width=2, batch_size=8, device="cpu", seed=3)
    ended = []
    results = training.cross_validate_arrays(
        features, labels, config=config, on_fold_end=lambda k, r: ended.append(k),
        progress=False)
    assert ended == [1, 2, 3] and [r["fold"] for r in results] == [1, 2, 3]
    tested = np.concatenate([r["test_idx"] for r in results])
    assert sorted(tested) == list(range(60))  # default: stratified folds covering every row
    for r in results:
        assert r["probabilities"].shape == (len(r["test_idx"]), 4)
        assert sum(map(sum, r["metrics"]["confusion"])) == len(r["test_idx"])
        assert 1 <= r["best_epoch"] <= 2 and len(r["history"]) <= 2
    # same seed on the CPU: the same numbers; skipped folds are not trained
    again = training.cross_validate_arrays(features, labels, config=config, skip={1, 3},
                                           progress=False)
    assert [r["fold"] for r in again] == [2]
    assert again[0]["metrics"] == results[1]["metrics"]
    np.testing.assert_array_equal(again[0]["probabilities"], results[1]["probabilities"])


def test_cross_validate_arrays_rejects_bad_input():
    features, labels = arrays(n=24)
    config = TrainConfig(folds=2, epochs=1, width=2, device="cpu")
    with pytest.raises(SerlibError, match="features must be"):
        training.cross_validate_arrays(features[:10], labels, config=config, progress=False)
    session = TrainConfig(protocol="session", folds=2, epochs=1, width=2, device="cpu")
    with pytest.raises(SerlibError, match="needs explicit folds"):
        training.cross_validate_arrays(features, labels, config=session, progress=False)


def test_copy_state_is_a_deep_copy_with_the_same_layout():
    """The best epoch's kept weights and optimizer state: equal to the live ones, the same
    strides (channels_last kept), and unchanged when training goes on."""
    torch.manual_seed(0)
    model = training.build_model(n_classes=4, width=2).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.randn(4, 1, 8, 12).contiguous(memory_format=torch.channels_last)
    model(x).sum().backward()
    optimizer.step()
    state, opt_state = training.copy_state(model.state_dict()), \
        training.copy_state(optimizer.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value) and state[name].stride() == value.stride()
    assert opt_state["param_groups"] == optimizer.state_dict()["param_groups"]
    model(x).sum().backward()
    optimizer.step()                                      # training goes on in place
    weight = next(name for name, _ in model.named_parameters())
    assert not torch.equal(state[weight], model.state_dict()[weight])
    assert int(opt_state["state"][0]["step"]) == 1 and int(
        optimizer.state_dict()["state"][0]["step"]) == 2
