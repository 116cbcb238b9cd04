"""Use a trained run: class probabilities for new recordings, from torch or from ONNX.

A run folder (:func:`serlib.training.run_cross_validation`) holds one model per fold, each with
the normalisation statistics of its training part. :class:`Predictor` loads them (weights
only: a checkpoint is never unpickled) and, for a waveform or an audio file,

1. computes the run's own features (its ``config.json`` feature config) exactly as training
   did: :func:`serlib.features.extract` on the clip, cut or padded to ``max_seconds``;
2. rounds them to float16 and back if the run stored its features as float16 (as it trained);
3. normalises them with each fold's mean and standard deviation and runs that fold's model;
4. averages the softmax probabilities over the fold models (the ensemble; ``folds=[k]`` for
   one model); each fold's logits are first divided by its temperature, fitted on its
   validation part (:mod:`serlib.calibration`), when the run kept its validation predictions
   (``calibrated=False``: the raw probabilities, as in the run's ``predictions.csv``).

Long recordings. A recording longer than the model's input (``max_seconds``, 6 s) is cut into
windows of ``max_seconds`` starting every ``hop_seconds`` (default: half a window, 3 s). The
windows are laid from the start; the last one begins at the first hop from which a window
reaches the end, and is padded as a short clip is in training (so every window holds at least
``max_seconds - hop_seconds`` of audio). A recording of duration ``D > W`` (window ``W``,
hop ``H``) has ``1 + ceil((D - W) / H)`` windows, a 30-s one 9 at the defaults; one of at most
``W`` has one window, which is exactly the clip training saw. The recording's probabilities are
the mean over its windows; the per-window rows (start and end in seconds, probabilities) are
kept on the :class:`Prediction` as the recording's emotion over time. ``long="cut"`` instead
uses only the first ``max_seconds`` of a recording, as training did (this reproduces the run's
``predictions.csv`` for clips longer than 6 s).

ONNX. :meth:`Predictor.to_onnx` writes the ensemble as one ONNX graph and a JSON file beside
it. The graph takes the **unnormalised** feature matrices, shape (batch, 1, F, T), as
:func:`serlib.features.extract` returns them, and applies each fold's mean and standard
deviation inside (folds are normalised differently, so one normalised input cannot serve an
ensemble); it returns the averaged probabilities, shape (batch, C). The JSON file records the
feature config, every fold's normalisation and the class names, so onnxruntime can serve the
model without torch (:meth:`Predictor.from_onnx`). A run trained on each clip's own frames
(``own_frames``, the strong recipe) gives a graph with a second input, ``lengths`` (batch,),
int64: each clip's own frames, as :func:`serlib.augment.clip_frames` computes them from its
duration; the masked convolutions and pooling inside the graph ignore everything after them,
as in training (format version 2). A seed ensemble (``seed_ensemble``) or an ensemble per fold
(``ensemble``) is exported as its mean probabilities, like any fold model.

Runs normalised per utterance or per speaker (``normalisation="utterance"`` / ``"speaker"``).
Training normalised each clip by its own or its speaker's per-band statistics, and the fold
models' own mean and standard deviation are the identity. The predictor does the same before
the models (and an exported graph takes features normalised so, ``input_normalisation`` in its
JSON file): a clip by itself, or by the statistics of its speaker's recordings, given with
:meth:`Predictor.for_speaker` (``serlib predict --speaker-reference``) or
:meth:`Predictor.with_speaker_statistics`. A speaker run refuses to predict without them.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from serlib._io import atomic_path, atomic_write_json
from serlib.augment import clip_frames, normalise_own_frames, utterance_normalise
from serlib.errors import SerlibError
from serlib.features import FeatureConfig, extract, load_audio
from serlib.features.audio import audio_info, display_name

#: Format of the JSON file written beside an exported ONNX model.
ONNX_FORMAT = "serlib-onnx-ensemble"
ONNX_FORMAT_VERSION = 1
#: The version of graphs with a second input, each clip's own frames (own-frame runs).
ONNX_LENGTHS_VERSION = 2
ONNX_INPUT, ONNX_OUTPUT, ONNX_LENGTHS = "features", "probabilities", "lengths"
ONNX_OPSET = 18
LONG_MODES = ("windows", "cut")
#: Recordings longer than this (seconds) are decoded window by window (predict_file).
STREAM_SECONDS = 60.0


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Prediction:
    """The prediction for one recording.

    Attributes
    ----------
    probabilities : np.ndarray, float32, shape (C,)
        Class probabilities: the mean over the windows of the fold-averaged probabilities.
    class_names : tuple of str
        The run's classes, in the order of ``probabilities``.
    duration_s : float
        Length of the recording in seconds (at its own sample rate).
    windows : pandas.DataFrame
        One row per window: ``start_s``, ``end_s`` (seconds into the recording; ``end_s`` is
        where the audio ends, before any padding) and ``p_<class>`` per class.
    path : str or None
        The file, for :meth:`Predictor.predict_file`.
    """

    probabilities: np.ndarray
    class_names: tuple[str, ...]
    duration_s: float
    windows: pd.DataFrame = field(repr=False)
    path: str | None = None

    @property
    def predicted(self) -> str:
        """The most probable class."""
        return self.class_names[int(np.argmax(self.probabilities))]

    @property
    def n_windows(self) -> int:
        return len(self.windows)

    def row(self) -> dict:
        """One flat record: path, predicted, p_<class>..., duration_s, windows."""
        return {
            "path": self.path,
            "predicted": self.predicted,
            **{f"p_{c}": float(p) for c, p in zip(self.class_names, self.probabilities,
                                                   strict=True)},
            "duration_s": self.duration_s,
            "windows": self.n_windows,
        }

    def window_rows(self) -> pd.DataFrame:
        """The per-window rows with ``path``, ``window`` (0-based) and ``predicted`` added."""
        frame = self.windows.copy()
        probs = frame[[f"p_{c}" for c in self.class_names]].to_numpy()
        frame.insert(0, "path", self.path)
        frame.insert(1, "window", np.arange(len(frame)))
        frame.insert(4, "predicted", [self.class_names[i] for i in probs.argmax(axis=1)])
        return frame


# ----------------------------------------------------------------------------- the models
def _run_model(model, x, *, config, lengths=None, temperature=None):
    """Softmax probabilities of one fold's model on a normalised batch.

    The one place where a fold's model is applied (torch inference and the ONNX graph both
    come through here): a training recipe option that changes how a model sees a clip
    (crops, padding-aware pooling ...) is wired in here, from ``config``.

    Parameters
    ----------
    model : torch.nn.Module
        A fold's ResNet-18 in eval mode.
    x : torch.Tensor, float32, shape (B, 1, F, T)
        Features normalised with that fold's mean and std.
    config : serlib.training.TrainConfig
        The fold's training configuration.
    lengths : torch.Tensor of int64, shape (B,), optional
        Each clip's own frames; used when the run was trained with ``own_frames`` (the model
        then ignores everything past a clip's end, as in training).
    temperature : torch.Tensor, scalar, optional
        The fold's fitted temperature (:mod:`serlib.calibration`): logits divided by it.

    Returns
    -------
    torch.Tensor, float32, shape (B, C)
    """
    import torch

    x = x.contiguous(memory_format=torch.channels_last)
    if config.own_frames:
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[-1], dtype=torch.int64)
        logits = model(x, lengths)                                      # (B, C)
    else:
        logits = model(x)                                               # (B, C)
    logits = logits.float()
    if temperature is not None:
        logits = logits / temperature
    return torch.softmax(logits, dim=-1)


def _ensemble_module(models: list, means: list[np.ndarray], stds: list[np.ndarray],
                     configs: list, *, float16_features: bool,
                     temperatures: list[float] | None = None):
    """A torch module: unnormalised features (B, 1, F, T) -> probabilities averaged over the
    fold models (B, C). Each fold's normalisation and temperature (1: none) are buffers of
    the module (so the ONNX graph carries them)."""
    import torch
    from torch import nn

    class Ensemble(nn.Module):
        def __init__(self):
            super().__init__()
            self.models = nn.ModuleList(models)
            self.configs = list(configs)
            self.float16_features = float16_features
            # (K, 1, F, 1): broadcast over batch, channel and frames of (B, 1, F, T)
            self.register_buffer("mean", torch.from_numpy(np.stack(means))[:, None, :, None])
            self.register_buffer("std", torch.from_numpy(np.stack(stds))[:, None, :, None])
            self.register_buffer("temperature", torch.tensor(
                temperatures or [1.0] * len(models), dtype=torch.float32))      # (K,)

        def forward(self, features, lengths=None):         # (B, 1, F, T), (B,)
            if self.float16_features:                      # as the run stored them
                features = features.to(torch.float16).to(torch.float32)
            probs = [
                _run_model(model, (features - self.mean[k]) / self.std[k], config=config,
                           lengths=lengths, temperature=self.temperature[k])
                for k, (model, config) in enumerate(zip(self.models, self.configs,
                                                        strict=True))
            ]
            return torch.stack(probs).mean(dim=0)          # (B, C)

    return Ensemble().eval()


def _load_fold(path: Path, *, device):
    """A fold's model, checkpoint and TrainConfig; refuses anything that is not weights only."""
    import torch

    from serlib.training import load_checkpoint

    if not path.is_file():
        raise SerlibError(f"{path}: checkpoint not found")
    try:
        model, checkpoint = load_checkpoint(path, map_location="cpu")
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise SerlibError(f"{path}: refused to load: not a weights-only checkpoint "
                          f"(torch.load(weights_only=True): {first})") from None
    except (KeyError, TypeError) as error:
        raise SerlibError(f"{path}: not a serlib checkpoint (missing or bad entry "
                          f"{error})") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise SerlibError(f"{path}: unreadable checkpoint ({error})") from None
    except SerlibError:
        raise
    except Exception as error:  # noqa: BLE001 - e.g. IndexError on text bytes: not a checkpoint
        raise SerlibError(f"{path}: unreadable checkpoint ({type(error).__name__}: "
                          f"{str(error)[:200]})") from None
    from serlib.training import TrainConfig

    try:
        config = TrainConfig.from_dict(checkpoint["train_config"])
    except SerlibError as error:
        raise SerlibError(f"{path}: {error}") from None
    for key in ("mean", "std", "class_names"):
        if key not in checkpoint:
            raise SerlibError(f"{path}: not a serlib checkpoint (no {key!r})")
    _check_finite_checkpoint(path, checkpoint)
    model = model.to(device, memory_format=torch.channels_last).eval()
    mean = checkpoint["mean"].numpy().astype(np.float32)
    std = checkpoint["std"].numpy().astype(np.float32)
    return model, mean, std, config, tuple(checkpoint["class_names"])


