"""The training recipe on EmoDB's five speaker-pair folds: screening on validation, final table.

Two modes, both on ``manifest_folds.csv`` (``--protocol session --folds 5``):

- ``--screen NAME ...``: train the named candidate recipes (:data:`CANDIDATES`) on every fold
  and print only their VALIDATION UA (each fold's inner, speaker-disjoint validation split of
  its training part, at the final epoch: every candidate trains a fixed number of epochs, so
  the score is not a maximum over epochs). Test folds are never scored here. With
  ``--nested``, the score is leave-one-pair-out inside each fold's training part instead
  (:func:`inner_folds`: four trainings a fold, every training clip validated once). With
  ``--seeds`` and ``--outer-validation``, it is the UA on the speakers the strong recipe
  would validate on, held out of every candidate's training (:func:`held_out_folds`; round 6:
  a candidate without a validation part is scored the same way).
- ``--fusion-screen`` (rounds 8 and 9, with ``--seeds``): the strong recipe's fusion
  candidates (:data:`FUSIONS`: partner and weight criterion) scored on validation speakers
  only, beside the network and both baselines alone (:func:`fusion_screen`).
- ``--final``: the measured baselines, the chosen recipe (``serlib.config.RECIPES["strong"]``)
  and, with ``--with-paper`` / ``--also``, the paper's recipe and other candidates on the test
  folds: WA, UA, macro-F1, wall and process CPU time, one row each.

Run from the repository root (see benchmarks/README.md for the exact command and the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serlib.augment import clip_frames  # noqa: E402
from serlib.config import RECIPES, TrainConfig  # noqa: E402
from serlib.corpora import load_manifest, select_utterances  # noqa: E402
from serlib.features import FeatureConfig, extract_corpus  # noqa: E402
from serlib.labels import PAPER_CLASSES  # noqa: E402
from serlib.metrics import classification_report_dict  # noqa: E402
from serlib.splits import make_folds  # noqa: E402
from serlib.training import cross_validate_arrays  # noqa: E402

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "shared/data/emodb/manifest_folds.csv"
COMMON = dict(feature="mfcc", protocol="session", folds=5, device="cpu", patience=0)

#: Every recipe screened, in the order tried (fields over COMMON + the TrainConfig defaults).
AUG = dict(time_masks=2, time_mask_frames=10, freq_masks=2, freq_mask_bins=4,
           time_shift_frames=20)
CANDIDATES: dict[str, dict] = {
    # the reference row: the paper recipe at width 16, 30 epochs (fixed epochs)
    "paper-w16": dict(width=16, epochs=30, select_epoch="last"),
    # the clip's own frames only (EmoDB: 87 of 259 frames, a third of the work per step)
    "own-w16": dict(width=16, epochs=30, select_epoch="last", own_frames=True),
    # + mean and std pooling (the statistics the logistic-regression baseline sees)
    "own-w16-meanstd": dict(width=16, epochs=30, select_epoch="last", own_frames=True,
                            pooling="meanstd"),
    # + SpecAugment, time shift, mixup, dropout
    "own-w16-meanstd-aug": dict(width=16, epochs=30, select_epoch="last", own_frames=True,
                                pooling="meanstd", **AUG, mixup=0.4, dropout=0.3),
    "own-w32-meanstd-aug": dict(width=32, epochs=30, select_epoch="last", own_frames=True,
                                pooling="meanstd", **AUG, mixup=0.4, dropout=0.3),
    # second round: width 32 without augmentation, and with the masks and shift only
    "own-w32-meanstd": dict(width=32, epochs=30, select_epoch="last", own_frames=True,
                            pooling="meanstd"),
    "own-w32-meanstd-spec": dict(width=32, epochs=30, select_epoch="last", own_frames=True,
                                 pooling="meanstd", **AUG),
    # third round (a new session): per-utterance normalisation, a longer schedule with smaller
    # batches at width 16, the log-mel spectrogram instead of MFCCs
    "own-w32-meanstd-spec-utt": dict(width=32, epochs=30, select_epoch="last", own_frames=True,
                                     pooling="meanstd", **AUG, normalisation="utterance"),
    "own-w16-meanstd-spec-e60-b16": dict(width=16, epochs=60, batch_size=16,
                                         select_epoch="last", own_frames=True,
                                         pooling="meanstd", **AUG),
    "mel-own-w16-meanstd-spec": dict(feature="spectrogram", width=16, epochs=30,
                                     select_epoch="last", own_frames=True, pooling="meanstd",
                                     **{**AUG, "freq_mask_bins": 12}),
    # the log-mel input at widths 24 and 32, and with a random stretch of the frequency axis
    # (vocal-tract-length-like speaker variety): the round-3 candidates screened, no others
    **{f"mel-own-w{width}-meanstd-spec{tag}": dict(
        feature="spectrogram", width=width, epochs=30, select_epoch="last", own_frames=True,
        pooling="meanstd", **{**AUG, "freq_mask_bins": 12}, **extra)
       for width, tag, extra in (
           (24, "", {}), (32, "", {}), (16, "-warp0.1", {"freq_warp": 0.1}),
           (16, "-warp0.2", {"freq_warp": 0.2}), (24, "-warp0.1", {"freq_warp": 0.1}),
           (32, "-warp0.1", {"freq_warp": 0.1}))},
    # an ensemble of networks per fold (mean probabilities), against one of them alone
    "own-w16-meanstd-spec": dict(width=16, epochs=30, select_epoch="last", own_frames=True,
                                 pooling="meanstd", **AUG),
    "own-w16-meanstd-spec-x4": dict(width=16, epochs=30, select_epoch="last", own_frames=True,
                                    pooling="meanstd", **AUG, ensemble=4),
}
#: Round 4 (a later session, begun after the test folds had been scored once): one change
#: each to the round-3 winner, the loss, regularisation and schedule options not yet tried
#: with the log-mel input. Chosen, like the others, by validation UA only.
_STRONG3 = CANDIDATES["mel-own-w32-meanstd-spec"]
CANDIDATES.update({
    f"mel-own-w32-meanstd-spec-{tag}": {**_STRONG3, **extra} for tag, extra in (
        ("softmax", {"loss": "softmax"}), ("mixup0.2", {"mixup": 0.2}),
        ("ls0.1", {"label_smoothing": 0.1}), ("inverse", {"class_weights": "inverse"}),
        ("drop0.3", {"dropout": 0.3}), ("e40", {"epochs": 40}))})


#: Round 5 (issue 21, a later session): the strong recipe as it is, with a training length of
#: at least 240 optimizer steps (what it takes on EmoDB's 8 training speakers; the cosine
#: schedule stepped per batch), and a seed ensemble of 3. Screened over seeds 0, 1, 2 and
#: training sizes of 8, 6 and 4 speakers per fold (``--seeds``, ``--pairs``).
#: ``strong`` here is the recipe of rounds 3-6 (normalised by the training part's statistics);
#: since round 7, ``RECIPES["strong"]`` is ``strong-speaker``.
_STRONG = {**RECIPES["strong"], "normalisation": "corpus"}
CANDIDATES.update({
    "strong": dict(_STRONG),
    "strong-steps240": {**_STRONG, "min_steps": 240},
    "strong-x3seeds": {**_STRONG, "seed_ensemble": 3},
})
#: Round 6 (issue 21, a later session): the strong recipe trained on the whole training part.
#: It keeps the last epoch of a fixed schedule, so its validation speaker chooses nothing and
#: is only data left out (1 of 8 training speakers, 1 of 4 at the smallest size). Screened
#: with ``--outer-validation`` (both candidates scored on the same held-out speaker, which
#: neither trains on), over seeds 0, 1, 2 and 8, 6 and 4 training speakers per fold.
CANDIDATES.update({
    "strong-whole": {**_STRONG, "val_fraction": 0.0},
})
#: Round 7 (issue 21, a later session): the strong recipe with each clip normalised by its
#: speaker's per-band statistics over all of the speaker's clips (``normalisation="speaker"``;
#: a test speaker's from the speaker's unlabelled test clips). Screened as round 5 (the kept
#: model's UA on each fold's held-out training speaker, itself normalised by its own clips),
#: over seeds 0, 1, 2 and 8, 6 and 4 training speakers per fold. It met the rule: it is
#: ``RECIPES["strong"]`` since.
CANDIDATES.update({
    "strong-speaker": {**_STRONG, "normalisation": "speaker"},
})
assert CANDIDATES["strong-speaker"] == RECIPES["strong"]

#: Round 8 (issue 21, a later session): the strong recipe's fusion partner and what each
#: fold's weight is chosen by (:func:`serlib.fusion.choose_weight`), screened on validation
#: only (``--fusion-screen``): name -> (baseline model, criterion). ``logreg/ua`` is the
#: fusion of rounds 5 to 7.
FUSIONS: dict[str, tuple[str, str]] = {
    "logreg/ua": ("logreg", "ua"),
    "logreg/log-loss": ("logreg", "log-loss"),
    "logreg-speaker/ua": ("logreg-speaker", "ua"),
    "logreg-speaker/log-loss": ("logreg-speaker", "log-loss"),
}


def load(manifest: Path, cache: Path | None, feature: str = "mfcc"):
    selection = select_utterances(load_manifest(manifest))
    feature_config = FeatureConfig.preset(feature)
    store = extract_corpus(selection, config=feature_config, cache_dir=cache, progress=False)
    labels = selection["label"].map(PAPER_CLASSES.index).to_numpy()
    lengths = clip_frames(selection["duration_s"].to_numpy(),
                          sample_rate=feature_config.sample_rate,
                          hop_length=feature_config.hop_length,
                          max_seconds=feature_config.max_seconds,
                          n_frames=feature_config.n_frames)
    folds = make_folds(selection, protocol="session", n_folds=5, seed=0)
    groups = selection["speaker"].astype(str).to_numpy()
    return selection, store.features.astype(np.float32), labels, lengths, folds, groups


_SHARED: dict = {}


def _init_worker(data: tuple) -> None:
    torch.set_num_threads(1)
    _SHARED["data"] = data


def _one_fold(config: TrainConfig, fold: int) -> tuple[dict, float]:
    """Worker: train fold ``fold`` alone with one thread (data sent once per worker)."""
    features, labels, lengths, folds, groups = _SHARED["data"]
    cpu = time.process_time()
    skip = set(range(1, len(folds) + 1)) - {fold}
    [result] = cross_validate_arrays(features, labels, config=config, folds=folds,
                                     groups=groups, lengths=lengths, skip=skip, progress=False)
    result.pop("optimizer", None)
    return result, time.process_time() - cpu


def train(config: TrainConfig, features, labels, lengths, folds, groups, *, jobs: int = 1
          ) -> tuple[list, dict]:
    """Every fold: in this process, or with ``jobs`` spawned workers of one thread each (the
    book's local engine: on 2 cores, 2 x 1 thread beat 1 x 2 threads for narrow networks).
    ``cpu_s`` is the process CPU time of all of them. Spawned, not forked: a worker forked
    after the openSMILE baseline had run in this process crashed in glibc's allocator."""
    wall, cpu = time.perf_counter(), time.process_time()
    if jobs <= 1:
        results = cross_validate_arrays(features, labels, config=config, folds=folds,
                                        groups=groups, lengths=lengths, progress=False)
        worker_cpu = 0.0
    else:
        import multiprocessing

        data = (features, labels, lengths, folds, groups)
        with multiprocessing.get_context("spawn").Pool(jobs, _init_worker, (data,)) as pool:
            out = pool.starmap(_one_fold, [(config, k) for k in range(1, len(folds) + 1)])
            pool.close()
            pool.join()
        results, worker_cpu = [r for r, _ in out], sum(c for _, c in out)
    return results, {"wall_s": time.perf_counter() - wall,
                     "cpu_s": time.process_time() - cpu + worker_cpu}


def inner_folds(folds: list) -> tuple[list, list]:
    """Leave-one-pair-out inside each outer fold's training part: for outer fold k and every
    other fold j, train on the folds other than k and j and validate on fold j (a speaker pair
    of k's training part). Returns the (train_idx, val_idx) pairs and their (k, j) tags; the
    outer test fold k is never used in its own inner folds."""
    pairs, tags = [], []
    for k in range(len(folds)):
        for j in range(len(folds)):
            if j != k:
                train = np.concatenate([folds[i][1] for i in range(len(folds)) if i not in (k, j)])
                pairs.append((np.sort(train), folds[j][1]))
                tags.append((k + 1, j + 1))
    return pairs, tags


def nested_ua(results: list, tags: list, labels) -> tuple[float, list[float]]:
    """Per outer fold, the UA pooled over its inner validation pairs; and their mean."""
    per_fold = []
    for k in sorted({k for k, _ in tags}):
        mine = [r for r, (kk, _) in zip(results, tags, strict=True) if kk == k]
        y = np.concatenate([labels[r["test_idx"]] for r in mine])
        p = np.concatenate([r["probabilities"].argmax(1) for r in mine])
        per_fold.append(classification_report_dict(y, p, class_names=PAPER_CLASSES)["ua"])
    return float(np.mean(per_fold)), per_fold


def subset_folds(folds: list, sessions: np.ndarray, *, pairs: int, seed: int = 0) -> list:
    """Each outer fold's training part cut to ``pairs`` of its speaker pairs (sessions),
    drawn once per fold with a fixed seed (the same subsets for every candidate and training
    seed); test parts untouched. ``pairs`` = all of them: the folds as they are."""
    out = []
    for k, (train_idx, test_idx) in enumerate(folds, start=1):
        present = sorted(set(sessions[train_idx]))
        if pairs >= len(present):
            out.append((train_idx, test_idx))
            continue
        rng = np.random.default_rng([seed, k])
        keep = set(rng.choice(present, size=pairs, replace=False).tolist())
        out.append((np.array([i for i in train_idx if sessions[i] in keep]), test_idx))
    return out


def held_out_folds(folds: list, labels: np.ndarray, groups: np.ndarray, *, seed: int,
                   fraction: float = 0.1) -> list:
    """Each outer fold's training part split into (rest, held-out speakers) as the strong
    recipe's own validation split is drawn (:func:`serlib.splits.validation_split`, seed
    ``seed * 1000 + k``): the candidates train on the rest (and split it further if they keep
    a validation part) and are scored on the held-out speakers. The outer test folds are
    never used."""
    from serlib.splits import validation_split

    return [validation_split(train_idx, labels, fraction=fraction, seed=seed * 1000 + k,
                             groups=groups)
            for k, (train_idx, _) in enumerate(folds, start=1)]


def _mean_fold_ua(results: list, labels, *, rows: str, probabilities: str) -> float:
    """Mean over folds of the UA of ``r[probabilities]`` on the rows ``r[rows]``."""
    from serlib.metrics import unweighted_accuracy

    return float(np.mean([unweighted_accuracy(labels[r[rows]], r[probabilities].argmax(1))
                          for r in results]))


def held_out_ua(results: list, labels) -> float:
    """Mean over folds of the UA on each fold's held-out speakers (:func:`held_out_folds`)."""
    return _mean_fold_ua(results, labels, rows="test_idx", probabilities="probabilities")


def kept_validation_ua(results: list, labels) -> float:
    """Mean over folds of the UA of the kept model (a seed ensemble: its mean probabilities)
    on each fold's inner, speaker-disjoint validation part; NaN for a recipe without one."""
    if any(not len(r["val_idx"]) for r in results):
        return float("nan")
    return _mean_fold_ua(results, labels, rows="val_idx", probabilities="val_probabilities")


def cross_fitted(y_parts: list, deep_parts: list, base_parts: list, *, criterion: str
                 ) -> tuple[list, list]:
    """Late fusion (serlib.fusion's rule) of parts of held-out predictions: part i's weight
    chosen (:func:`serlib.fusion.choose_weight`) on the other parts only, as the book chooses
    test fold k's weight on the other folds. Returns each part's fused probabilities and the
    weights."""
    from serlib.fusion import choose_weight

    fused, weights = [], []
    for i in range(len(y_parts)):
        others = [j for j in range(len(y_parts)) if j != i]
        w, _ = choose_weight(np.concatenate([y_parts[j] for j in others]),
                             np.concatenate([deep_parts[j] for j in others]),
                             np.concatenate([base_parts[j] for j in others]),
                             criterion=criterion)
        fused.append(w * deep_parts[i] + (1 - w) * base_parts[i])
        weights.append(w)
    return fused, weights


def fused_test_row(deep: list, baseline: list, labels, *, criterion: str = "ua"
                   ) -> tuple[dict, list]:
    """Late fusion (serlib.fusion's rule) of a deep run's and a baseline's test folds: fold
    k's weight chosen by ``criterion`` on the other folds' out-of-fold predictions, never on
    fold k (:func:`cross_fitted`)."""
    base = {f["fold"]: f for f in baseline}
    y = [labels[r["test_idx"]] for r in deep]
    fused, weights = cross_fitted(y, [r["probabilities"] for r in deep],
                                  [base[r["fold"]]["probabilities"] for r in deep],
                                  criterion=criterion)
    report = classification_report_dict(np.concatenate(y), np.concatenate(fused).argmax(1),
                                        class_names=PAPER_CLASSES)
    return {k: round(report[k], 4) for k in ("wa", "ua", "macro_f1")}, weights


def validation_baseline(results: list, folds: list, selection, *, model: str, cache) -> list:
    """Round 8: the baseline fitted on each fold's fitting part (its training part minus the
    deep run's validation speakers, what the network fitted) and predicting those validation
    speakers: per fold ``val_idx`` and ``val_probabilities``. No test fold is used."""
    from serlib.baselines import fit_baseline_folds

    inner = [(np.setdiff1d(train_idx, r["val_idx"]), np.asarray(r["val_idx"]))
             for (train_idx, _), r in zip(folds, results, strict=True)]
    fitted = fit_baseline_folds(selection, model=model, folds=inner, cache_dir=cache)
    for f, (_, val_idx) in zip(fitted, inner, strict=True):
        assert np.array_equal(f["test_idx"], val_idx)
    return [{"val_idx": f["test_idx"], "val_probabilities": f["probabilities"]} for f in fitted]


def crossfit_validation_fusion(deep: list, base: list, labels, *, criterion: str
                               ) -> tuple[float, list]:
    """Round 8: each fold's validation speakers fused with the weight chosen
    (:func:`serlib.fusion.choose_weight`) on the OTHER folds' validation speakers, as the
    book's fusion chooses fold k's weight on the other folds; the mean over folds of the
    fused UA, and the weights."""
    from serlib.metrics import unweighted_accuracy

    y = [labels[r["val_idx"]] for r in deep]
    fused, weights = cross_fitted(y, [r["val_probabilities"] for r in deep],
                                  [b["val_probabilities"] for b in base], criterion=criterion)
    return float(np.mean([unweighted_accuracy(t, p.argmax(1))
                          for t, p in zip(y, fused, strict=True)])), weights


def inner_pair_folds(folds: list, sessions: np.ndarray) -> tuple[list, list]:
    """Round 9: leave one speaker pair out inside each outer fold's training part as it is
    (after :func:`subset_folds`): for outer fold k and each pair j of its training part, train
    on the rest of that part and predict pair j. Returns the (train_idx, val_idx) pairs and
    their (k, j) tags; no outer test fold is used."""
    pairs, tags = [], []
    for k, (train_idx, _) in enumerate(folds, start=1):
        train_idx = np.asarray(train_idx)
        for pair in sorted(set(sessions[train_idx])):
            held = sessions[train_idx] == pair
            pairs.append((train_idx[~held], train_idx[held]))
            tags.append((k, pair))
    return pairs, tags


def nested_fusion_ua(deep: list, base: list, tags: list, labels, *, criterion: str
                     ) -> tuple[float, list]:
    """Round 9: inside each outer fold, each held-out pair's predictions fused with the weight
    chosen on the fold's other held-out pairs (as the book chooses fold k's weight on the other
    folds); per outer fold the UA pooled over its pairs, and their mean; the weights."""
    per_fold, weights = [], []
    for k in sorted({k for k, _ in tags}):
        mine = [i for i, (kk, _) in enumerate(tags) if kk == k]
        y = [labels[deep[i]["test_idx"]] for i in mine]
        fused, chosen = cross_fitted(y, [deep[i]["probabilities"] for i in mine],
                                     [base[i]["probabilities"] for i in mine],
                                     criterion=criterion)
        weights += chosen
        per_fold.append(classification_report_dict(
            np.concatenate(y), np.concatenate(fused).argmax(1),
            class_names=PAPER_CLASSES)["ua"])
    return float(np.mean(per_fold)), weights


def kept_or_trained(config: TrainConfig, features, labels, lengths, folds, groups, *,
                    jobs: int, keep: Path | None, tag: str) -> tuple[list, dict]:
    """:func:`train`, or the fold results a run of the same config and folds saved in
    ``keep`` (round 8: the screen trains, the final test rows reuse those trainings)."""
    import pickle

    path = keep / f"{tag}.pkl" if keep else None
    key = (json.dumps(config.to_dict(), sort_keys=True),
           [(np.asarray(a).tolist(), np.asarray(b).tolist()) for a, b in folds])
    if path and path.is_file():
        saved = pickle.loads(path.read_bytes())
        if saved["key"] == key:
            return saved["results"], {**saved["cost"], "reused": 1}
    results, cost = train(config, features, labels, lengths, folds, groups, jobs=jobs)
    if path:
        keep.mkdir(parents=True, exist_ok=True)
        slim = [{k: r[k] for k in ("fold", "test_idx", "probabilities", "val_idx",
                                   "val_probabilities", "history", "best_epoch")}
                for r in results]
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps({"key": key, "results": slim, "cost": cost}))
        tmp.replace(path)
    return results, cost


