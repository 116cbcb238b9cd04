"""Run configuration: the typed dataclass saved as ``config.json`` beside every run.

This module imports nothing heavy (no torch, scikit-learn, librosa or matplotlib), so that the
command line can build its parser, with these defaults, before any of them is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES

#: Cross-validation protocols (serlib.splits.make_folds).
PROTOCOLS = ("stratified", "session")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a cross-validation run; saved as ``config.json`` beside it.

    The paper states the model, the loss and the protocol; the rest is ours (it is silent on
    them) and documented here.
    """

    feature: str = "mfcc"          # "spectrogram" (128 mel bands, dB) or "mfcc" (40)
    loss: str = "focal"            # "focal" or "softmax" (= cross-entropy = focal with gamma 0)
    gamma: float = 2.0             # focal loss focusing parameter (the paper's example uses 2)
    alpha: tuple[float, ...] | None = None  # optional per-class weights (PAPER_CLASSES order)
    protocol: str = "stratified"   # "stratified" (the paper's) or "session" (speaker-independent)
    folds: int = 5
    epochs: int = 30
    width: int = 64                # ResNet-18 base width (64 = the paper's network)
    batch_size: int = 32
    optimizer: str = "adam"        # "adam" or "sgd" (momentum 0.9, nesterov)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"       # "cosine" (to 0 over `epochs`) or "constant"
    val_fraction: float = 0.1      # inner validation split of the training part (whole
                                   # speakers under the session protocol, see train_fold)
    patience: int = 10             # stop after this many epochs without a better val UA; 0: off
    seed: int = 0
    device: str = "auto"           # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
    amp: bool = True               # bf16 autocast on CUDA (no effect on the CPU); False: float32
                                   # (TF32 convolutions), as fast at batch 32 on an H100, where a
                                   # step is dispatch-bound (benchmarks/README.md)
    feature_dtype: str = "float32" # feature store dtype ("float16" halves memory)

    def __post_init__(self):
        checks = {
            "feature": self.feature in ("spectrogram", "mfcc"),
            "loss": self.loss in ("focal", "softmax"),
            "protocol": self.protocol in PROTOCOLS,
            "optimizer": self.optimizer in ("adam", "sgd"),
            "schedule": self.schedule in ("cosine", "constant"),
            "gamma": _finite(self.gamma) and self.gamma >= 0,
            "folds": isinstance(self.folds, int) and self.folds >= 2,
            "epochs": isinstance(self.epochs, int) and self.epochs >= 1,
            "width": isinstance(self.width, int) and self.width >= 1,
            "batch_size": isinstance(self.batch_size, int) and self.batch_size >= 2,
            "lr": _finite(self.lr) and self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "val_fraction": 0 < self.val_fraction < 1,
            "patience": isinstance(self.patience, int) and self.patience >= 0,
            "feature_dtype": self.feature_dtype in ("float32", "float16"),
            # per-class weights: positive and finite (all zero would make the loss 0)
            "alpha": self.alpha is None or (
                len(self.alpha) == len(PAPER_CLASSES)
                and all(_finite(a) and a > 0 for a in self.alpha)),
            "amp": isinstance(self.amp, bool),
        }
        for name, ok in checks.items():
            if not ok:
                raise SerlibError(f"TrainConfig.{name}={getattr(self, name)!r} is not valid")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["alpha"] = None if self.alpha is None else list(self.alpha)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise SerlibError(f"unknown TrainConfig field(s): {', '.join(sorted(unknown))}")
        data = dict(data)
        if data.get("alpha") is not None:
            data["alpha"] = tuple(float(a) for a in data["alpha"])
        return cls(**data)


__all__ = ["PROTOCOLS", "TrainConfig"]
