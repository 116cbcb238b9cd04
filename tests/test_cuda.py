"""The CUDA path of training and features, on a real GPU: ``python -m pytest -m gpu``.

Deselected by default (CI and the project's machines have no GPU); run on a CUDA machine. A
selected test on a machine without CUDA fails, saying so, rather than skipping: asking for
these tests means asking for a GPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from serlib.features import FeatureConfig, extract_corpus, features_from_prepared
from serlib.features.extract import load_prepared
from serlib.features.torch_features import TorchFeatureExtractor
from serlib.models import ResNet18
from serlib.training import (
    TrainConfig,
    _Batches,
    load_checkpoint,
    predict_proba,
    run_cross_validation,
    train_one_epoch,
)

pytestmark = pytest.mark.gpu

# float32 tolerance of the torch path (serlib/features/torch_features.py)
TOLERANCE = {"spectrogram": 1e-4, "mfcc": 1e-3}


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device, and torch sees none here")
    return torch.device("cuda")


def test_batches_live_on_the_gpu_in_channels_last(cuda):
    rng = np.random.default_rng(0)
    data = _Batches(rng.normal(size=(10, 40, 259)).astype(np.float32), rng.integers(0, 4, 10),
                    device=cuda)
    assert data.x.device.type == "cuda" and data.y.device.type == "cuda"
    xb, yb = next(data.batches(4, generator=torch.Generator().manual_seed(0)))
    assert xb.device.type == "cuda" and yb.device.type == "cuda"
    assert xb.shape == (4, 1, 40, 259)
    assert xb.is_contiguous(memory_format=torch.channels_last)
    # the shuffle comes from a CPU generator: the same order as on the CPU
    cpu = _Batches(data.x.cpu().numpy()[:, 0], data.y.cpu().numpy(), device=torch.device("cpu"))
    xc, _ = next(cpu.batches(4, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(xb.cpu(), xc)


def test_training_step_runs_in_bf16_autocast_with_float32_loss(cuda):
    torch.manual_seed(0)
    model = ResNet18(width=8).to(cuda, memory_format=torch.channels_last)
    seen = {}
    model.stem[0].register_forward_hook(
        lambda module, inputs, output: seen.update(dtype=output.dtype))
    rng = np.random.default_rng(0)
    data = _Batches(rng.normal(size=(64, 40, 259)).astype(np.float32), rng.integers(0, 4, 64),
                    device=cuda)
    losses = []

    def criterion(logits, target):
        from serlib.losses import focal_loss

        loss = focal_loss(logits.float(), target, gamma=2.0)
        losses.append(loss.dtype)
        return loss

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    mean_loss = train_one_epoch(model, data, optimizer=optimizer, criterion=criterion,
                                batch_size=16, generator=torch.Generator().manual_seed(0),
                                device=cuda)
    assert seen["dtype"] == torch.bfloat16          # convolutions ran under bf16 autocast
    assert set(losses) == {torch.float32}           # the loss is computed in float32
    assert np.isfinite(mean_loss) and mean_loss > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights fp32
    probs = predict_proba(model, data, batch_size=32, device=cuda)
    assert probs.shape == (64, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("kind", ["spectrogram", "mfcc"])
def test_torch_features_on_the_gpu_match_librosa(cuda, synthetic_selection, kind):
    config = FeatureConfig.preset(kind)
    paths = synthetic_selection["path"].tolist()[:16]
    prepared = np.stack([load_prepared(p, config=config) for p in paths])  # (B, n_samples)
    reference = np.stack([features_from_prepared(y, config=config) for y in prepared])
    module = TorchFeatureExtractor(config).to(cuda)
    with torch.no_grad():
        ours = module(torch.from_numpy(prepared).to(cuda)).cpu().numpy()
    assert ours.shape == reference.shape == (16, *config.shape)
    assert np.abs(ours - reference).max() <= TOLERANCE[kind]


def test_extract_corpus_torch_backend_on_cuda(cuda, synthetic_selection):
    config = FeatureConfig.preset("mfcc")
    selection = synthetic_selection.head(24)
    on_gpu = extract_corpus(selection, config=config, cache_dir=None, progress=False,
                            backend="torch", device="cuda", batch_size=8)
    on_cpu = extract_corpus(selection, config=config, cache_dir=None, progress=False)
    assert on_gpu.utterance_ids == on_cpu.utterance_ids
    assert np.abs(on_gpu.features - on_cpu.features).max() <= TOLERANCE["mfcc"]


def test_cross_validation_on_cuda_leaves_every_output(cuda, synthetic_selection,
                                                       tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_run")
    config = TrainConfig(feature="mfcc", folds=2, epochs=3, width=8, batch_size=16,
                         device="auto")
    summary = run_cross_validation(synthetic_selection, config=config, out_dir=out,
                                   cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    assert summary["device"].startswith("cuda (")        # "auto" chose the GPU
    assert summary == json.loads((out / "summary.json").read_text())
    for k in (1, 2):
        for name in ("checkpoint.pt", "metrics.json", "predictions.csv", "history.csv"):
            assert (out / f"fold_{k}" / name).is_file()
    assert np.sum(summary["confusion"]) == len(synthetic_selection)
    # a checkpoint written on the GPU holds CPU tensors only (it loads on a machine without
    # CUDA with no map_location), weights only
    checkpoint = torch.load(out / "fold_1" / "checkpoint.pt", weights_only=True)
    tensors = [*checkpoint["model"].values(),
               *(v for state in checkpoint["optimizer"]["state"].values()
                 for v in state.values() if isinstance(v, torch.Tensor))]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    model, _ = load_checkpoint(out / "fold_1" / "checkpoint.pt")
    assert model(torch.zeros(2, 1, 40, 259)).shape == (2, 4)
    # a rerun trains nothing and gives the same summary
    again = run_cross_validation(synthetic_selection, config=config, out_dir=out,
                                 cache_dir=None, progress=False)
    assert again["folds"] == summary["folds"]


def test_cudnn_autotuning_during_training_only(cuda, monkeypatch):
    import serlib.training as training

    seen = []
    original = training._train_epochs

    def spy(*args, **kwargs):
        seen.append(torch.backends.cudnn.benchmark)
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "_train_epochs", spy)
    torch.backends.cudnn.benchmark = False
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 40, 259)).astype(np.float32)
    labels = np.arange(40) % 4
    config = TrainConfig(feature="mfcc", folds=2, epochs=1, width=4, batch_size=8)
    training.cross_validate_arrays(features, labels, config=config, device=cuda, progress=False)
    assert seen == [True, True]                      # on while each fold trains
    assert torch.backends.cudnn.benchmark is False   # restored afterwards


def test_amp_off_trains_in_float32(cuda):
    torch.manual_seed(0)
    model = ResNet18(width=8).to(cuda, memory_format=torch.channels_last)
    seen = set()
    model.stem[0].register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    rng = np.random.default_rng(0)
    data = _Batches(rng.normal(size=(32, 40, 259)).astype(np.float32), rng.integers(0, 4, 32),
                    device=cuda)
    from serlib.losses import focal_loss

    train_one_epoch(model, data, optimizer=torch.optim.Adam(model.parameters()),
                    criterion=lambda logits, y: focal_loss(logits.float(), y, gamma=2.0),
                    batch_size=16, generator=torch.Generator().manual_seed(0), device=cuda,
                    amp=False)
    predict_proba(model, data, batch_size=16, device=cuda, amp=False)
    assert seen == {torch.float32}


# ----------------------------------------------------------------------------- serlib.batched
def _learnable_folds(n: int = 120, shape=(40, 64)):
    import pandas as pd

    from serlib.splits import make_folds

    rng = np.random.default_rng(0)
    labels = rng.choice(4, size=n, p=[0.4, 0.2, 0.25, 0.15])
    x = rng.normal(size=(n, *shape)).astype(np.float32) + 0.6 * labels[:, None, None]
    folds = make_folds(pd.DataFrame({"label": labels}), protocol="stratified", n_folds=3,
                       seed=0)
    return x, labels, folds


def _members(x, labels, folds, configs):
    from serlib import batched

    return [batched.Member(key=k, config=config, features=x, labels=labels, train_idx=tr,
                           test_idx=te, fold=k)
            for k, ((tr, te), config) in enumerate(zip(folds, configs, strict=True), start=1)]


@pytest.fixture
def no_tf32(monkeypatch):
    """float32 convolutions and matmuls in full float32 (no TF32), so that the grouped and the
    plain network differ by float32 rounding only."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def test_batched_folds_on_cuda_equal_folds_trained_alone(cuda, no_tf32):
    from serlib import batched, training

    x, labels, folds = _learnable_folds()
    config = TrainConfig(feature="mfcc", folds=3, epochs=3, width=8, batch_size=16,
                         amp=False, device="cuda")
    alone = {r["fold"]: r for r in training.cross_validate_arrays(
        x, labels, config=config, folds=folds, device=cuda, progress=False)}
    together = batched.train_members(_members(x, labels, folds, [config] * 3), device=cuda,
                                     progress=False)
    for k, result in together.items():
        assert not isinstance(result, BaseException), result
        # float32 rounding of grouped vs plain kernels, amplified by the first Adam steps
        np.testing.assert_allclose(result["probabilities"], alone[k]["probabilities"],
                                   atol=3e-2)
        assert result["best_epoch"] == alone[k]["best_epoch"]
        # the member's checkpoint is the plain network's, on the CPU
        assert all(t.device.type == "cpu" for t in result["state"].values())
        assert set(result["state"]) == set(alone[k]["state"])


