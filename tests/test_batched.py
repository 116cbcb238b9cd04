"""Folds trained side by side as one grouped network (serlib.batched, issue 23): each fold as
if trained alone, its own early stopping and checkpoint, the same run folders, resumable."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from serlib import batched, training
from serlib import runs as run_folders
from serlib.config import TrainConfig
from serlib.errors import SerlibError
from serlib.grid import run_grid
from serlib.labels import PAPER_CLASSES
from serlib.models import ResNet18
from serlib.splits import make_folds

ARRAYS = TrainConfig(feature="mfcc", folds=3, epochs=3, width=4, batch_size=16, device="cpu",
                     patience=1)
RUN = TrainConfig(feature="mfcc", folds=3, epochs=2, width=4, batch_size=8, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")   # torch on one thread (conftest.py)


@pytest.fixture(scope="module")
def arrays():
    """150 seeded clips (40 x 64) whose class shifts their level; 3 stratified folds whose
    training parts differ in size (a short last batch for some folds only)."""
    rng = np.random.default_rng(0)
    labels = rng.choice(4, size=150, p=[0.45, 0.15, 0.25, 0.15])
    x = rng.normal(size=(150, 40, 64)).astype(np.float32) + 0.3 * labels[:, None, None]
    folds = make_folds(pd.DataFrame({"label": labels}), protocol="stratified", n_folds=3,
                       seed=0)
    return x, labels, folds


@pytest.fixture(scope="module")
def both_ways(arrays):
    x, labels, folds = arrays
    alone = {r["fold"]: r for r in training.cross_validate_arrays(
        x, labels, config=ARRAYS, folds=folds, device="cpu", progress=False)}
    ended = []
    members = [batched.Member(key=k, config=ARRAYS, features=x, labels=labels, train_idx=tr,
                              test_idx=te, fold=k) for k, (tr, te) in enumerate(folds, 1)]
    together = batched.train_members(members, device="cpu", progress=False,
                                     on_end=lambda m, r: ended.append((m.fold, len(r["history"]))))
    return alone, together, ended


def assert_same_predictions(p_alone: np.ndarray, p_together: np.ndarray) -> None:
    """Probabilities to float tolerance; the predicted class the same wherever the top two
    classes are not within that tolerance of each other."""
    np.testing.assert_allclose(p_together, p_alone, atol=5e-3)
    top2 = np.sort(p_alone, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-2
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(p_together.argmax(1)[clear], p_alone.argmax(1)[clear])


def test_what_the_batched_path_supports_and_why_not():
    assert batched.supports_batched(TrainConfig())
    assert batched.supports_batched(TrainConfig(loss="softmax", optimizer="sgd",
                                                class_weights="inverse", sampler="balanced",
                                                select_epoch="last", protocol="session"))
    strong = TrainConfig.from_recipe("strong")
    assert not batched.supports_batched(strong)
    assert "own frames" in batched.batched_unsupported(strong)
    for field, value, word in (("ensemble", 3, "ensemble"), ("dropout", 0.2, "dropout"),
                               ("mixup", 0.4, "augments"), ("pooling", "meanstd", "pooling"),
                               ("own_frames", True, "own frames")):
        reason = batched.batched_unsupported(TrainConfig(**{field: value}))
        assert reason is not None and word in reason, (field, reason)
    with pytest.raises(SerlibError, match="TrainConfig"):
        batched.supports_batched({"width": 8})


def test_grouped_network_member_k_is_member_ks_own_network():
    torch.manual_seed(0)
    models = [ResNet18(width=4).eval() for _ in range(3)]
    for m in models:   # non-trivial running statistics
        for module in m.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2)
    x = torch.randn(5, 3, 40, 32)                                # member k's batch: channel k
    expected = [m(x[:, k:k + 1]) for k, m in enumerate(models)]
    stack = batched._Stack(models[0], models, device=torch.device("cpu"))
    out = stack.net.eval()(x)                                    # (5, 3, 4)
    assert out.shape == (5, 3, 4)
    for k in range(3):
        torch.testing.assert_close(out[:, k], expected[k], atol=1e-5, rtol=1e-4)
    # the members' modules are views of the grouped one: a change there is seen here
    with torch.no_grad():
        stack.net.fc.bias.add_(1.0)
    torch.testing.assert_close(models[1](x[:, 1:2]), expected[1] + 1, atol=1e-5, rtol=1e-4)


def test_batched_folds_equal_folds_trained_alone(both_ways):
    alone, together, _ = both_ways
    assert sorted(together) == [1, 2, 3]
    for fold, a in alone.items():
        b = together[fold]
        assert b["best_epoch"] == a["best_epoch"]
        assert (b["n_fit"], b["n_val"]) == (a["n_fit"], a["n_val"])
        np.testing.assert_allclose(b["mean"], a["mean"], rtol=1e-6)   # numpy: alignment
        assert [h["epoch"] for h in b["history"]] == [h["epoch"] for h in a["history"]]
        for key in ("train_loss", "val_loss", "lr"):
            np.testing.assert_allclose([h[key] for h in b["history"]],
                                       [h[key] for h in a["history"]], rtol=1e-3, err_msg=key)
        assert_same_predictions(a["probabilities"], b["probabilities"])
        # the checkpoint has the per-fold layout: names, shapes, strides, optimizer state
        assert list(b["state"]) == list(a["state"])
        for name, value in a["state"].items():
            assert b["state"][name].shape == value.shape
            assert b["state"][name].stride() == value.stride(), name
            torch.testing.assert_close(b["state"][name].float(), value.float(), atol=2e-3,
                                       rtol=1e-2)
        assert b["optimizer"]["param_groups"] == a["optimizer"]["param_groups"]
        assert b["optimizer"]["state"][0]["step"] == a["optimizer"]["state"][0]["step"]
        assert set(b["optimizer"]["state"][0]) == set(a["optimizer"]["state"][0])


@pytest.mark.parametrize("regroup_at", [0.0, 0.5])
def test_masked_members_give_what_a_rebuilt_group_gives(both_ways, arrays, regroup_at):
    """A member that ends is masked (zeros in, no step) instead of the network being rebuilt
    (CUDA's default, 0.5; compile's, 0): the members still training get the same results."""
    _, rebuilt, ended = both_ways
    assert len({epochs for _, epochs in ended}) > 1        # members end at different epochs
    x, labels, folds = arrays
    members = [batched.Member(key=k, config=ARRAYS, features=x, labels=labels, train_idx=tr,
                              test_idx=te, fold=k) for k, (tr, te) in enumerate(folds, 1)]
    masked = batched.train_members(members, device="cpu", progress=False,
                                   regroup_at=regroup_at)
    for k, result in masked.items():
        assert result["best_epoch"] == rebuilt[k]["best_epoch"]
        assert len(result["history"]) == len(rebuilt[k]["history"])
        assert_same_predictions(rebuilt[k]["probabilities"], result["probabilities"])


def test_regroup_at_outside_0_1_is_refused(arrays):
    x, labels, folds = arrays
    member = batched.Member(key=1, config=ARRAYS, features=x, labels=labels,
                            train_idx=folds[0][0], test_idx=folds[0][1], fold=1)
    with pytest.raises(SerlibError, match=r"regroup_at=1.5 must be between 0 and 1"):
        batched.train_members([member], device="cpu", regroup_at=1.5, progress=False)


def test_members_time_is_their_share_of_the_groups_time(arrays):
    """A run's wall_seconds sums its folds' train_seconds: in a group each member gets its
    share of every epoch it trained in, so the shares add up to the group's wall time (not K
    times it)."""
    import time

    x, labels, folds = arrays
    members = [batched.Member(key=k, config=ARRAYS, features=x, labels=labels, train_idx=tr,
                              test_idx=te, fold=k) for k, (tr, te) in enumerate(folds, 1)]
    started = time.perf_counter()
    results = batched.train_members(members, device="cpu", progress=False)
    wall = time.perf_counter() - started
    shares = [r["train_seconds"] for r in results.values()]
    assert all(s > 0 for s in shares)
    assert 0.5 * wall < sum(shares) <= wall


def test_member_that_stops_early_keeps_its_best_while_others_go_on(both_ways):
    alone, together, ended = both_ways
    lengths = {fold: len(r["history"]) for fold, r in together.items()}
    assert min(lengths.values()) < ARRAYS.epochs == max(lengths.values())   # fixture's folds
    # members end in the order their training ends; a stopped one is written first
    assert [n for _, n in ended] == sorted(n for _, n in ended)
    for fold, r in together.items():
        if lengths[fold] < ARRAYS.epochs:                     # stopped by patience
            assert lengths[fold] == r["best_epoch"] + ARRAYS.patience
            # its checkpoint is its best epoch's (the per-fold one), not a later state
            for name, value in alone[fold]["state"].items():
                torch.testing.assert_close(r["state"][name].float(), value.float(),
                                           atol=2e-3, rtol=1e-2)
            steps = r["optimizer"]["state"][0]["step"]
            assert steps == alone[fold]["optimizer"]["state"][0]["step"]


def test_members_must_share_the_input_and_network(arrays):
    x, labels, folds = arrays
    (tr, te), other = folds[0], TrainConfig(**{**ARRAYS.to_dict(), "width": 8})
    members = [batched.Member(key=1, config=ARRAYS, features=x, labels=labels, train_idx=tr,
                              test_idx=te, fold=1),
               batched.Member(key=2, config=other, features=x, labels=labels, train_idx=tr,
                              test_idx=te, fold=1)]
    with pytest.raises(SerlibError, match="must share"):
        batched.train_members(members, device="cpu", progress=False)
    strong = batched.Member(key=3, config=TrainConfig.from_recipe("strong", device="cpu"),
                            features=x, labels=labels, train_idx=tr, test_idx=te, fold=1)
    with pytest.raises(SerlibError, match="cannot be batched: it uses each clip's own frames"):
        batched.train_members([strong], device="cpu", progress=False)


def test_group_tasks_batches_what_it_can_and_fills_the_workers():
    from serlib.grid import FoldTask

    def task(run, fold, config):
        return FoldTask(run=run, fold=fold, config=config, selection="s.csv", run_dir=run,
                        cache_dir="c")

    spec = TrainConfig(feature="spectrogram")
    tasks = ([task("mfcc_focal", k, TrainConfig()) for k in range(1, 6)]
             + [task("mfcc_softmax", k, TrainConfig(loss="softmax")) for k in range(1, 6)]
             + [task("spec", k, spec) for k in range(1, 6)]
             + [task("strong", 1, TrainConfig.from_recipe("strong"))])
    groups = batched.group_tasks(tasks, workers=3)
    assert sorted(len(g) for g in groups) == [1, 5, 5, 5]
    assert [g[0].run for g in groups if len(g) == 1] == ["strong"]
    for group in groups:
        assert len({batched.stack_key(t.config) for t in group}) == 1
    one_worker = batched.group_tasks(tasks, workers=1)
    assert sorted(len(g) for g in one_worker) == [1, 5, 10]     # mfcc runs share a network


# ----------------------------------------------------------------------------- run folders
@pytest.fixture(scope="module")
def per_fold_run(tones, tmp_path_factory):
    out = tmp_path_factory.mktemp("per_fold")
    summary = training.run_cross_validation(tones, config=RUN, out_dir=out / "mfcc_focal",
                                            progress=False)
    return out / "mfcc_focal", summary


def assert_same_run_folder(batched_dir, per_fold_dir):
    names = sorted(p.name for p in per_fold_dir.iterdir())
    assert sorted(p.name for p in batched_dir.iterdir()) == names
    for k in range(1, RUN.folds + 1):
        a, b = per_fold_dir / f"fold_{k}", batched_dir / f"fold_{k}"
        assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in a.iterdir())
        ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
        assert list(mb) == list(ma)
        assert {k_: mb[k_] for k_ in ("fold", "best_epoch", "n_train", "n_val", "n_test")} == \
            {k_: ma[k_] for k_ in ("fold", "best_epoch", "n_train", "n_val", "n_test")}
        pa, pb = (run_folders.read_run_csv(d / "predictions.csv") for d in (a, b))
        assert list(pb.columns) == list(pa.columns)
        assert pb["utterance_id"].tolist() == pa["utterance_id"].tolist()
        probs = [f"p_{c}" for c in PAPER_CLASSES]
        assert_same_predictions(pa[probs].to_numpy(), pb[probs].to_numpy())
        ha, hb = (pd.read_csv(d / "history.csv") for d in (a, b))
        assert list(hb.columns) == list(ha.columns) and len(hb) == len(ha)
        ca, cb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (a, b))
        assert list(cb) == list(ca) and list(cb["model"]) == list(ca["model"])
        assert cb["train_config"] == ca["train_config"]
        model, _ = training.load_checkpoint(b / "checkpoint.pt")   # loads as a plain fold
        assert isinstance(model, ResNet18)


def test_batched_grid_writes_the_per_fold_run_folder(tones, per_fold_run, tmp_path, capsys):
    per_fold_dir, summary = per_fold_run
    result = run_grid([("mfcc_focal", RUN)], selection=tones, cache_dir=tmp_path / "cache",
                      runs_dir=tmp_path / "runs", engine="local", jobs=1, progress=True,
                      batched=True)
    assert result.ok and result.trained == RUN.folds
    assert "[grid] batched: 3 fold(s) in 1 group(s)" in capsys.readouterr().err
    assert_same_run_folder(tmp_path / "runs" / "mfcc_focal", per_fold_dir)
    got = result.summaries["mfcc_focal"]
    assert set(got) == set(summary) and got["n_folds"] == summary["n_folds"]
    assert run_folders.load_run(tmp_path / "runs" / "mfcc_focal").summary["n_folds"] == 3


def test_cpu_grid_groups_at_most_cpu_max_members(tones, tmp_path, capsys, monkeypatch):
    """On the CPU the grid caps a group at batched.CPU_MAX_MEMBERS (where grouping pays
    there), not at the GPU's MAX_MEMBERS."""
    monkeypatch.setattr(batched, "CPU_MAX_MEMBERS", 2)
    result = run_grid([("mfcc_focal", RUN)], selection=tones, cache_dir=tmp_path / "cache",
                      runs_dir=tmp_path / "runs", engine="local", jobs=1, progress=True,
                      batched=True)
    assert result.ok and result.trained == RUN.folds
    assert "[grid] batched: 3 fold(s) in 2 group(s) (largest 2" in capsys.readouterr().err