def fusion_screen(args, data) -> int:
    """--fusion-screen: the strong recipe (``RECIPES["strong"]``) per seed and training size,
    both baselines fitted on the same part, and every :data:`FUSIONS` candidate's score.
    Round 8: each outer fold's validation speakers, fold k's weight chosen on the other folds'
    (:func:`validation_baseline`, :func:`crossfit_validation_fusion`; the trainings are kept
    with ``--keep`` for the final rows). Round 9 (``--nested``): every training speaker, one
    pair left out at a time inside each outer fold's training part, a pair's weight chosen on
    the fold's other pairs (:func:`inner_pair_folds`, :func:`nested_fusion_ua`). Prints
    VALIDATION figures only."""
    import pandas as pd

    from serlib.baselines import fit_baseline_folds

    summaries = []
    for pairs in args.pairs:
        per_seed = []
        for seed in args.seeds:
            config = TrainConfig(**{**COMMON, **RECIPES["strong"], "seed": seed})
            selection, features, labels, lengths, folds, groups = data(config.feature)
            sessions = selection["session"].astype(str).to_numpy()
            folds = subset_folds(folds, sessions, pairs=pairs)
            tag = f"strong-speaker_p{pairs}_s{seed}"
            if args.nested:
                folds, tags = inner_pair_folds(folds, sessions)
                tag = f"nested-{tag}"
            results, cost = kept_or_trained(config, features, labels, lengths, folds, groups,
                                            jobs=args.jobs, keep=args.keep, tag=tag)
            models = sorted({m for m, _ in FUSIONS.values()})
            if args.nested:
                base = {m: fit_baseline_folds(selection, model=m, folds=folds,
                                              cache_dir=args.cache) for m in models}
                scores = {name: nested_ua(runs, tags, labels)[0]
                          for name, runs in (("strong", results), *base.items())}
                fusions = {name: nested_fusion_ua(results, base[m], tags, labels, criterion=c)
                           for name, (m, c) in FUSIONS.items()}
            else:
                base = {m: validation_baseline(results, folds, selection, model=m,
                                               cache=args.cache) for m in models}
                scores = {name: kept_validation_ua(runs, labels)
                          for name, runs in (("strong", results), *base.items())}
                fusions = {name: crossfit_validation_fusion(results, base[m], labels,
                                                            criterion=c)
                           for name, (m, c) in FUSIONS.items()}
            row = {"pairs": pairs, "speakers": 2 * pairs, "seed": seed,
                   **{name: round(ua, 4) for name, ua in scores.items()},
                   **{k: round(v, 1) for k, v in cost.items()}}
            for name, (ua, weights) in fusions.items():
                row[f"fusion {name}"] = round(ua, 4)
                row[f"weights {name}"] = f"{min(weights):g}-{max(weights):g}"
            print(json.dumps(row), flush=True)
            per_seed.append(row)
        for column in [*scores, *(f"fusion {n}" for n in FUSIONS)]:
            values = [r[column] for r in per_seed]
            summaries.append({"speakers": 2 * pairs, "model": column,
                              **{f"seed {r['seed']}": r[column] for r in per_seed},
                              "mean": round(float(np.mean(values)), 4),
                              "worst": round(float(np.min(values)), 4)})
    print(pd.DataFrame(summaries).to_string(index=False))
    return 0