def test_batched_bf16_group_on_cuda_learns(cuda):
    from serlib import batched

    x, labels, folds = _learnable_folds()
    config = TrainConfig(feature="mfcc", folds=3, epochs=4, width=8, batch_size=16,
                         amp=True, device="cuda")
    together = batched.train_members(_members(x, labels, folds, [config] * 3), device=cuda,
                                     progress=False)
    for result in together.values():
        assert not isinstance(result, BaseException), result
        assert np.isfinite(result["probabilities"]).all()
        assert result["metrics"]["ua"] > 0.4            # chance is 0.25


def test_compiled_batched_group_masks_a_member_that_ends_and_matches_eager(cuda, no_tf32):
    """compile=True (CUDA graphs): a member whose epochs end first is masked, not removed;
    every member's result equals the eager group's to float tolerance."""
    from serlib import batched

    x, labels, folds = _learnable_folds()
    configs = [TrainConfig(feature="mfcc", folds=3, epochs=e, width=8, batch_size=16,
                           amp=False, device="cuda") for e in (2, 4, 4)]
    ended = []
    eager = batched.train_members(_members(x, labels, folds, configs), device=cuda,
                                  progress=False)
    compiled = batched.train_members(_members(x, labels, folds, configs), device=cuda,
                                     compile=True, progress=False,
                                     on_end=lambda m, r: ended.append(m.fold))
    assert ended[0] == 1                                 # the 2-epoch member ended first
    for k, result in compiled.items():
        assert not isinstance(result, BaseException), result
        assert len(result["history"]) == configs[k - 1].epochs
        np.testing.assert_allclose(result["probabilities"], eager[k]["probabilities"],
                                   atol=3e-2)


def test_masked_members_on_cuda_give_what_a_rebuilt_group_gives(cuda, no_tf32):
    """CUDA's default masks a member that ends (regroup_at=0.5); rebuilding at every end
    (regroup_at=1.0, the CPU's default) gives the same results to float tolerance."""
    from serlib import batched

    x, labels, folds = _learnable_folds()
    configs = [TrainConfig(feature="mfcc", folds=3, epochs=e, width=8, batch_size=16,
                           amp=False, device="cuda") for e in (2, 4, 4)]
    masked = batched.train_members(_members(x, labels, folds, configs), device=cuda,
                                   progress=False)
    rebuilt = batched.train_members(_members(x, labels, folds, configs), device=cuda,
                                    regroup_at=1.0, progress=False)
    for k, result in masked.items():
        assert len(result["history"]) == configs[k - 1].epochs
        np.testing.assert_allclose(result["probabilities"], rebuilt[k]["probabilities"],
                                   atol=3e-2)