def _check_finite_checkpoint(path: Path, checkpoint: dict) -> None:
    """A checkpoint whose weights or normalisation hold NaN or inf would predict NaN."""
    import torch

    tensors = {f"model.{k}": v for k, v in checkpoint["model"].items()}
    tensors.update(mean=checkpoint["mean"], std=checkpoint["std"])
    bad = [name for name, t in tensors.items()
           if isinstance(t, torch.Tensor) and t.is_floating_point()
           and not bool(torch.isfinite(t).all())]
    if bad:
        raise SerlibError(f"{path}: holds non-finite (NaN or inf) values in "
                          f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}: the fold's "
                          "training diverged (too large a learning rate?); retrain it")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SerlibError(f"{path}: {what} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SerlibError(f"{path}: unreadable {what} ({error})") from None
    if not isinstance(data, dict):
        raise SerlibError(f"{path}: {what} must be a JSON object")
    return data


def _check_folds(folds, available: Sequence[int], where: str) -> list[int]:
    if folds is None:
        return list(available)
    folds = [folds] if isinstance(folds, int) else list(folds)
    if not folds:
        raise SerlibError("folds=[]: give at least one fold (or None for all)")
    bad = [k for k in folds if isinstance(k, bool) or not isinstance(k, (int, np.integer))
           or k not in available]
    if bad or len(set(folds)) != len(folds):
        raise SerlibError(f"folds={folds!r}: expected distinct folds among "
                          f"{list(available)} of {where}")
    return sorted(int(k) for k in folds)


def _as_mono(y: np.ndarray, *, name: str) -> np.ndarray:
    """(n,) or (channels, n) float -> (n,) float32, validated as serlib.features does."""
    import librosa

    from serlib.features.audio import MAX_CHANNELS, check_samples

    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.floating):
        raise SerlibError(f"{name}: audio must be floating point, got dtype {y.dtype}")
    if y.ndim not in (1, 2):
        raise SerlibError(f"{name}: audio must have 1 or 2 dimensions, got shape {y.shape}")
    check_samples(y, name=name)
    if y.ndim == 2:
        if y.shape[0] > y.shape[1] and y.shape[0] > MAX_CHANNELS:
            raise SerlibError(f"{name}: audio of shape {y.shape} looks like (n_samples, "
                              "channels); pass (channels, n_samples)")
        y = librosa.to_mono(y)
    return y.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- predictor
