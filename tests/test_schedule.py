"""Training length in optimizer steps (min_steps, warmup_steps) and seed ensembles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import serlib.training as training
from serlib.errors import SerlibError
from serlib.models import Ensemble
from serlib.training import TrainConfig, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")   # torch on one thread (conftest.py)


def arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    features = rng.normal(size=(n, 6, 8)).astype(np.float32)
    features += labels[:, None, None].astype(np.float32)   # learnable
    return features, labels


def train(n, config, *, fold=1):
    features, labels = arrays(n)
    n_test = n // 5
    return training.train_fold(features, labels, np.arange(n - n_test), np.arange(n - n_test, n),
                               config=config, fold=fold, device=torch.device("cpu"),
                               progress=False)


def adam_steps(result) -> int:
    """Optimizer steps taken, as Adam counts them (every parameter has the same count)."""
    counts = {int(state["step"]) for state in result["optimizer"]["state"].values()}
    assert len(counts) == 1
    return counts.pop()


def test_min_steps_trains_the_same_steps_on_corpora_of_different_sizes():
    config = TrainConfig(epochs=1, min_steps=23, width=2, batch_size=8, device="cpu",
                         select_epoch="last", patience=0)
    small, large = train(40, config), train(160, config)
    # 40 clips: 29 fit clips, 4 batches an epoch; 160: 116 fit clips, 15 an epoch
    assert adam_steps(small) == adam_steps(large) == 23
    assert len(small["history"]) == 6 and len(large["history"]) == 2   # epochs, last cut short
    assert small["history"][-1]["steps"] == large["history"][-1]["steps"] == 23
    # without min_steps the length is in epochs, so the larger corpus trains more steps
    by_epochs = TrainConfig(**{**config.to_dict(), "min_steps": 0, "epochs": 2})
    assert adam_steps(train(40, by_epochs)) < adam_steps(train(160, by_epochs))


def test_min_steps_is_a_minimum_epochs_rule_when_they_are_more():
    config = TrainConfig(epochs=3, min_steps=5, width=2, batch_size=8, device="cpu",
                         select_epoch="last", patience=0)
    assert training.training_steps(116, config) == (3 * 15, 3)
    assert training.training_steps(29, config) == (12, 3)
    assert training.training_steps(17, TrainConfig(epochs=1, min_steps=10, batch_size=8)) \
        == (10, 5)                        # 2 batches an epoch (8, 8; the 17th clip is dropped)
    assert training.batches_per_epoch(17, 8) == 2 and training.batches_per_epoch(18, 8) == 3


def test_step_schedule_warms_up_and_decays_per_step():
    factors = [training.step_lr_factor(s, warmup=4, total=20, schedule="cosine")
               for s in range(20)]
    np.testing.assert_allclose(factors[:4], [0.2, 0.4, 0.6, 0.8])
    assert factors[4] == pytest.approx(1.0)
    assert np.all(np.diff(factors[4:]) < 0)                            # decreasing to 0
    assert training.step_lr_factor(20, warmup=4, total=20, schedule="cosine") \
        == pytest.approx(0.0, abs=1e-12)
    assert training.step_lr_factor(10, warmup=4, total=20, schedule="constant") == 1.0
    # the run's learning rate follows it: epoch starts of a 4-batch-an-epoch fold
    config = TrainConfig(epochs=1, min_steps=20, warmup_steps=4, width=2, batch_size=8,
                         lr=1e-2, device="cpu", select_epoch="last", patience=0)
    lrs = [row["lr"] for row in train(40, config)["history"]]
    expected = [1e-2 * training.step_lr_factor(s, warmup=4, total=20, schedule="cosine")
                for s in (0, 4, 8, 12, 16)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_warmup_longer_than_training_is_refused():
    config = TrainConfig(epochs=1, min_steps=5, warmup_steps=5, width=2, batch_size=8,
                         device="cpu")
    with pytest.raises(SerlibError, match="warm-up of 5 optimizer steps"):
        train(40, config)


def test_config_checks_of_the_new_fields():
    for bad in ({"min_steps": -1}, {"warmup_steps": 1.5}, {"seed_ensemble": 0},
                {"seed_ensemble": 2, "ensemble": 2}):
        with pytest.raises(SerlibError):
            TrainConfig(**bad)
    config = TrainConfig(seed_ensemble=3)
    assert config.members == 3 and TrainConfig(ensemble=2).members == 2
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_seed_ensemble_predicts_the_mean_of_its_members(tmp_path):
    base = TrainConfig(epochs=2, width=2, batch_size=8, device="cpu", select_epoch="last",
                       patience=0)
    ensemble = train(40, TrainConfig(**{**base.to_dict(), "seed_ensemble": 2}))
    alone = train(40, base)
    # member 0 is the single-seed run, bit for bit; member 1 differs
    first = {k[len("members.0."):]: v for k, v in ensemble["state"].items()
             if k.startswith("members.0.")}
    for name, tensor in alone["state"].items():
        assert torch.equal(tensor, first[name]), name
    # the ensemble's test probabilities are the mean of its members' probabilities
    features, labels = arrays(40)
    model, members = training.build_model(n_classes=4, width=2, members=2), []
    model.load_state_dict(ensemble["state"])
    model.eval()
    x = torch.from_numpy((features[32:] - ensemble["mean"][None, :, None])
                         / ensemble["std"][None, :, None])[:, None]
    with torch.no_grad():
        for member in model.members:
            members.append(torch.softmax(member(x), dim=-1).numpy())
    assert not np.allclose(members[0], members[1])
    np.testing.assert_allclose(ensemble["probabilities"], np.mean(members, axis=0), atol=1e-6)
    np.testing.assert_allclose(members[0], alone["probabilities"], atol=1e-6)
    # history: both members' epochs, tagged
    assert [row["member"] for row in ensemble["history"]] == [0, 0, 1, 1]
    # the checkpoint loads as an ensemble of 2
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": ensemble["state"], "train_config": TrainConfig(
        **{**base.to_dict(), "seed_ensemble": 2}).to_dict(),
        "class_names": ["neutral", "happiness", "sadness", "anger"]}, path)
    loaded, _ = load_checkpoint(path)
    assert isinstance(loaded, Ensemble) and len(loaded.members) == 2


def test_val_fraction_zero_trains_on_the_whole_training_part():
    """No validation part: every training clip is fitted on, nothing is scored as validation,
    and the run is the same training as with a validation part given those clips."""
    config = TrainConfig(epochs=2, width=2, batch_size=4, device="cpu", select_epoch="last",
                         patience=0, val_fraction=0)
    whole = train(60, config)
    assert whole["n_fit"] == 48 and whole["n_val"] == 0 and len(whole["val_idx"]) == 0
    assert whole["val_probabilities"].shape == (0, 4)
    assert len(whole["history"]) == 2
    assert all(np.isnan(h["val_ua"]) and np.isnan(h["val_loss"]) for h in whole["history"])
    assert whole["best_epoch"] == 2 and np.isfinite(whole["probabilities"]).all()
    held = train(60, TrainConfig(**{**config.to_dict(), "val_fraction": 0.1}))
    assert held["n_fit"] + held["n_val"] == 48 and held["n_fit"] < 48
    assert adam_steps(whole) == 2 * 12 > adam_steps(held)   # more clips, more batches


@pytest.mark.parametrize("field", [{"select_epoch": "best", "patience": 0},
                                   {"select_epoch": "last", "patience": 3}])
def test_val_fraction_zero_needs_a_fixed_length(field):
    with pytest.raises(SerlibError, match=r"val_fraction=0 .*select_epoch='last' and "
                                          r"patience=0"):
        TrainConfig(val_fraction=0, **field)
    with pytest.raises(SerlibError, match=r"val_fraction=-0.1 is not valid: a finite number "
                                          r"in \[0, 1\)"):
        TrainConfig(val_fraction=-0.1, select_epoch="last", patience=0)