def validation_ua(results: list) -> float:
    """Mean over folds of the validation UA at the epoch each fold kept."""
    return float(np.mean([next(h["val_ua"] for h in r["history"] if h["epoch"] == r["best_epoch"])
                          for r in results]))


def test_row(results: list, labels) -> dict:
    """Pooled over the five test folds."""
    y = np.concatenate([labels[r["test_idx"]] for r in results])
    p = np.concatenate([r["probabilities"].argmax(1) for r in results])
    report = classification_report_dict(y, p, class_names=PAPER_CLASSES)
    return {k: report[k] for k in ("wa", "ua", "macro_f1")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--cache", type=Path, default=None, help="feature store folder")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--jobs", type=int, default=1,
                        help="folds trained at once, in spawned workers of one thread each")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--screen", nargs="+", choices=sorted(CANDIDATES), metavar="NAME")
    mode.add_argument("--final", action="store_true")
    mode.add_argument("--fusion-screen", action="store_true",
                      help="round 8, with --seeds: the strong recipe's fusion candidates "
                      "(FUSIONS) scored on validation speakers only")
    parser.add_argument("--nested", action="store_true",
                        help="--screen: score on inner leave-one-pair-out folds of each outer "
                        "fold's training part (4 trainings a fold) instead of the one held-out "
                        "speaker of each fold; --fusion-screen: round 9, the same inside each "
                        "(sub)set's training part")
    parser.add_argument("--with-paper", action="store_true",
                        help="--final: also the paper recipe at width 16 (6-s padded input, "
                        "about 3x the strong recipe's time)")
    parser.add_argument("--also", nargs="+", choices=sorted(CANDIDATES), default=[],
                        metavar="NAME", help="--final: also these candidates on the test "
                        "folds, for comparison once the choice is made")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                        help="round 5: repeat every row over these training seeds (mean and "
                        "worst seed reported); --screen scores the kept model's validation UA")
    parser.add_argument("--pairs", type=int, nargs="+", default=[4], metavar="P",
                        help="round 5, with --seeds: training speaker pairs per fold (4 = all "
                        "8 speakers; 3 and 2 = 6 and 4 speakers, subsets drawn once per fold)")
    parser.add_argument("--outer-validation", action="store_true",
                        help="round 6, --screen with --seeds: score every candidate on the "
                        "speakers the strong recipe would validate on, held out of its "
                        "training (so a candidate without a validation part is scored too)")
    parser.add_argument("--speaker-baseline", action="store_true",
                        help="round 7, --final with --seeds: also the logistic regression on "
                        "per-speaker-normalised statistics (a reference row)")
    parser.add_argument("--fusion", choices=sorted(FUSIONS), default="logreg/ua",
                        help="round 8, --final with --seeds: the fusion row's partner and "
                        "weight criterion (default: rounds 5-7's)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="round 8: keep each (size, seed) training of the strong recipe "
                        "here, and reuse one of the same config and folds")
    parser.add_argument("--skip-strong", action="store_true",
                        help="round 5, --final: only the --also candidates (strong scored "
                        "already)")
    args = parser.parse_args(argv)
    if not args.manifest.is_file():
        print(f"{args.manifest}: not found (the EmoDB copy beside the project)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = {}

    def data(feature: str):
        if feature not in loaded:
            loaded[feature] = load(args.manifest, args.cache, feature)
        return loaded[feature]

    if args.fusion_screen:
        if args.seeds is None:
            parser.error("--fusion-screen needs --seeds")
        return fusion_screen(args, data)
    if args.seeds is not None:
        return round5(args, data)
    rows = []
    if args.screen:
        for name in args.screen:
            config = TrainConfig(**{**COMMON, **CANDIDATES[name]})
            _, features, labels, lengths, folds, groups = data(config.feature)
            if args.nested:
                pairs, tags = inner_folds(folds)
                results, cost = train(config, features, labels, lengths, pairs, groups,
                                      jobs=args.jobs)
                mean, per_fold = nested_ua(results, tags, labels)
                row = {"recipe": name, "nested_val_ua": round(mean, 4),
                       "per_outer_fold": [round(u, 4) for u in per_fold]}
            else:
                results, cost = train(config, features, labels, lengths, folds, groups,
                                      jobs=args.jobs)
                row = {"recipe": name, "val_ua": round(validation_ua(results), 4)}
            row.update({k: round(v, 1) for k, v in cost.items()})
            print(json.dumps(row), flush=True)
            rows.append(row)
        return 0
    from serlib.baselines import fit_baseline_folds

    names = ("paper-w16",) * args.with_paper + ("strong", *args.also)
    configs = {name: TrainConfig(**{**COMMON, **(CANDIDATES[name] if name in CANDIDATES
                                                  else RECIPES[name])}) for name in names}
    # the selection, labels and folds do not depend on the feature: the strong recipe's
    selection, _, labels, _, folds, _ = data(configs["strong"].feature)
    for model in ("logreg", "egemaps-svm"):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            result = fit_baseline_folds(selection, model=model, folds=folds)
        except ImportError as error:
            print(json.dumps({"recipe": f"baseline {model}", "skipped": str(error)}))
            continue
        y = np.concatenate([labels[f["test_idx"]] for f in result])
        p = np.concatenate([f["probabilities"].argmax(1) for f in result])
        report = classification_report_dict(y, p, class_names=PAPER_CLASSES)
        rows.append({"recipe": f"baseline {model}", "val_ua": None,
                     **{k: round(report[k], 4) for k in ("wa", "ua", "macro_f1")},
                     "wall_s": round(time.perf_counter() - wall, 1),
                     "cpu_s": round(time.process_time() - cpu, 1)})
        print(json.dumps(rows[-1]), flush=True)
    for name, config in configs.items():
        _, features, labels, lengths, folds, groups = data(config.feature)
        results, cost = train(config, features, labels, lengths, folds, groups,
                              jobs=args.jobs)
        rows.append({"recipe": name, "val_ua": round(validation_ua(results), 4),
                     **{k: round(v, 4) for k, v in test_row(results, labels).items()},
                     **{k: round(v, 1) for k, v in cost.items()}})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                      "rows": rows}, indent=1))
    return 0


