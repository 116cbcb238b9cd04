"""GPU benchmark (CUDA): serlib's CUDA training setup against plain float32, and the torch
feature path on the GPU against the librosa path. Prints JSON.

In one run on one CUDA device:

- ``train_step``: ResNet-18 (width 64) forward + backward + optimizer step on batches of 32 (our
  default) and 128, spectrogram (1, 128, 259) and MFCC (1, 40, 259) inputs, in four setups that
  add one thing each: ``fp32`` (a plain loop: contiguous float32, torch's default Adam),
  ``channels_last``, ``channels_last_fused`` (+ fused Adam), and ``serlib`` (+ bf16 autocast:
  the step :func:`serlib.training.train_one_epoch` runs on CUDA, with serlib's optimizer). Per
  setup: ms per step (median of timed steps after a warm-up, CUDA-synchronised), samples/s and
  TFLOP/s (FLOPs counted by ``torch.utils.flop_counter``). Ratio ``serlib_speedup`` = fp32 /
  serlib. cuDNN autotuning is on throughout, as serlib trains.
- ``epoch_overhead``: one epoch through ``serlib.training.train_one_epoch`` (whole split on the
  GPU, batches gathered there) / the same steps on ready-made device batches (target <= 1.10).
- ``features``: ``n_clips`` 6-s speech-like clips, already resampled: the librosa path
  (:func:`serlib.features.features_from_prepared`, one process) against
  :class:`serlib.features.torch_features.TorchFeatureExtractor` on the GPU in batches of 64,
  host-to-device and back included. Ratio ``gpu_speedup`` and ``max_abs_diff`` per kind.

Usage: python benchmarks/gpu.py [--steps 30] [--clips 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from training import SHAPES, epoch_overhead, step_flops  # benchmarks/training.py (on sys.path)

from serlib.corpora.speech import synthesize_speech
from serlib.features import FeatureConfig, features_from_prepared, prepare_waveform
from serlib.features.torch_features import TorchFeatureExtractor
from serlib.losses import focal_loss
from serlib.models import ResNet18
from serlib.training import TrainConfig, _autocast, _optimizer

SETUPS = ("fp32", "channels_last", "channels_last_fused", "serlib")


def _synced(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def make_step(setup: str, *, width: int, shape: tuple[int, int], batch: int,
              device: torch.device):
    torch.manual_seed(0)
    channels_last = setup != "fp32"
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = ResNet18(width=width).to(device, memory_format=layout)
    if setup == "serlib":
        optimizer = _optimizer(model, TrainConfig())
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3,
                                     fused=setup == "channels_last_fused")
    x = torch.randn(batch, 1, *shape, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 4, (batch,), device=device)

    def step():
        with _autocast(device) if setup == "serlib" else torch.autocast("cuda", enabled=False):
            logits = model(x)
        loss = focal_loss(logits.float(), y, gamma=2.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step, x, y


def time_step(step, steps: int) -> float:
    for _ in range(5):  # warm-up: cuDNN autotuning, allocator
        step()
    return statistics.median(_synced(step) for _ in range(steps))


def train_steps(device: torch.device, *, steps: int, width: int = 64,
                batches: tuple[int, ...] = (32, 128)) -> dict:
    out = {}
    for feature, shape in SHAPES.items():
        for batch in batches:
            flops = step_flops(width, shape, batch)  # counted on the CPU, same model
            row = {"gflop_per_step": round(flops / 1e9, 1)}
            for setup in SETUPS:
                seconds = time_step(make_step(setup, width=width, shape=shape, batch=batch,
                                              device=device)[1], steps)
                row[setup] = {"ms_per_step": round(1e3 * seconds, 2),
                              "samples_per_s": round(batch / seconds, 1),
                              "tflops": round(flops / seconds / 1e12, 2)}
            row["serlib_speedup"] = round(
                row["fp32"]["ms_per_step"] / row["serlib"]["ms_per_step"], 2)
            out[f"{feature}_batch{batch}"] = row
    return out


def features(device: torch.device, *, n_clips: int, batch: int = 64) -> dict:
    out = {"n_clips": n_clips, "batch": batch}
    clips16k = [synthesize_speech(duration_s=6.0, sample_rate=16000, seed=i,
                                  emotion=("neutral", "happiness", "sadness", "anger")[i % 4])
                for i in range(n_clips)]
    for kind in SHAPES:
        config = FeatureConfig.preset(kind)
        prepared = np.stack([prepare_waveform(y, sr=16000, config=config) for y in clips16k])
        start = time.perf_counter()
        reference = np.stack([features_from_prepared(y, config=config) for y in prepared])
        cpu_s = time.perf_counter() - start
        module = TorchFeatureExtractor(config).to(device)

        def on_gpu(module=module, prepared=prepared):
            with torch.no_grad():
                return np.concatenate([
                    module(torch.from_numpy(prepared[i:i + batch]).to(device)).cpu().numpy()
                    for i in range(0, len(prepared), batch)])

        on_gpu()  # warm-up: cuFFT plans
        gpu_s = min(_synced(on_gpu) for _ in range(3))
        ours = on_gpu()
        out[kind] = {"librosa_clips_per_s": round(n_clips / cpu_s, 1),
                     "gpu_clips_per_s": round(n_clips / gpu_s, 1),
                     "gpu_speedup": round(cpu_s / gpu_s, 1),
                     "max_abs_diff": float(np.abs(ours - reference).max())}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setup")
    parser.add_argument("--clips", type=int, default=256, help="clips for the feature check")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
    }
    report["train_step"] = train_steps(device, steps=args.steps)
    # the CPU benchmark's measure, on the GPU: width 64, 40 batches, CUDA-synchronised timer
    report["epoch_overhead"] = epoch_overhead(width=64, n_batches=40, device=device,
                                              timer=_synced)
    report["features"] = features(device, n_clips=args.clips)
    report["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    report["targets_met"] = {
        "epoch_overhead<=1.10": report["epoch_overhead"]["epoch_overhead"] <= 1.10,
        "serlib_speedup>1 (every feature and batch)": all(
            row["serlib_speedup"] > 1 for row in report["train_step"].values()),
        "feature tolerance (1e-4 dB spectrogram, 1e-3 mfcc)": (
            report["features"]["spectrogram"]["max_abs_diff"] <= 1e-4
            and report["features"]["mfcc"]["max_abs_diff"] <= 1e-3),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
