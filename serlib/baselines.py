"""Simple baselines on the same selection, folds and metrics as a ResNet run, as run folders.

Two models, each fitted on every fold's training part (no validation part: nothing is tuned)
and scored on its test part:

- ``"logreg"``: logistic regression (scikit-learn, ``C = 0.5``, standard scaling) on each
  clip's per-coefficient mean and standard deviation of the paper's 40 MFCCs
  (:class:`serlib.features.FeatureConfig` ``preset("mfcc")``) over the clip's own frames
  (:func:`serlib.augment.clip_frames`; the padding after a short clip is left out): 80
  numbers a clip. Feature name ``"mfcc-stats"``.
- ``"logreg-speaker"``: the same logistic regression on the same 80 numbers, each
  z-normalised over the clips of its speaker that the fold sees (:func:`speaker_standardise`;
  a test speaker's from that speaker's unlabelled test clips), as the strong recipe
  (``normalisation="speaker"``) normalises the network's input: beside it, the network's own
  contribution is what is left. Feature name ``"mfcc-stats"``.
- ``"egemaps-svm"`` (optional extra ``serlib[opensmile]``): the 88 eGeMAPSv02 functionals of
  openSMILE, standard scaling, RBF SVM with ``C = 1`` (the default recipe of a popular SER
  toolkit). Feature name ``"egemaps"``.

:func:`run_baseline` writes the run folder through one function, :func:`write_baseline_run`,
with every file a ResNet run has (``serlib.training``)::

    out_dir/config.json        {"baseline": model and its parameters, "features", "selection",
                                "commit"} (no "train": a baseline has no TrainConfig)
    out_dir/fold_<k>/          checkpoint.pt (``torch.load(weights_only=True)``: the scaler and
                               the model's coefficients as tensors), metrics.json,
                               predictions.csv, history.csv (one row: the training log-loss)
    out_dir/predictions.csv, out_dir/history.csv
    out_dir/summary.json       the keys of serlib.training.summarise, with feature
                               "mfcc-stats"/"egemaps", loss "logreg"/"svm", width/epochs None,
                               and "model" naming the baseline

Probabilities are ``predict_proba``'s (the SVM's from a sigmoid (Platt) calibration of its
decision values on 5 internal folds of the training part, scikit-learn's
``CalibratedClassifierCV(SVC(), ensemble=False)``, which replaces ``SVC(probability=True)``);
the predicted class is their argmax, as for a ResNet run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES
from serlib.runs import read_run_csv

#: Baseline models and their parameters.
BASELINES: dict[str, dict] = {
    "logreg": {"feature": "mfcc-stats", "loss": "logreg", "C": 0.5, "max_iter": 5000},
    "logreg-speaker": {"feature": "mfcc-stats", "loss": "logreg", "C": 0.5, "max_iter": 5000,
                       "normalisation": "speaker"},
    "egemaps-svm": {"feature": "egemaps", "loss": "svm", "C": 1.0, "kernel": "rbf",
                    "calibration": "sigmoid", "calibration_folds": 5},
}


def _check_model(model: str) -> dict:
    if model not in BASELINES:
        raise SerlibError(f"baseline model={model!r} must be one of {', '.join(BASELINES)}")
    return BASELINES[model]


def mfcc_statistics(features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-clip mean and std (ddof 0) of each coefficient over the clip's own frames.

    Parameters
    ----------
    features : np.ndarray, shape (N, F, T)
    lengths : np.ndarray of int, shape (N,)
        Own frames of each clip (the rest is padding).

    Returns
    -------
    np.ndarray of float64, shape (N, 2 F)
        Means, then standard deviations.
    """
    keep = np.arange(features.shape[-1])[None, None, :] < np.asarray(lengths)[:, None, None]
    keep = np.broadcast_to(keep, features.shape)
    mean = features.mean(axis=-1, dtype=np.float64, where=keep)
    std = features.std(axis=-1, dtype=np.float64, where=keep)
    return np.concatenate([mean, std], axis=1)