def _seed_summary(rows: list[dict], key: str) -> dict:
    values = [r[key] for r in rows]
    return {f"{key}_mean": round(float(np.mean(values)), 4),
            f"{key}_worst": round(float(np.min(values)), 4),
            "seeds": [r["seed"] for r in rows]}


def round5(args, data) -> int:
    """--seeds: every candidate over several seeds and training sizes; --screen: validation
    only; --final: test rows, the logistic regression on the same subsets, and the fusion."""
    import pandas as pd

    from serlib.baselines import fit_baseline_folds

    names = args.screen or (["strong"] * (not args.skip_strong) + list(args.also))
    rows = []
    base_rows = {}
    for pairs in args.pairs:
        for name in names:
            per_seed = []
            for seed in args.seeds:
                config = TrainConfig(**{**COMMON, **CANDIDATES[name], "seed": seed})
                selection, features, labels, lengths, folds, groups = data(config.feature)
                sessions = selection["session"].astype(str).to_numpy()
                folds = subset_folds(folds, sessions, pairs=pairs)
                if args.outer_validation and args.screen:
                    folds = held_out_folds(folds, labels, groups, seed=seed)
                results, cost = kept_or_trained(config, features, labels, lengths, folds,
                                                groups, jobs=args.jobs, keep=args.keep,
                                                tag=f"{name}_p{pairs}_s{seed}")
                score = held_out_ua if args.outer_validation and args.screen \
                    else kept_validation_ua
                row = {"recipe": name, "pairs": pairs, "speakers": 2 * pairs, "seed": seed,
                       "val_ua": round(score(results, labels), 4),
                       **{k: round(v, 1) for k, v in cost.items()}}
                if args.final:
                    row.update(test_row(results, labels))
                    partner, criterion = FUSIONS[args.fusion]
                    models = ["logreg", *["logreg-speaker"] * args.speaker_baseline, partner]
                    for model in dict.fromkeys(models):     # each fitted and shown once
                        if (pairs, model) not in base_rows:
                            base_rows[pairs, model] = fit_baseline_folds(
                                selection, model=model, folds=folds, cache_dir=args.cache)
                            base = {"recipe": f"baseline {model}", "pairs": pairs,
                                    "speakers": 2 * pairs,
                                    **{k: round(v, 4) for k, v in
                                       test_row(base_rows[pairs, model], labels).items()}}
                            print(json.dumps(base), flush=True)
                            rows.append(base)
                    fused, weights = fused_test_row(results, base_rows[pairs, partner], labels,
                                                    criterion=criterion)
                    row.update({f"fused_{k}": v for k, v in fused.items()},
                               fusion=args.fusion, fusion_weights=weights)
                print(json.dumps(row), flush=True)
                per_seed.append(row)
                rows.append(row)
            summary = {"recipe": name, "pairs": pairs, **_seed_summary(per_seed, "val_ua")}
            if args.final:
                summary.update(_seed_summary(per_seed, "ua"))
                summary.update(_seed_summary(per_seed, "fused_ua"))
            print(json.dumps({"summary": summary}), flush=True)
    print(pd.DataFrame(rows).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