class Predictor:
    """Class probabilities of a trained run (its fold ensemble) for waveforms and files.

    Build one with :meth:`from_run` (torch) or :meth:`from_onnx` (onnxruntime); the module
    docstring says how features, normalisation, the ensemble and long recordings are handled.

    Attributes
    ----------
    feature_config : FeatureConfig
        The run's features; the model input is ``feature_config.shape`` = (F, T).
    class_names : tuple of str
    folds : list of int
        The fold models in the ensemble (1-based).
    hop_seconds : float
        Hop between windows of a long recording (s).
    """

    def __init__(self, *, score: Callable[[np.ndarray], np.ndarray],
                 feature_config: FeatureConfig, class_names: Sequence[str],
                 folds: Sequence[int], float16_features: bool, hop_seconds: float | None,
                 batch_size: int, source: str, ensemble=None,
                 input_normalisation: str = "corpus"):
        if hop_seconds is None:
            hop_seconds = feature_config.max_seconds / 2
        if isinstance(hop_seconds, bool) or not isinstance(hop_seconds, (int, float)) \
                or not 0 < hop_seconds <= feature_config.max_seconds:
            raise SerlibError(f"hop_seconds={hop_seconds!r}: expected a number in "
                              f"(0, {feature_config.max_seconds:g}] (the window length, s)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SerlibError(f"batch_size={batch_size!r}: expected a positive integer")
        self._score = score
        self._ensemble = ensemble
        self.feature_config = feature_config
        self.class_names = tuple(class_names)
        self.folds = list(folds)
        self.float16_features = float16_features
        self.hop_seconds = float(hop_seconds)
        self.batch_size = batch_size
        self.source = source
        self.temperatures: list[float] | None = None     # per fold, when calibrated
        # "utterance" / "speaker": features normalised before the model (the fold models'
        # own mean and std are the identity then), as training normalised them
        self.input_normalisation = input_normalisation
        self.speaker: tuple[np.ndarray, np.ndarray] | None = None   # (F,) mean and std

    def __repr__(self) -> str:
        return (f"Predictor({self.source}, folds={self.folds}, "
                f"features={self.feature_config.kind} {self.feature_config.shape}, "
                f"hop_seconds={self.hop_seconds:g})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, *, folds: Sequence[int] | int | None = None,
                 device: str = "cpu", hop_seconds: float | None = None,
                 batch_size: int = 32, calibrated: bool = True) -> Predictor:
        """The fold models of a run folder, in torch.

        Parameters
        ----------
        run_dir : path
            A run folder of :func:`serlib.training.run_cross_validation`.
        folds : list of int, optional
            Folds (1-based) to ensemble; default all (the run must be finished).
        device : str
            Torch device ("cpu", "cuda", "auto"). Inference runs in float32 everywhere.
        hop_seconds : float, optional
            Hop between the windows of a long recording (default: half a window).
        batch_size : int
            Windows per forward pass.
        calibrated : bool
            Divide each fold's logits by its temperature fitted on its validation part
            (:func:`serlib.calibration.fold_temperatures`) when the run kept its validation
            predictions (``temperatures`` says which were used; None: not scaled). The
            predicted class of a single fold never changes; False: the raw probabilities, as
            in the run's ``predictions.csv``.
        """
        import torch

        from serlib.training import TrainConfig, resolve_device

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise SerlibError(f"{run_dir}: run folder not found")
        config = _read_json(run_dir / "config.json", "run config")
        try:
            train = TrainConfig.from_dict(config["train"])
            feature_config = (FeatureConfig.from_dict(config["features"])
                              if "features" in config else FeatureConfig.preset(train.feature))
        except KeyError:
            raise SerlibError(f"{run_dir / 'config.json'}: has no 'train' section") from None
        except (SerlibError, TypeError, ValueError, AttributeError) as error:
            raise SerlibError(f"{run_dir / 'config.json'}: not a valid run config "
                              f"({error})") from None
        if train.crop_frames:
            raise SerlibError(f"{run_dir}: trained on random crops (crop_frames="
                              f"{train.crop_frames}); predicting such runs is not supported yet")
        available = list(range(1, train.folds + 1))
        if folds is None:
            missing = [k for k in available
                       if not (run_dir / f"fold_{k}" / "metrics.json").is_file()]
            if missing:
                raise SerlibError(
                    f"{run_dir}: unfinished run, fold(s) {missing} have no metrics.json; "
                    "finish it (rerun serlib cv) or pass the finished folds explicitly")
        folds = _check_folds(folds, available, str(run_dir))
        device = resolve_device(device)

        models, means, stds, configs, names = [], [], [], [], None
        for k in folds:
            path = run_dir / f"fold_{k}" / "checkpoint.pt"
            model, mean, std, fold_config, class_names = _load_fold(path, device=device)
            if fold_config != train:
                raise SerlibError(f"{path}: its train_config differs from "
                                  f"{run_dir / 'config.json'} (a checkpoint of another run?)")
            if names is not None and class_names != names:
                raise SerlibError(f"{path}: classes {class_names} differ from fold "
                                  f"{folds[0]}'s {names}")
            if mean.shape != (feature_config.n_features,):
                raise SerlibError(f"{path}: normalisation of {mean.shape[0]} features, the "
                                  f"feature config has {feature_config.n_features}")
            names = class_names
            models.append(model)
            means.append(mean)
            stds.append(std)
            configs.append(fold_config)
        float16 = train.feature_dtype == "float16"
        temperatures = None
        if calibrated:
            from serlib.calibration import fold_temperatures, has_validation

            if has_validation(run_dir):
                fitted = fold_temperatures(run_dir, folds)
                temperatures = [fitted[k] for k in folds]
        # a run normalised per utterance or speaker gets features normalised (and rounded
        # to float16 first) outside the module: Predictor._normalise_input
        ensemble = _ensemble_module(models, means, stds, configs,
                                    float16_features=float16 and train.normalisation == "corpus",
                                    temperatures=temperatures).to(device)

        def score(features: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))[:, None]
            lt = None if lengths is None else torch.from_numpy(lengths.astype(np.int64))
            with torch.inference_mode():
                return ensemble(x.to(device), None if lt is None else lt.to(device)
                                ).cpu().numpy()

        predictor = cls(score=score, feature_config=feature_config, class_names=names,
                        folds=folds, float16_features=float16, hop_seconds=hop_seconds,
                        batch_size=batch_size, source=f"run {run_dir}", ensemble=ensemble,
                        input_normalisation=train.normalisation)
        predictor.temperatures = temperatures
        return predictor

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, *, hop_seconds: float | None = None,
                  batch_size: int = 32) -> Predictor:
        """An exported model (:meth:`to_onnx`) run by onnxruntime on the CPU; no torch needed.

        Parameters
        ----------
        path : path
            The ``.onnx`` file; its ``.json`` companion must lie beside it.
        """
        path = Path(path)
        meta_path = path.with_suffix(".json")
        meta = _read_json(meta_path, "ONNX model description")
        if meta.get("format") != ONNX_FORMAT or meta.get("format_version") not in \
                (ONNX_FORMAT_VERSION, ONNX_LENGTHS_VERSION):
            raise SerlibError(f"{meta_path}: not a {ONNX_FORMAT} v{ONNX_FORMAT_VERSION} file "
                              f"(format={meta.get('format')!r}, "
                              f"format_version={meta.get('format_version')!r})")
        if not path.is_file():
            raise SerlibError(f"{path}: ONNX model not found")
        try:
            import onnxruntime
        except ImportError:
            raise SerlibError("onnxruntime is not installed: pip install 'serlib[onnx]'") \
                from None
        try:
            session = onnxruntime.InferenceSession(str(path),
                                                   providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own (non-exported) types
            raise SerlibError(f"{path}: onnxruntime cannot load it ({error})") from None
        feature_config = FeatureConfig.from_dict(meta["features"])

        takes_lengths = meta.get("lengths") is not None

        def score(features: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
            x = np.ascontiguousarray(features, dtype=np.float32)[:, None]   # (N, 1, F, T)
            feeds = {ONNX_INPUT: x}
            if takes_lengths:
                if lengths is None:
                    lengths = np.full(len(x), x.shape[-1])
                feeds[ONNX_LENGTHS] = np.asarray(lengths, dtype=np.int64)        # (N,)
            return session.run([ONNX_OUTPUT], feeds)[0]

        predictor = cls(score=score, feature_config=feature_config,
                        class_names=meta["class_names"], folds=meta["folds"],
                        float16_features=meta["feature_dtype"] == "float16",
                        hop_seconds=hop_seconds, batch_size=batch_size,
                        source=f"onnx {path}",
                        input_normalisation=meta.get("input_normalisation", "corpus"))
        predictor.temperatures = meta.get("temperatures")   # applied inside the graph
        return predictor

    # ------------------------------------------------------------------ prediction
    def predict_features(self, features: np.ndarray, *,
                         durations_s: np.ndarray | None = None) -> np.ndarray:
        """The ensemble on feature matrices as :func:`serlib.features.extract` returns them.

        Parameters
        ----------
        features : np.ndarray, shape (N, F, T)
            Unnormalised; ``(F, T)`` must be ``feature_config.shape``.
        durations_s : np.ndarray of float, shape (N,), optional
            Seconds of audio behind each matrix (default: the whole matrix). Runs trained on
            each clip's own frames (``own_frames``, ``normalisation="utterance"`` or
            ``"speaker"``) use them to ignore the padding, as training did.

        Returns
        -------
        np.ndarray, float32, shape (N, C)
            Probabilities averaged over the fold models.
        """
        features = np.asarray(features)
        if features.ndim != 3 or features.shape[1:] != self.feature_config.shape:
            raise SerlibError(f"features of shape {features.shape}: expected (N, "
                              f"{', '.join(map(str, self.feature_config.shape))})")
        config = self.feature_config
        if durations_s is None:
            durations_s = np.full(len(features), config.max_seconds)
        lengths = clip_frames(np.asarray(durations_s, dtype=np.float64),
                              sample_rate=config.sample_rate, hop_length=config.hop_length,
                              max_seconds=config.max_seconds, n_frames=config.n_frames)
        out = [self._score(self._normalise_input(features[i:i + self.batch_size],
                                                 lengths[i:i + self.batch_size]),
                           lengths[i:i + self.batch_size])
               for i in range(0, len(features), self.batch_size)]
        if not out:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        probabilities = np.concatenate(out).astype(np.float32, copy=False)
        if not np.isfinite(probabilities).all():
            rows = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
            raise SerlibError(f"{self.source}: non-finite (NaN or inf) probabilities for "
                              f"{len(rows)} of {len(probabilities)} feature matrices (first: "
                              f"row {rows[0]}); their features or the model hold NaN/inf")
        return probabilities

    def _normalise_input(self, features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(N, F, T) features as the model takes them: unchanged for a run normalised by its
        training part's statistics (the model applies them); for a run normalised per
        utterance or per speaker, rounded to float16 and back when the run stored float16
        features, then normalised as training did (padding -> 0)."""
        if self.input_normalisation == "corpus":
            return features
        features = np.asarray(features, dtype=np.float32)
        if self.float16_features:
            features = features.astype(np.float16).astype(np.float32)
        if self.input_normalisation == "utterance":
            return utterance_normalise(features, lengths)
        if self.speaker is None:
            raise SerlibError(
                f"{self.source}: trained with normalisation='speaker' (each clip by its "
                "speaker's statistics): give the speaker's recordings first, "
                "predictor.for_speaker(paths) (serlib predict --speaker-reference), or the "
                "statistics, predictor.with_speaker_statistics(mean=..., std=...)")
        mean, std = self.speaker
        return normalise_own_frames(features, lengths, mean=mean, std=std)

    def with_speaker_statistics(self, *, mean: np.ndarray, std: np.ndarray) -> Predictor:
        """A copy of this predictor that normalises every clip by one speaker's statistics.

        For runs trained with ``normalisation="speaker"``; :meth:`for_speaker` computes the
        statistics from recordings.

        Parameters
        ----------
        mean, std : np.ndarray, shape (F,)
            Per-band mean and standard deviation of the speaker's features (unnormalised,
            as :func:`serlib.features.extract` returns them; std > 0).
        """
        import copy

        if self.input_normalisation != "speaker":
            raise SerlibError(f"{self.source}: trained with normalisation="
                              f"{self.input_normalisation!r}, not 'speaker': it takes no "
                              "speaker statistics")
        n_features = self.feature_config.n_features
        mean = np.asarray(mean, dtype=np.float32)
        std = np.asarray(std, dtype=np.float32)
        for name, value in (("mean", mean), ("std", std)):
            if value.shape != (n_features,) or not np.isfinite(value).all():
                raise SerlibError(f"speaker {name} of shape {value.shape}: expected "
                                  f"({n_features},) finite numbers, one per feature band")
        if (std <= 0).any():
            raise SerlibError(f"speaker std has {int((std <= 0).sum())} value(s) <= 0: "
                              "expected > 0 in every band")
        out = copy.copy(self)
        out.speaker = (mean, std)
        return out

    def for_speaker(self, paths: Sequence[str | os.PathLike]) -> Predictor:
        """A copy of this predictor for one speaker, from recordings of that speaker.

        For runs trained with ``normalisation="speaker"``: the per-band mean and standard
        deviation over the own frames of the recordings' features (each recording's first
        ``max_seconds``, cut or padded as training cut its clips; no label needed), as
        training computed them over a speaker's clips. The more recordings (of several
        emotions), the closer to training: training used every clip of a speaker.

        Parameters
        ----------
        paths : sequence of path
            Audio files of the speaker (any format libsndfile reads).
        """
        from serlib.training import normalisation_stats

        if self.input_normalisation != "speaker":     # before any file is read
            raise SerlibError(f"{self.source}: trained with normalisation="
                              f"{self.input_normalisation!r}, not 'speaker': it takes no "
                              "speaker recordings")
        paths = list(paths)
        if not paths:
            raise SerlibError("for_speaker: no recording given (expected one or more audio "
                              "files of the speaker)")
        config = self.feature_config
        features, durations = [], []
        for path in paths:
            name = display_name(path)
            y, sr = load_audio(path)
            features.append(extract(y, sr=int(sr), config=config, name=name))
            durations.append(np.shape(y)[-1] / sr)
        x = np.stack(features).astype(np.float32)                       # (N, F, T)
        if self.float16_features:
            x = x.astype(np.float16).astype(np.float32)
        lengths = clip_frames(np.asarray(durations, dtype=np.float64),
                              sample_rate=config.sample_rate, hop_length=config.hop_length,
                              max_seconds=config.max_seconds, n_frames=config.n_frames)
        mean, std = normalisation_stats(x, lengths)
        return self.with_speaker_statistics(mean=mean, std=std)

    @staticmethod
    def _named(name: str, function, *args, **kwargs):
        """``function(*args, **kwargs)``, its SerlibError prefixed with the recording's name."""
        try:
            return function(*args, **kwargs)
        except SerlibError as error:
            raise SerlibError(f"{name}: {error}") from None

    def window_starts(self, n_samples: int) -> np.ndarray:
        """First sample of each window of a recording of ``n_samples`` samples at the
        feature sample rate: shape (n_windows,). See the module docstring."""
        window = self.feature_config.n_samples
        if n_samples <= window:
            return np.zeros(1, dtype=np.int64)
        hop = max(1, round(self.hop_seconds * self.feature_config.sample_rate))
        n_windows = 1 + math.ceil((n_samples - window) / hop)
        return np.arange(n_windows, dtype=np.int64) * hop

    def predict_waveform(self, y: np.ndarray, *, sample_rate: int, name: str = "waveform",
                         long: str = "windows") -> Prediction:
        """Probabilities for one recording.

        Parameters
        ----------
        y : np.ndarray, float, shape (n_samples,) or (channels, n_samples)
            Channel-first like librosa; stereo is averaged to mono.
        sample_rate : int
            Hz; resampled to the run's rate as training did.
        name : str
            Names the recording in error messages.
        long : {"windows", "cut"}
            A recording longer than ``max_seconds``: ``"windows"`` (default) averages over
            windows; ``"cut"`` uses only its first ``max_seconds``, as training did.

        Returns
        -------
        Prediction
        """
        import librosa

        if long not in LONG_MODES:
            raise SerlibError(f"long={long!r}: expected one of {LONG_MODES}")
        config = self.feature_config
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
                or sample_rate <= 0:
            raise SerlibError(f"{name}: sample_rate={sample_rate!r} must be a positive "
                              "integer (Hz)")
        n_input = np.shape(y)[-1] if np.ndim(y) else 0
        duration_s = n_input / sample_rate
        # length after resampling, as librosa.resample fixes it
        n_resampled = math.ceil(n_input * config.sample_rate / sample_rate)
        if long == "cut" or n_resampled <= config.n_samples:
            # one window: exactly the training path (serlib.features.extract)
            features = extract(y, sr=int(sample_rate), config=config, name=name)[None]
            starts_s = np.zeros(1)
            ends_s = np.array([min(duration_s, config.max_seconds)])
            probs = self._named(name, self.predict_features, features,
                                durations_s=[duration_s])
        else:
            mono = _as_mono(y, name=name)
            if sample_rate != config.sample_rate:
                mono = librosa.resample(mono, orig_sr=int(sample_rate),
                                        target_sr=config.sample_rate,
                                        res_type=config.resample_type)
            starts = self.window_starts(len(mono))
            stops = np.minimum(starts + config.n_samples, len(mono))
            probs = []
            for i in range(0, len(starts), self.batch_size):
                block = np.stack([
                    extract(mono[a:b], sr=config.sample_rate, config=config,
                            name=f"{name} [{a / config.sample_rate:.2f} s]")
                    for a, b in zip(starts[i:i + self.batch_size],
                                    stops[i:i + self.batch_size], strict=True)
                ])                                              # (b, F, T)
                probs.append(self._named(
                    name, self.predict_features, block, durations_s=(stops[i:i + self.batch_size]
                                        - starts[i:i + self.batch_size]) / config.sample_rate))
            probs = np.concatenate(probs)                       # (n_windows, C)
            starts_s = starts / config.sample_rate
            ends_s = np.minimum(stops / config.sample_rate, duration_s)
        windows = pd.DataFrame({"start_s": starts_s, "end_s": ends_s,
                                **{f"p_{c}": probs[:, k]
                                   for k, c in enumerate(self.class_names)}})
        return Prediction(probabilities=probs.mean(axis=0).astype(np.float32),
                          class_names=self.class_names, duration_s=float(duration_s),
                          windows=windows)

    def predict_file(self, path: str | os.PathLike, *, long: str = "windows") -> Prediction:
        """:meth:`predict_waveform` of an audio file (any format libsndfile reads).

        Raises SerlibError naming the file when it is missing, unreadable, truncated, empty or
        has NaN/inf samples.
        """
        name = display_name(path)           # printable even when not UTF-8
        if long == "windows":
            frames, sr, duration_s = audio_info(path)
            if duration_s > STREAM_SECONDS:   # decoded and resampled window by window
                return self._predict_stream(path, name=name)
        y, sr = load_audio(path)                                # (channels, n)
        prediction = self.predict_waveform(y, sample_rate=sr, name=name, long=long)
        return Prediction(probabilities=prediction.probabilities,
                          class_names=prediction.class_names,
                          duration_s=prediction.duration_s, windows=prediction.windows,
                          path=name)

    def _predict_stream(self, path: str | os.PathLike, *, name: str) -> Prediction:
        """:meth:`predict_file` of a long recording, reading only one window (plus a
        resampling margin) at a time: memory stays that of a batch of windows, however long
        the file. Each window is resampled from a start on the resampling grid (a multiple
        of ``sr / gcd(sr, target)`` input samples), so that its samples fall where the whole
        file's resampling puts them; the margin gives the filter the same neighbourhood."""
        import librosa
        import soxr

        from serlib.features.audio import (
            RESAMPLE_MARGIN_SECONDS,
            _check_not_truncated,
            check_samples,
            open_audio,
        )

        config = self.feature_config
        target = config.sample_rate
        with open_audio(path) as f:
            _check_not_truncated(f, name)
            sr, n_input = int(f.samplerate), int(f.frames)
            step = sr // math.gcd(sr, target)                   # input samples per grid step
            n_resampled = math.ceil(n_input * target / sr) if sr != target else n_input
            margin = math.ceil(RESAMPLE_MARGIN_SECONDS * sr)

            def window(a: int, b: int) -> np.ndarray:          # target samples [a, b)
                if sr == target:
                    lo, hi = a, b
                else:
                    lo = max(0, (a * sr // target - margin) // step * step)
                    hi = min(n_input, math.ceil(b * sr / target) + margin)
                f.seek(lo)
                data = f.read(hi - lo, dtype="float32", always_2d=True).T  # (channels, n)
                where = f"{name} [{a / target:.2f} s]"
                check_samples(data, name=where)
                mono = librosa.to_mono(data) if len(data) > 1 else data[0]
                if sr == target:
                    return mono
                resampled = soxr.resample(mono, sr, target, quality=config.resample_type)
                if hi == n_input:   # the file's end: the length librosa.resample fixes
                    resampled = librosa.util.fix_length(
                        resampled, size=n_resampled - lo * target // sr)
                first = a - lo * target // sr
                return resampled[first:first + (b - a)]

            starts = self.window_starts(n_resampled)
            stops = np.minimum(starts + config.n_samples, n_resampled)
            probs = []
            for i in range(0, len(starts), self.batch_size):
                block = np.stack([
                    extract(window(int(a), int(b)), sr=target, config=config,
                            name=f"{name} [{a / target:.2f} s]")
                    for a, b in zip(starts[i:i + self.batch_size],
                                    stops[i:i + self.batch_size], strict=True)
                ])                                              # (b, F, T)
                probs.append(self._named(
                    name, self.predict_features, block, durations_s=(
                        stops[i:i + self.batch_size] - starts[i:i + self.batch_size]) / target))
        probs = np.concatenate(probs)                           # (n_windows, C)
        duration_s = n_input / sr
        windows = pd.DataFrame({"start_s": starts / target,
                                "end_s": np.minimum(stops / target, duration_s),
                                **{f"p_{c}": probs[:, k]
                                   for k, c in enumerate(self.class_names)}})
        return Prediction(probabilities=probs.mean(axis=0).astype(np.float32),
                          class_names=self.class_names, duration_s=float(duration_s),
                          windows=windows, path=name)

    # ------------------------------------------------------------------ export
    def to_onnx(self, path: str | os.PathLike, *, check: bool = True) -> dict:
        """Write the ensemble as one ONNX graph and ``<path stem>.json`` beside it.

        The graph takes unnormalised features ``features`` (batch, 1, F, T) and returns
        ``probabilities`` (batch, C), averaged over the folds (see the module docstring);
        a run normalised per utterance or per speaker takes features normalised so.
        Both files are written atomically. Needs ``pip install 'serlib[onnx]'`` (onnx and
        onnxscript for torch's exporter, onnxruntime for the check).

        Parameters
        ----------
        path : path
            The ``.onnx`` file to write.
        check : bool
            Run the written graph with onnxruntime (when installed) on random features and
            compare with torch.

        Returns
        -------
        dict
            The JSON description, plus ``max_abs_diff`` (onnxruntime vs torch; None when not
            checked).
        """
        import copy
        import logging
        import warnings

        import torch

        if self._ensemble is None:
            raise SerlibError(f"{self.source}: only a predictor built from a run can be "
                              "exported")
        config = self._ensemble.configs[0]
        outside = config.normalisation != "corpus"   # per utterance or speaker: not in the graph
        own_frames = config.own_frames
        path = Path(path)
        if path.suffix != ".onnx":
            raise SerlibError(f"{path}: the ONNX file name must end in .onnx")
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise SerlibError("ONNX export needs onnx and onnxscript: "
                              "pip install 'serlib[onnx]'") from None
        module = copy.deepcopy(self._ensemble).cpu().eval()
        n_features, n_frames = self.feature_config.shape
        example = torch.randn(2, 1, n_features, n_frames, generator=torch.Generator()
                              .manual_seed(0)) * 10
        # own-frame runs: each clip's own frames are a second input (the rest is masked)
        example_lengths = torch.tensor([n_frames, max(1, n_frames // 3)], dtype=torch.int64)
        inputs = (example, example_lengths) if own_frames else (example,)
        names = [ONNX_INPUT, ONNX_LENGTHS] if own_frames else [ONNX_INPUT]
        batch = torch.export.Dim("batch", min=1)
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    module, inputs, input_names=names, output_names=[ONNX_OUTPUT],
                    dynamic_shapes=tuple({0: batch} for _ in inputs), dynamo=True,
                    opset_version=ONNX_OPSET, verbose=False)
        finally:
            quiet.setLevel(level)
        with atomic_path(path) as tmp:
            program.save(str(tmp))
        meta = {
            "format": ONNX_FORMAT,
            "format_version": ONNX_FORMAT_VERSION if not own_frames else ONNX_LENGTHS_VERSION,
            "input": {"name": ONNX_INPUT, "shape": ["batch", 1, n_features, n_frames],
                      "dtype": "float32", "normalised": outside,
                      "description": "feature matrices as serlib.features.extract returns "
                                     "them (unnormalised); each fold's mean and std are "
                                     "applied inside the graph" if not outside else
                                     f"feature matrices normalised per {config.normalisation} "
                                     "(float16-rounded first when feature_dtype is float16; "
                                     "padding set to 0), as serlib's Predictor.from_onnx "
                                     "does"},
            "input_normalisation": config.normalisation,
            "lengths": None if not own_frames else {
                "name": ONNX_LENGTHS, "shape": ["batch"], "dtype": "int64",
                "description": "each clip's own frames (1..T; serlib.augment.clip_frames of "
                               "its duration): the network ignores the frames after them, as "
                               "in training"},
            "output": {"name": ONNX_OUTPUT, "shape": ["batch", len(self.class_names)],
                       "description": "softmax probabilities averaged over the folds"},
            "class_names": list(self.class_names),
            "folds": self.folds,
            "features": self.feature_config.to_dict(),
            "feature_dtype": "float16" if self.float16_features else "float32",
            "normalisation": {
                "applied": "inside the graph: (features - mean[k]) / std[k] per fold k" + (
                    f" (the identity: the input is normalised per {config.normalisation} "
                    "outside the graph)" if outside else ""),
                "per_fold": {
                    str(k): {"mean": module.mean[i].flatten().tolist(),
                             "std": module.std[i].flatten().tolist()}
                    for i, k in enumerate(self.folds)
                },
            },
            "windows": {"length_s": self.feature_config.max_seconds,
                        "default_hop_s": self.feature_config.max_seconds / 2},
            "source": self.source,
            "train_config": module.configs[0].to_dict(),
            # each fold's logits are divided by its temperature inside the graph (None: 1)
            "temperatures": self.temperatures,
            "opset": ONNX_OPSET,
        }
        atomic_write_json(path.with_suffix(".json"), meta)
        diff = None
        if check:
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                pass
            else:
                durations = None if not own_frames else (
                    example_lengths.numpy() * self.feature_config.hop_length
                    / self.feature_config.sample_rate)
                reference, exported = self, Predictor.from_onnx(path)
                if config.normalisation == "speaker":    # any speaker: the example's own
                    mean = example.mean(dim=(0, 1, 3)).numpy()
                    std = example.std(dim=(0, 1, 3)).numpy()
                    reference = self.with_speaker_statistics(mean=mean, std=std)
                    exported = exported.with_speaker_statistics(mean=mean, std=std)
                expected = reference.predict_features(example[:, 0].numpy(),
                                                      durations_s=durations)
                got = exported.predict_features(example[:, 0].numpy(), durations_s=durations)
                diff = float(np.abs(got - expected).max())
                if not math.isfinite(diff):
                    raise SerlibError(f"{path}: onnxruntime and torch disagree by {diff} "
                                      "(non-finite); the exported model is not usable")
        return {**meta, "max_abs_diff": diff}


__all__ = ["LONG_MODES", "Prediction", "Predictor"]