def test_killed_batched_group_resumes_to_the_same_results(tones, per_fold_run, tmp_path,
                                                          monkeypatch):
    per_fold_dir, _ = per_fold_run
    real_write, calls = run_folders.write_fold, []

    def killed_after_one_fold(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) > 1:
            raise KeyboardInterrupt("killed")           # not an Exception: nothing catches it
        return real_write(*args, **kwargs)

    monkeypatch.setattr(run_folders, "write_fold", killed_after_one_fold)
    kwargs = dict(selection=tones, cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs",
                  engine="local", jobs=1, progress=False, batched=True)
    with pytest.raises(KeyboardInterrupt):
        run_grid([("mfcc_focal", RUN)], **kwargs)
    run_dir = tmp_path / "runs" / "mfcc_focal"
    assert sorted(p.name for p in run_dir.glob("fold_*")) == ["fold_1"]
    assert not (run_dir / "summary.json").exists()
    monkeypatch.setattr(run_folders, "write_fold", real_write)
    result = run_grid([("mfcc_focal", RUN)], **kwargs)
    assert result.ok and result.reused == 1 and result.trained == RUN.folds - 1
    assert_same_run_folder(run_dir, per_fold_dir)


def test_train_folds_batched_falls_back_for_what_it_cannot_batch(tones, tmp_path, monkeypatch):
    config = TrainConfig(**{**RUN.to_dict(), "dropout": 0.1, "folds": 2, "epochs": 1})
    setup = training.prepare_run(tones, config=config)
    features = training.load_features(setup, cache_dir=None, progress=False, n_jobs=1)
    called = []
    monkeypatch.setattr(batched, "train_runs_batched", lambda *a, **k: called.append(a))
    run_folders.write_config(tmp_path, setup.resolved, device_type="cpu")
    written = batched.train_folds_batched(setup, features, tmp_path, folds=[1, 2],
                                          progress=False)
    assert sorted(written) == [1, 2] and not called