def speaker_standardise(x: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """Each column of ``x`` z-normalised over each speaker's rows (no label used).

    Parameters
    ----------
    x : np.ndarray, shape (N, D)
        Per-clip statistics.
    speakers : np.ndarray, shape (N,)

    Returns
    -------
    np.ndarray of float64, shape (N, D)
        A speaker's rows have mean 0 and standard deviation 1 (or 0, for a column that is
        constant over them) in every column.
    """
    speakers = np.asarray(speakers)
    if len(speakers) != len(x):
        raise SerlibError(f"speakers must be one per row of x ({len(x)}), got {len(speakers)}")
    out = np.empty(np.shape(x), dtype=np.float64)
    for speaker in np.unique(speakers):
        rows = speakers == speaker
        out[rows] = (x[rows] - x[rows].mean(0)) / np.maximum(x[rows].std(0), 1e-8)
    return out


def mfcc_stats_matrix(selection: pd.DataFrame, *, cache_dir=None, progress: bool = False
                      ) -> tuple[np.ndarray, dict]:
    """The logistic-regression inputs of a selection: (N, 80), and the feature config used."""
    from serlib.augment import clip_frames
    from serlib.features import FeatureConfig, extract_corpus

    if "duration_s" not in selection:
        raise SerlibError("the selection lacks 'duration_s' (write it with serlib select)")
    config = FeatureConfig.preset("mfcc")
    store = extract_corpus(selection, config=config, cache_dir=cache_dir, progress=progress)
    lengths = clip_frames(selection["duration_s"].to_numpy(), sample_rate=config.sample_rate,
                          hop_length=config.hop_length, max_seconds=config.max_seconds,
                          n_frames=config.n_frames)
    return mfcc_statistics(store.features, lengths), config.to_dict()


def egemaps_matrix(selection: pd.DataFrame, *, progress: bool = False
                   ) -> tuple[np.ndarray, dict]:
    """eGeMAPSv02 functionals of every clip (openSMILE): (N, 88), and what was computed."""
    try:
        import opensmile
    except ImportError as error:
        raise ImportError("the egemaps-svm baseline needs openSMILE: pip install "
                          "'serlib[opensmile]' (opensmile>=2.5)") from error
    from tqdm import tqdm

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    rows = []
    for path in tqdm(selection["path"], desc="eGeMAPS", unit="clip", disable=not progress):
        if not Path(path).is_file():
            raise SerlibError(f"{path}: audio file not found")
        rows.append(smile.process_file(str(path)).to_numpy()[0])
    return np.asarray(rows, dtype=np.float64), {
        "kind": "egemaps", "feature_set": "eGeMAPSv02", "level": "functionals",
        "opensmile": opensmile.__version__, "n_features": len(smile.feature_names)}


def make_estimator(model: str):
    """The scikit-learn pipeline of a baseline (standard scaling + classifier)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    params = _check_model(model)
    if params["loss"] == "logreg":
        classifier = LogisticRegression(C=params["C"], max_iter=params["max_iter"])
    else:
        # Platt scaling on internal folds (stratified, unshuffled: deterministic)
        classifier = CalibratedClassifierCV(SVC(C=params["C"], kernel=params["kernel"]),
                                            method=params["calibration"],
                                            cv=params["calibration_folds"], ensemble=False)
    return make_pipeline(StandardScaler(), classifier)


def fit_baseline_folds(selection: pd.DataFrame, *, model: str, folds, x: np.ndarray | None = None,
                       cache_dir=None, progress: bool = False) -> list[dict]:
    """Fit a baseline on every fold's training part and predict its test part.

    Parameters
    ----------
    selection : pandas.DataFrame
        Rows of the paper's classes (as :func:`serlib.training.run_cross_validation` keeps).
    model : {"logreg", "logreg-speaker", "egemaps-svm"}
    folds : list of (train_idx, test_idx)
        From :func:`serlib.splits.make_folds`.
    x : np.ndarray, shape (N, D), optional
        The model's inputs, if already computed (else :func:`mfcc_stats_matrix` or
        :func:`egemaps_matrix`); ``"logreg-speaker"`` normalises them per speaker in each
        fold (the selection's ``speaker`` column).

    Returns
    -------
    list of dict
        Per fold: ``fold``, ``test_idx``, ``probabilities`` (n_test, C), ``metrics``
        (:func:`serlib.metrics.classification_report_dict`), ``estimator`` (fitted),
        ``train_log_loss``, ``n_fit``, ``features`` (the feature config or description).
    """
    from sklearn.metrics import log_loss

    from serlib.metrics import classification_report_dict

    params = _check_model(model)
    features_info: dict = {}
    if x is None:
        x, features_info = (mfcc_stats_matrix(selection, cache_dir=cache_dir, progress=progress)
                            if params["feature"] == "mfcc-stats"
                            else egemaps_matrix(selection, progress=progress))
    labels = selection["label"].map(PAPER_CLASSES.index).to_numpy()
    if np.any(pd.isna(labels)) or len(x) != len(labels):
        raise SerlibError(f"the selection must hold only {PAPER_CLASSES} and match x "
                          f"({len(x)} rows)")
    out = []
    for fold, (train_idx, test_idx) in enumerate(folds, start=1):
        if params.get("normalisation") == "speaker":
            # per speaker over the clips this fold sees, as TrainConfig's "speaker" does
            seen = np.union1d(train_idx, test_idx)
            fold_x = np.zeros(np.shape(x), dtype=np.float64)
            fold_x[seen] = speaker_standardise(
                np.asarray(x)[seen], selection["speaker"].astype(str).to_numpy()[seen])
        else:
            fold_x = x
        estimator = make_estimator(model).fit(fold_x[train_idx], labels[train_idx])
        probabilities = np.zeros((len(test_idx), len(PAPER_CLASSES)))
        classes = estimator.classes_
        probabilities[:, classes] = estimator.predict_proba(fold_x[test_idx])
        train_p = np.zeros((len(train_idx), len(PAPER_CLASSES)))
        train_p[:, classes] = estimator.predict_proba(fold_x[train_idx])
        out.append({
            "fold": fold, "test_idx": np.asarray(test_idx), "probabilities": probabilities,
            "metrics": classification_report_dict(labels[test_idx], probabilities.argmax(1),
                                                  class_names=PAPER_CLASSES),
            "estimator": estimator, "n_fit": len(train_idx),
            "train_log_loss": float(log_loss(labels[train_idx], train_p,
                                             labels=list(range(len(PAPER_CLASSES))))),
            "features": features_info,
        })
    return out


def _estimator_tensors(estimator) -> dict:
    """The fitted scaler and classifier as tensors (``weights_only``-loadable)."""
    import torch

    scaler, classifier = estimator[0], estimator[-1]
    state = {"scaler_mean": torch.from_numpy(scaler.mean_.copy()),
             "scaler_scale": torch.from_numpy(scaler.scale_.copy()),
             "classes": torch.from_numpy(np.asarray(classifier.classes_, dtype=np.int64))}
    if hasattr(classifier, "coef_") and not hasattr(classifier, "support_vectors_"):
        state.update(coef=torch.from_numpy(classifier.coef_.copy()),
                     intercept=torch.from_numpy(classifier.intercept_.copy()))
    else:                                 # the calibrated SVM: one SVC, one sigmoid a class
        [calibrated] = classifier.calibrated_classifiers_
        svm = calibrated.estimator
        state.update(support_vectors=torch.from_numpy(svm.support_vectors_.copy()),
                     dual_coef=torch.from_numpy(svm.dual_coef_.copy()),
                     intercept=torch.from_numpy(svm.intercept_.copy()),
                     n_support=torch.from_numpy(svm.n_support_.astype(np.int64)),
                     gamma=torch.tensor(float(svm._gamma)),
                     sigmoid_a=torch.tensor([c.a_ for c in calibrated.calibrators]),
                     sigmoid_b=torch.tensor([c.b_ for c in calibrated.calibrators]))
    return state


def write_baseline_run(out_dir: str | os.PathLike, *, results: list[dict], selection,
                       resolved: dict, model: str, protocol: str, n_folds: int) -> dict:
    """Write a baseline's run folder (every file of a ResNet run) and return its summary.

    The one writer of a baseline folder (to be rerouted to the run-folder module).
    ``resolved`` is config.json's content without the commit.
    """
    import torch

    from serlib._io import atomic_path, atomic_write_json
    from serlib.config import TrainConfig
    from serlib.provenance import commit_hash
    from serlib.training import summarise

    out_dir = Path(out_dir)
    params = _check_model(model)
    labels = selection["label"].map(PAPER_CLASSES.index).to_numpy()
    from serlib.runs import MARKER, check_run_folder

    check_run_folder(out_dir)
    atomic_write_json(out_dir / MARKER, {"serlib": "run folder"})
    atomic_write_json(out_dir / "config.json", {**resolved, "commit": commit_hash()})
    fold_metrics = []
    for result in results:
        fold, test_idx, probs = result["fold"], result["test_idx"], result["probabilities"]
        folder = out_dir / f"fold_{fold}"
        metrics = {"fold": fold, **result["metrics"], "best_epoch": 1,
                   "n_train": result["n_fit"], "n_val": 0, "n_test": len(test_idx)}
        rows = selection.iloc[test_idx]
        predictions = pd.DataFrame({
            "utterance_id": rows["utterance_id"].to_numpy(), "fold": fold,
            "speaker": rows["speaker"].to_numpy(),
            "label": [PAPER_CLASSES[i] for i in labels[test_idx]],
            "predicted": [PAPER_CLASSES[i] for i in probs.argmax(axis=1)],
            **{f"p_{name}": probs[:, k] for k, name in enumerate(PAPER_CLASSES)},
        })
        history = pd.DataFrame([{"fold": fold, "epoch": 1,
                                 "train_loss": result["train_log_loss"], "val_loss": np.nan,
                                 "val_wa": np.nan, "val_ua": np.nan, "lr": np.nan}])
        state = _estimator_tensors(result["estimator"])
        checkpoint = {"model": state, "baseline": model,
                      "mean": state["scaler_mean"], "std": state["scaler_scale"],
                      "baseline_config": resolved["baseline"],
                      "class_names": list(PAPER_CLASSES), "metrics": metrics}
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "checkpoint.pt") as tmp:
            torch.save(checkpoint, tmp)
        with atomic_path(folder / "predictions.csv") as tmp:
            predictions.to_csv(tmp, index=False)
        with atomic_path(folder / "history.csv") as tmp:
            history.to_csv(tmp, index=False)
        atomic_write_json(folder / "metrics.json", metrics)     # last: the fold is done
        fold_metrics.append(metrics)
    for name in ("predictions.csv", "history.csv"):
        frames = [read_run_csv(out_dir / f"fold_{r['fold']}" / name) for r in results]
        with atomic_path(out_dir / name) as tmp:
            pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    corpus = str(selection["corpus"].iloc[0]) if "corpus" in selection else "unknown"
    stand_in = TrainConfig(protocol=protocol, folds=n_folds)   # for summarise's shape only
    summary = summarise(fold_metrics, config=stand_in, corpus=corpus,
                        n_utterances=len(selection), device="cpu (scikit-learn)")
    summary.update(feature=params["feature"], loss=params["loss"], gamma=0.0, width=None,
                   epochs=None, model=model)
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def run_baseline(selection, *, model: str, protocol: str, n_folds: int,
                 out_dir: str | os.PathLike, seed: int = 0, cache_dir=None,
                 progress: bool = True) -> dict:
    """A baseline's cross-validation from a selection table to a run folder.

    Parameters
    ----------
    selection : pandas.DataFrame or path
        As for :func:`serlib.training.run_cross_validation` (rows of other classes dropped).
    model : {"logreg", "logreg-speaker", "egemaps-svm"}
    protocol : {"stratified", "session"}
    n_folds : int
    out_dir : path
        The run folder (written anew).
    seed : int
        Fold shuffling under the stratified protocol (as a ResNet run's ``seed``).
    cache_dir : path, optional
        Feature store for the MFCCs.

    Returns
    -------
    dict
        The content of ``summary.json``.
    """
    from serlib import runs as run_folders
    from serlib.config import MAX_FOLDS, MAX_SEED
    from serlib.splits import make_folds
    from serlib.training import _prepare_selection, selection_fingerprint

    params = _check_model(model)
    if model == "egemaps-svm":   # before any feature is computed
        try:
            import opensmile  # noqa: F401
        except ImportError:
            raise SerlibError("model='egemaps-svm' needs openSMILE: pip install "
                              "'serlib[opensmile]' (opensmile>=2.5)") from None
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        raise SerlibError(f"seed={seed!r} is not valid: an integer from 0 to {MAX_SEED}")
    if not (isinstance(n_folds, int) and 2 <= n_folds <= MAX_FOLDS):
        raise SerlibError(f"folds={n_folds!r} is not valid: an integer from 2 to {MAX_FOLDS}")
    run_folders.check_run_folder(out_dir)
    selection, selection_path = _prepare_selection(selection)
    try:
        folds = make_folds(selection, protocol=protocol, n_folds=n_folds, seed=seed)
    except ValueError as error:   # scikit-learn's splitters: too many folds for the data
        raise SerlibError(f"folds={n_folds} with protocol={protocol!r} on {len(selection)} "
                          f"utterances: {error}") from None
    results = fit_baseline_folds(selection, model=model, folds=folds, cache_dir=cache_dir,
                                 progress=progress)
    corpus = str(selection["corpus"].iloc[0]) if "corpus" in selection else "unknown"
    resolved = {
        "baseline": {"model": model, **params, "protocol": protocol, "folds": n_folds,
                     "seed": seed},
        "features": results[0]["features"],
        "selection": {"path": selection_path, "n_utterances": len(selection), "corpus": corpus,
                      "fingerprint": selection_fingerprint(selection)},
    }
    return write_baseline_run(out_dir, results=results, selection=selection, resolved=resolved,
                              model=model, protocol=protocol, n_folds=n_folds)


__all__ = [
    "BASELINES",
    "egemaps_matrix",
    "fit_baseline_folds",
    "make_estimator",
    "mfcc_statistics",
    "mfcc_stats_matrix",
    "run_baseline",
    "write_baseline_run",
]
