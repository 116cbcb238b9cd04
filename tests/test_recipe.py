"""The training recipe options: off in the paper's recipe (bit for bit), seeded augmentations,
padding-free pooling, class weights, the balanced sampler and the epoch choice."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import serlib.training as training
from serlib import augment
from serlib.config import RECIPES, TrainConfig
from serlib.errors import SerlibError
from serlib.losses import class_weights, focal_loss
from serlib.models import Ensemble, ResNet18, build_model
from serlib.runs import without_timing

FOLD_SCRIPT = Path(__file__).parent / "reference" / "paper_recipe_fold.py"
_spec = importlib.util.spec_from_file_location("paper_recipe_fold", FOLD_SCRIPT)
fold_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fold_script)
REFERENCE, PINNED_ENV = fold_script.REFERENCE, fold_script.PINNED_ENV
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")   # torch on one thread (conftest.py)


def arrays(n=48, seed=0):
    # the inputs of tests/reference/paper_recipe_reference.json
    features, labels, _ = fold_script.inputs(n, seed)
    return features, labels


def fold(config, features, labels, **kwargs):
    return training.train_fold(features, labels, np.arange(36), np.arange(36, 48),
                               config=config, fold=1, device=CPU, progress=False, **kwargs)


@pytest.fixture(scope="module")
def pinned_folds():
    """The reference folds trained now, in a child process with processor-independent
    numerics (tests/reference/paper_recipe_fold.py)."""
    env = {**os.environ, **PINNED_ENV}
    done = subprocess.run([sys.executable, str(FOLD_SCRIPT)], env=env, capture_output=True,
                          text=True, check=True, timeout=300)
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", ["focal", "softmax_session", "focal_alpha_sgd"])
def test_paper_recipe_equals_the_recorded_run_to_the_last_digit(name, pinned_folds):
    # recorded from the code before the recipe options existed, with the same numerics: on
    # any x86 processor the bits must match (the processor's own kernels differ in the last
    # digits between processors, and the SGD case amplifies that over three epochs)
    case = json.loads(REFERENCE.read_text())["cases"][name]
    config = TrainConfig.from_dict(case["config"])
    assert TrainConfig.from_recipe("paper", **case["config"]) == config
    assert not config.needs_lengths and not training._Augmenter.wanted(config)
    np.testing.assert_array_equal(np.array(pinned_folds[name]["probabilities"], np.float32),
                                  np.array(case["probabilities"], dtype=np.float32))
    assert pinned_folds[name]["history"] == case["history"]


def test_paper_recipe_is_the_default():
    assert RECIPES["paper"] == {} and TrainConfig.from_recipe("paper") == TrainConfig()
    assert not TrainConfig().needs_lengths
    assert not training._Augmenter.wanted(TrainConfig())
    with pytest.raises(SerlibError, match="recipe='fancy'"):
        TrainConfig.from_recipe("fancy")
    assert "strong" in RECIPES
    strong = TrainConfig.from_recipe("strong")
    assert TrainConfig.from_dict(strong.to_dict()) == strong


def test_own_frames_pooling_ignores_padding():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 40, 30)
    lengths = torch.tensor([30, 17, 5])
    for pooling in ("mean", "meanstd"):
        model = ResNet18(width=4, pooling=pooling).eval()
        more = torch.cat([x, torch.randn(3, 1, 40, 25) * 10], dim=-1)   # other padding
        with torch.no_grad():
            a, b = model(x, lengths), model(more, lengths)
            alone = model(x[1:2, ..., :17], torch.tensor([17]))          # no padding at all
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a[1:2], alone, rtol=1e-5, atol=1e-5)
        # without lengths the padding changes the output
        assert not torch.allclose(model(x), model(more), atol=1e-3)


def seeded_batch():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(6, 1, 10, 20)).astype(np.float32))
    lengths = torch.tensor([20, 15, 12, 8, 20, 3])
    return x, lengths


@pytest.mark.parametrize("name", ["spec", "shift", "crop", "mixup", "warp"])
def test_augmentations_are_deterministic_with_a_seed(name):
    x, lengths = seeded_batch()
    y = torch.arange(6) % 4

    def apply(seed):
        rng = np.random.default_rng(seed)
        if name == "spec":
            return augment.spec_augment(x, lengths, rng=rng, time_masks=2, time_mask_frames=4,
                                        freq_masks=2, freq_mask_bins=3)
        if name == "shift":
            return augment.time_shift(x, lengths, rng=rng, max_frames=5)
        if name == "crop":
            return augment.random_crop(x, lengths, rng=rng, frames=10)[0]
        if name == "warp":
            return augment.freq_warp(x, rng=rng, max_stretch=0.2)
        return augment.mixup(x, y, lengths, rng=rng, alpha=0.4)[0]

    first, again, other = apply(0), apply(0), apply(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, x[..., :first.shape[-1]])


def test_augmentations_keep_the_padding_and_the_clip():
    x, lengths = seeded_batch()
    rng = np.random.default_rng(0)
    shifted = augment.time_shift(x, lengths, rng=rng, max_frames=5)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(shifted[i, ..., n:], x[i, ..., n:])     # padding stays
        # a circular shift of the clip's own frames: the same values in another order
        torch.testing.assert_close(shifted[i, ..., :n].sort(dim=-1).values,
                                   x[i, ..., :n].sort(dim=-1).values)
    masked = augment.spec_augment(x, lengths, rng=rng, time_masks=1, time_mask_frames=20,
                                  freq_masks=0, freq_mask_bins=0)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(masked[i, ..., n:], x[i, ..., n:])      # masks inside
    crop, crop_lengths = augment.random_crop(x, lengths, rng=rng, frames=10)
    assert crop.shape == (6, 1, 10, 10)
    assert crop_lengths.tolist() == [10, 10, 10, 8, 10, 3]
    torch.testing.assert_close(crop[5, ..., :3], x[5, ..., :3])


def test_freq_warp_stretches_the_frequency_axis_only():
    # a ramp over the bins (value = bin index) in each clip's first 7 frames, silence after
    x = torch.zeros(3, 1, 41, 12)
    x[:, :, :, :7] = torch.arange(41.0)[:, None]
    rng = np.random.default_rng(3)
    factors = np.random.default_rng(3).uniform(0.8, 1.2, size=3)   # the draws it makes
    warped = augment.freq_warp(x, rng=rng, max_stretch=0.2)
    for i, a in enumerate(factors):
        # output bin f holds the input at bin f / a (the top bin past the top)
        want = torch.minimum(torch.arange(41.0) / a, torch.tensor(40.0))
        torch.testing.assert_close(warped[i, 0, :, :7], want[:, None].expand(41, 7),
                                   atol=1e-4, rtol=0)
        assert torch.count_nonzero(warped[i, ..., 7:]) == 0      # silence stays silence
    assert torch.equal(augment.freq_warp(x, rng=rng, max_stretch=0.0), x)
    with pytest.raises(SerlibError, match="max_stretch=1.5"):
        augment.freq_warp(x, rng=rng, max_stretch=1.5)
    with pytest.raises(SerlibError, match="freq_warp"):
        TrainConfig(freq_warp=-0.1)


def test_crop_windows_cover_the_clip():
    assert augment.crop_starts(5, 10) == [0]
    assert augment.crop_starts(20, 10) == [0, 5, 10]
    starts = augment.crop_starts(23, 10)
    assert starts[0] == 0 and starts[-1] + 10 == 23
    assert all(b - a <= 5 for a, b in zip(starts, starts[1:], strict=False))


def test_clip_frames_and_utterance_normalisation():
    frames = augment.clip_frames([2.0, 0.0, 10.0], sample_rate=22050, hop_length=512,
                                 max_seconds=6.0, n_frames=259)
    # 2 s: frames centred on samples 0, 512, ... < 44100; 1 frame at least; 6 s at most
    assert frames.tolist() == [87, 1, 259]
    with pytest.raises(SerlibError, match="durations"):
        augment.clip_frames([-1.0], sample_rate=22050, hop_length=512, max_seconds=6.0,
                            n_frames=259)
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, size=(2, 4, 12)).astype(np.float32)
    out = augment.utterance_normalise(x, np.array([12, 7]))
    np.testing.assert_allclose(out[0].mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(out[0].std(-1), 1, atol=1e-4)
    np.testing.assert_allclose(out[1, :, :7].mean(-1), 0, atol=1e-5)
    assert (out[1, :, 7:] == 0).all()


def test_speaker_normalisation_uses_each_speakers_own_frames_only():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, size=(6, 4, 12)).astype(np.float32)
    lengths, speakers = np.array([12, 7, 9, 12, 5, 10]), np.array(["a", "a", "a", "b", "b", "b"])
    out = augment.speaker_normalise(x, lengths, speakers)
    keep = np.arange(12)[None, :] < lengths[:, None]                     # (N, T)
    for speaker in ("a", "b"):
        rows = speakers == speaker
        frames = out[rows].transpose(1, 0, 2)[:, keep[rows]]              # (F, frames)
        np.testing.assert_allclose(frames.mean(-1), 0, atol=1e-5)
        np.testing.assert_allclose(frames.std(-1), 1, atol=1e-4)
    assert (out[1, :, 7:] == 0).all() and (out[4, :, 5:] == 0).all()
    # a louder speaker with another timbre (gain and offset per band) gives the same input,
    # and the other speaker is untouched; per-utterance statistics would differ per clip
    louder = x.copy()
    louder[3:] = x[3:] * np.array([2.0, 3.0, 0.5, 1.0])[None, :, None] + 5.0
    again = augment.speaker_normalise(louder, lengths, speakers)
    np.testing.assert_allclose(again, out, atol=1e-4)
    # each clip keeps its place among its speaker's clips (not normalised on its own)
    assert not np.allclose(out[:3], augment.utterance_normalise(x[:3], lengths[:3]), atol=1e-2)


def test_speaker_normalised_fold_predicts_a_test_speaker_whatever_its_level():
    """A test speaker is normalised by its own (unlabelled) clips: scaling and shifting its
    features per band changes none of its predictions; without speakers the run is refused."""
    features, labels = arrays()
    speakers = np.repeat(["a", "b", "c", "d"], 12)              # test part: speaker d alone
    lengths = np.tile([8, 6, 5], 16)
    config = TrainConfig(folds=2, epochs=2, width=2, batch_size=8, device="cpu",
                         normalisation="speaker", own_frames=True)
    first = fold(config, features, labels, lengths=lengths, speakers=speakers)
    louder = features.copy()
    louder[36:] = features[36:] * 1.7 + 4.0
    second = fold(config, louder, labels, lengths=lengths, speakers=speakers)
    np.testing.assert_allclose(second["probabilities"], first["probabilities"], atol=1e-5)
    assert first["history"] == second["history"]
    # the speaker-disjoint validation split's groups also serve as the speakers
    by_groups = fold(config, features, labels, lengths=lengths, groups=speakers)
    both = fold(config, features, labels, lengths=lengths, groups=speakers, speakers=speakers)
    np.testing.assert_array_equal(by_groups["probabilities"], both["probabilities"])
    corpus = fold(TrainConfig(**{**config.to_dict(), "normalisation": "corpus"}), louder,
                  labels, lengths=lengths, speakers=speakers)
    assert np.abs(corpus["probabilities"] - first["probabilities"]).max() > 1e-3
    with pytest.raises(SerlibError, match="normalisation='speaker' needs each clip's speaker"):
        fold(config, features, labels, lengths=lengths)
    with pytest.raises(SerlibError, match="normalisation='loudness'.*corpus, utterance, speaker"):
        TrainConfig(normalisation="loudness")


RECIPE_OPTIONS = [
    dict(own_frames=True), dict(pooling="meanstd"), dict(normalisation="utterance"),
    dict(crop_frames=5), dict(time_masks=1, time_mask_frames=2), dict(freq_masks=1,
                                                                      freq_mask_bins=2),
    dict(time_shift_frames=2), dict(freq_warp=0.2), dict(mixup=0.4), dict(dropout=0.5),
    dict(label_smoothing=0.1),
    dict(warmup_epochs=1), dict(class_weights="inverse"), dict(class_weights="effective"),
    dict(sampler="balanced"), dict(select_epoch="last"), dict(ensemble=2),
]


@pytest.mark.parametrize("option", RECIPE_OPTIONS, ids=lambda o: "-".join(map(str, o.items())))
def test_each_option_trains_deterministically_and_changes_the_run(option):
    features, _ = arrays()
    labels = np.minimum(np.arange(len(features)) % 6, 3)     # imbalanced: 3 is half the clips
    lengths = np.tile([8, 6, 5], len(labels) // 3)
    base = TrainConfig(folds=2, epochs=3, width=2, batch_size=8, device="cpu")
    config = TrainConfig(**{**base.to_dict(), **option})
    first = fold(config, features, labels, lengths=lengths)
    second = fold(config, features, labels, lengths=lengths)
    np.testing.assert_array_equal(first["probabilities"], second["probabilities"])
    assert first["history"] == second["history"]
    paper = fold(base, features, labels, lengths=lengths)
    assert first["history"] != paper["history"] or not np.array_equal(
        first["probabilities"], paper["probabilities"])


def test_ensemble_predicts_the_mean_probability_of_its_members():
    torch.manual_seed(0)
    single = build_model(n_classes=4, width=2, members=1)
    assert type(single) is ResNet18
    torch.manual_seed(0)
    model = build_model(n_classes=4, width=2, pooling="meanstd", members=3).eval()
    assert isinstance(model, Ensemble) and len(model.members) == 3
    x, lengths = torch.randn(5, 1, 6, 8), torch.tensor([8, 7, 5, 3, 1])
    with torch.no_grad():
        for lb in (None, lengths):
            members = model.member_logits(x, lb)                        # (3, 5, 4)
            assert members.shape == (3, 5, 4)
            assert not torch.equal(members[0], members[1])            # initialised apart
            want = torch.softmax(members, dim=-1).mean(0)
            torch.testing.assert_close(torch.softmax(model(x, lb), dim=-1), want)
    with pytest.raises(SerlibError, match="at least 2 members"):
        Ensemble([single])
    with pytest.raises(SerlibError, match="ensemble"):
        TrainConfig(ensemble=0)


def test_ensemble_fold_trains_each_member_as_alone():
    """Members share the batches but not their parameters: the first member of a 2-member
    ensemble, whose initialisation is the single network's, ends where the single one does
    (the sum of the members' losses has the same gradient for each member's weights)."""
    features, labels = arrays()
    # the final epoch's weights (the best epoch by validation could differ between the two)
    base = TrainConfig(folds=2, epochs=2, width=2, batch_size=8, device="cpu",
                       select_epoch="last")
    single = fold(base, features, labels)
    pair = fold(TrainConfig(**{**base.to_dict(), "ensemble": 2}), features, labels)
    first = {k[len("members.0."):]: v for k, v in pair["state"].items()
             if k.startswith("members.0.")}
    assert first.keys() == single["state"].keys()
    for name, value in single["state"].items():
        torch.testing.assert_close(first[name], value, rtol=1e-5, atol=1e-6)


def test_select_epoch_last_keeps_the_final_epoch():
    features, labels = arrays()
    config = TrainConfig(folds=2, epochs=4, width=2, batch_size=8, device="cpu",
                         select_epoch="last", patience=1)
    result = fold(config, features, labels)
    assert result["best_epoch"] == 4 and len(result["history"]) == 4   # no early stop


def test_balanced_epoch_has_balanced_class_counts():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 8 + [3] * 2)
    data = training._Batches(np.zeros((100, 2, 3), np.float32), labels, device=CPU)
    order = data.balanced_order(torch.Generator().manual_seed(0))
    assert len(order) == 100                                   # same epoch length
    counts = np.bincount(labels[order.numpy()], minlength=4)
    # each class is drawn with probability 1/4: 25 +- 3 standard deviations (4.3)
    assert (np.abs(counts - 25) <= 13).all(), counts
    again = data.balanced_order(torch.Generator().manual_seed(0))
    assert torch.equal(order, again)
    # over many epochs the class shares converge to 1/4 each
    many = torch.cat([data.balanced_order(torch.Generator().manual_seed(s)) for s in range(50)])
    shares = np.bincount(labels[many.numpy()], minlength=4) / len(many)
    np.testing.assert_allclose(shares, 0.25, atol=0.02)


def test_class_weights():
    labels = [0] * 6 + [1] * 2 + [2] * 2 + [3] * 2
    inverse = class_weights(labels, n_classes=4, kind="inverse")
    torch.testing.assert_close(inverse, torch.tensor([12 / 24, 12 / 8, 12 / 8, 12 / 8]))
    effective = class_weights(labels, n_classes=4, kind="effective", beta=0.9)
    raw = (1 - 0.9) / (1 - 0.9 ** torch.tensor([6.0, 2, 2, 2]))
    torch.testing.assert_close(effective, (raw * 4 / raw.sum()).float())
    assert effective[0] < effective[1]
    with pytest.raises(SerlibError, match="counts per class"):
        class_weights([0, 1, 2], n_classes=4, kind="inverse")
    with pytest.raises(SerlibError, match="alpha"):
        TrainConfig(class_weights="inverse", alpha=(1.0, 1.0, 1.0, 1.0))


def test_label_smoothing_matches_torch_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(8, 4), torch.randint(0, 4, (8,))
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0, label_smoothing=0.2),
        torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.2))
    # with no smoothing the focal path is unchanged
    torch.testing.assert_close(focal_loss(logits, target, gamma=2, label_smoothing=0.0),
                               focal_loss(logits, target, gamma=2))


def test_warmup_schedule():
    config = TrainConfig(epochs=6, warmup_epochs=2, lr=1.0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = training._scheduler(optimizer, config)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(lrs[:3], [1 / 3, 2 / 3, 1.0])
    assert lrs[3] < lrs[2] and lrs[5] < lrs[4]
    with pytest.raises(SerlibError, match="warmup_epochs"):
        TrainConfig(epochs=3, warmup_epochs=3)


def test_cross_validation_run_with_the_issue_12_options_resumes(synthetic_selection, tmp_path,
                                                                 monkeypatch):
    from serlib.cli import main
    from serlib.corpora import write_selection

    csv = write_selection(synthetic_selection, tmp_path / "selection.csv")
    args = ["cv", "--selection", str(csv), "--feature", "mfcc", "--folds", "2", "--epochs",
            "2", "--width", "4", "--batch-size", "16", "--device", "cpu", "--class-weights",
            "inverse", "--sampler", "balanced", "--select-epoch", "last", "--quiet",
            "--cache", str(tmp_path / "cache")]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())["train"]
    assert (config["class_weights"], config["sampler"], config["select_epoch"]) == (
        "inverse", "balanced", "last")
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    # interrupted after fold 1, resumed: the same numbers as the uninterrupted run
    original = training.train_fold

    def interrupt(*a, fold, **k):
        if fold == 2:
            raise KeyboardInterrupt
        return original(*a, fold=fold, **k)

    monkeypatch.setattr(training, "train_fold", interrupt)
    assert main([*args, "--out", str(tmp_path / "b")]) == 130
    monkeypatch.setattr(training, "train_fold", original)
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    resumed = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert without_timing(resumed["folds"]) == without_timing(first["folds"])