@pytest.mark.parametrize("flag, expected", [([], None), (["--batched"], True),
                                            (["--no-batched"], False)])
@pytest.mark.parametrize("command", ["grid", "book"])
def test_cli_batched_switch_reaches_the_grid(command, flag, expected, monkeypatch, tmp_path):
    from serlib import book
    from serlib.cli import main

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(book, "run_profile_grid" if command == "grid" else "build_book", fake)
    with pytest.raises(SystemExit):
        main([command, "--out", str(tmp_path), *flag])
    assert seen["batched"] is expected


def test_profile_engine_batched_is_what_the_grid_gets(tmp_path, monkeypatch):
    """``engine: {batched: true}`` in a profile reaches the grid; the call's own switch wins."""
    from serlib import book

    path = tmp_path / "mine.yaml"
    path.write_text("grid: [{feature: mfcc, loss: focal}]\nengine: {batched: true}\n")
    profile = book.Profile.load(path)
    assert profile.engine == {"batched": True}
    seen = []
    monkeypatch.setattr(book, "_select_and_train", lambda *a, **k: seen.append(k["batched"]))
    for switch in (None, False, True):
        book.run_profile_grid(profile, out_dir=tmp_path / "out", batched=switch)
    assert seen == [True, False, True]


def test_batched_folds_without_a_validation_part_equal_folds_trained_alone(arrays):
    x, labels, folds = arrays
    config = TrainConfig(**{**ARRAYS.to_dict(), "val_fraction": 0, "select_epoch": "last",
                            "patience": 0, "epochs": 2})
    alone = {r["fold"]: r for r in training.cross_validate_arrays(
        x, labels, config=config, folds=folds, device="cpu", progress=False)}
    members = [batched.Member(key=k, config=config, features=x, labels=labels, train_idx=tr,
                              test_idx=te, fold=k) for k, (tr, te) in enumerate(folds, 1)]
    together = batched.train_members(members, device="cpu", progress=False)
    for fold, (train_idx, _) in enumerate(folds, 1):
        a, b = alone[fold], together[fold]
        assert a["n_fit"] == b["n_fit"] == len(train_idx) and a["n_val"] == b["n_val"] == 0
        assert all(np.isnan(h["val_ua"]) for h in b["history"]) and b["best_epoch"] == 2
        assert_same_predictions(a["probabilities"], b["probabilities"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_members_gather_from_shared_features_the_per_fold_copies_bit_for_bit(arrays, dtype):
    """The batched path keeps one copy of the features and normalises rows as it gathers them;
    every part of a fold is what the per-fold path's normalised copy holds, to the bit."""
    x, labels, folds = arrays
    x = x.astype(dtype)
    train_idx, test_idx = folds[0]
    cpu = torch.device("cpu")
    copied = training.prepare_fold(x, labels, train_idx, test_idx, config=ARRAYS, fold=1,
                                   device=cpu)
    gathered = training.prepare_fold(x, labels, train_idx, test_idx, config=ARRAYS, fold=1,
                                     device=cpu, shared=torch.from_numpy(x)[:, None])
    for part in ("fit", "val", "test"):
        a, b = getattr(copied, part), getattr(gathered, part)
        assert len(a) == len(b) and torch.equal(a.y, b.y)
        rows = torch.randperm(len(a), generator=torch.Generator().manual_seed(0))[:20]
        assert b.x[rows].dtype == torch.float32 and torch.equal(a.x[rows], b.x[rows]), part
        assert torch.equal(a.x[2:9], b.x[2:9])
    with pytest.raises(SerlibError, match="corpus normalisation and every frame"):
        training.prepare_fold(x, labels, train_idx, test_idx, config=TrainConfig(
            **{**ARRAYS.to_dict(), "normalisation": "utterance"}), fold=1, device=cpu,
            shared=torch.from_numpy(x)[:, None])


def test_heap_allocations_serve_large_blocks_without_fresh_pages():
    """On glibc, inside heap_allocations a freed 64 MB block is reused (no new page faults);
    after it, such a block is mapped afresh again, as glibc does by default."""
    import platform
    import resource

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")

    def faults_of_two_blocks() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(2):
            block = torch.ones(16 * 2**20)                 # 64 MB, every page written
            del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    with batched.heap_allocations(torch.device("cpu")):
        inside = [faults_of_two_blocks() for _ in range(4)]  # the heap grows at first
    after = faults_of_two_blocks()
    assert after > 0 and min(inside) * 4 < after
