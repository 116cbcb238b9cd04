"""Run folders back into the paper's tables and figures.

A run folder is what :func:`serlib.training.run_cross_validation` and
:func:`serlib.grid.run_grid` write; :mod:`serlib.runs` reads and validates it (``load_run`` and
``load_runs`` below are its). The book's results chapter builds every table from these files;
nothing is typed by hand.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from serlib import paper
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES, SHORT_NAMES
from serlib.metrics import confusion_percent
from serlib.runs import Run, load_run, load_runs  # noqa: F401  (the run folder's one home)


def percent(mean: float, std: float) -> str:
    """``"74.2 ± 1.3"`` from fractions."""
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def provenance(run: Run, *, profile: str | None = None) -> str:
    """Where a number came from: corpus, protocol (as it forms folds on this corpus:
    sessions or speaker folds, :mod:`serlib.corpus_facts`), profile, commit, device."""
    from serlib.corpus_facts import run_facts

    s = run.summary
    facts = run_facts(run)
    parts = [f"corpus: {facts.name} ({s['n_utterances']} utterances)",
             f"protocol: {facts.protocol_phrase(s['protocol'], s['n_folds'])}"]
    if s.get("width") is not None:
        parts.append(f"width {s['width']}, {s['epochs']} epochs")
    if profile:
        parts.append(f"profile: {profile}")
    parts += [f"commit: {s.get('commit', '?')}", f"device: {s.get('device', '?')}"]
    versions = run.versions
    if versions:
        shown = ("torch", "librosa", "numpy", "scikit-learn", "cuda")
        parts.append(", ".join([f"python {versions.get('python')}"] + [
            f"{name} {versions[name]}" for name in shown if versions.get(name)]))
    return "; ".join(parts)


_SEEDED = re.compile(r"^(?P<base>.+?)(?:_seed(?P<seed>\d+))?$")


def seed_runs(runs_dir: str | os.PathLike, base: str) -> list[Run]:
    """The finished runs of one configuration over seeds: folder ``base`` and every
    ``base_seed<k>`` (as :meth:`serlib.book.Profile.runs` names them), in seed order."""
    from serlib.studies import seed_suffix

    runs_dir = Path(runs_dir)
    found = []
    for folder in runs_dir.glob(f"{glob.escape(base)}*"):
        m = _SEEDED.match(folder.name)
        if m and m["base"] == base and (folder / "summary.json").is_file():
            seed = int(m["seed"] or 0)
            if folder.name == base + seed_suffix(seed):     # the one naming rule
                found.append((seed, folder))
    return [load_run(folder) for _, folder in sorted(found)]


def load_seeded_runs(runs_dir: str | os.PathLike) -> dict[tuple[str, str], list[Run]]:
    """The paper's four configurations (``<feature>_<loss>`` and their ``_seed<k>`` twins),
    keyed by (feature, loss), one run per seed; configurations without a run are left out."""
    out = {}
    for feature, loss in paper.TABLE4[["feature", "loss"]].itertuples(index=False):
        runs = seed_runs(runs_dir, f"{feature}_{loss}")
        if runs:
            out[(feature, loss)] = runs
    return out


def _as_list(runs) -> list[Run]:
    return list(runs) if isinstance(runs, (list, tuple)) else [runs]


def pooled_fold_summary(runs: Run | list[Run]) -> dict:
    """WA and UA (mean ± std over seeds x folds, as text), the number of seeds, total wall
    time and devices of one configuration's runs (``summary.json`` ``wall_seconds`` and
    ``device``; "-" when a run does not record them)."""
    runs = _as_list(runs)
    wa = np.array([m["wa"] for r in runs for m in r.folds])
    ua = np.array([m["ua"] for r in runs for m in r.folds])

    def std(values: np.ndarray) -> float:
        return float(values.std(ddof=1)) if len(values) > 1 else 0.0

    seconds = [r.summary.get("wall_seconds") for r in runs]
    devices = sorted({str(r.summary["device"]) for r in runs if r.summary.get("device")})
    return {"WA": percent(float(wa.mean()), std(wa)), "UA": percent(float(ua.mean()), std(ua)),
            "seeds x folds": f"{len(runs)} x {len(runs[0].folds)}",
            "wall time": (format_seconds(sum(seconds)) if all(
                isinstance(s, (int, float)) for s in seconds) else "-"),
            "device": ", ".join(devices) or "-"}


def format_seconds(seconds: float) -> str:
    """``"48 s"``, ``"6.3 min"``, ``"2.1 h"``: a readable duration."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


#: Row labels of the measured baselines shown beside the paper's method (folder -> label).
BASELINE_LABELS = {
    "baseline_logreg": "Baseline (measured): logistic regression on MFCC mean and std",
    "baseline_logreg-speaker": "Baseline (measured): logistic regression on MFCC mean and std, "
                               "normalised per speaker",
    "baseline_egemaps-svm": "Baseline (measured): eGeMAPSv02 functionals + SVM",
}
_FEATURE_NAMES = {"spectrogram": "Spectrogram", "mfcc": "MFCC"}


#: Folder prefix of a fused run (:mod:`serlib.fusion`, a profile's ``fusion:`` entries).
FUSION_PREFIX = "fusion_"


def is_fusion(name: str) -> bool:
    """Whether a :func:`beside_runs` folder name is a fused run."""
    return name.startswith(FUSION_PREFIX)


def fusion_sources(run: Run | list[Run]) -> tuple[str, str]:
    """The two runs a fused run was made of, as folder names without ``_seed<k>``:
    (deep run, baseline run), from its ``summary.json`` ``fusion`` record."""
    record = _as_list(run)[0].summary.get("fusion")
    if not record:
        raise SerlibError(f"{_as_list(run)[0].path}: not a fused run (no fusion record)")
    return tuple(_SEEDED.match(Path(record[key]).name)["base"]
                 for key in ("deep", "baseline"))


def beside_runs(runs_dir: str | os.PathLike, *, seeds: bool = False
                ) -> dict[str, Run] | dict[str, list[Run]]:
    """The finished runs of ``runs_dir`` shown beside the paper's method, by folder name:
    those of the strong recipe (``<feature>_<loss>_strong``, as a profile names them), the
    fused runs (``fusion_<run>_<baseline>``), then the measured baselines
    (:data:`BASELINE_LABELS`). ``seeds=True``: each name maps to its runs over seeds
    (:func:`seed_runs`: ``name`` and ``name_seed<k>``)."""
    runs_dir = Path(runs_dir)
    strong = sorted(p.parent.name for p in runs_dir.glob("*_strong/summary.json"))
    fused = sorted(p.parent.name for p in runs_dir.glob(f"{FUSION_PREFIX}*/summary.json")
                   if _SEEDED.match(p.parent.name)["seed"] is None)
    names = [name for name in [*strong, *fused, *BASELINE_LABELS]
             if (runs_dir / name / "summary.json").is_file()]
    if seeds:
        return {name: seed_runs(runs_dir, name) for name in names}
    return {name: load_run(runs_dir / name) for name in names}


def beside_label(name: str, run: Run) -> str:
    """The row label of a :func:`beside_runs` run: ``"Ours: Spectrogram + focal loss, strong
    recipe"`` (from its summary), ``"Fusion (late, measured): the strong recipe + logistic
    regression ..."`` or the baseline's :data:`BASELINE_LABELS` entry."""
    if name in BASELINE_LABELS:
        return BASELINE_LABELS[name]
    if is_fusion(name):
        deep, baseline = fusion_sources(run)
        what = "the strong recipe" if deep.endswith("_strong") else deep
        other = BASELINE_LABELS.get(baseline, baseline).split(": ", 1)[-1]
        return f"Fusion (late, measured): {what} + {other}"
    s = _as_list(run)[0].summary
    feature = _FEATURE_NAMES.get(s.get("feature"), str(s.get("feature")))
    return f"Ours: {feature} + {s.get('loss')} loss, strong recipe"


def table1(runs: dict[tuple[str, str], Run | list[Run]],
           beside: dict[str, Run | list[Run]] | None = None) -> pd.DataFrame:
    """Table 1: the paper's baselines and models beside our two focal-loss models (WA, UA %:
    mean ± std over seeds x folds), then the runs of ``beside`` (:func:`beside_runs`: strong
    recipe, measured baselines); our rows also show seeds x folds, wall time and device
    (:func:`pooled_fold_summary`). A value of ``runs`` may be one run or its runs over
    seeds."""
    blank = {"seeds x folds": "", "wall time": "", "device": ""}
    rows = [{"model": r.model, "source": "paper" if r.kind == "paper" else "paper (baseline)",
             "WA": f"{r.WA:.1f}", "UA": f"{r.UA:.1f}", **blank}
            for r in paper.TABLE1.itertuples()]
    chosen = [(f"Ours: {label} + focal loss", runs.get((feature, "focal")))
              for feature, label in _FEATURE_NAMES.items()]
    chosen += [(beside_label(name, run), run) for name, run in (beside or {}).items()]
    for label, run in chosen:
        if run:
            rows.append({"model": label, "source": "this build", **pooled_fold_summary(run)})
    return pd.DataFrame(rows).set_index("model")


def table4(runs: dict[tuple[str, str], Run | list[Run]]) -> pd.DataFrame:
    """Table 4: every feature x loss, ours (mean ± std over seeds x folds, seeds x folds, wall
    time, device) beside the paper's."""
    rows = []
    for r in paper.TABLE4.itertuples():
        run = runs.get((r.feature, r.loss))
        ours = pooled_fold_summary(run) if run else {
            "WA": "—", "UA": "—", "seeds x folds": "—", "wall time": "-", "device": "-"}
        rows.append({
            "feature": r.feature, "loss": r.loss,
            "paper WA": r.WA, "paper UA": r.UA,
            "ours WA": ours["WA"], "ours UA": ours["UA"],
            "seeds x folds": ours["seeds x folds"], "wall time": ours["wall time"],
            "device": ours["device"],
        })
    return pd.DataFrame(rows).set_index(["feature", "loss"])


def confusion_counts(runs: Run | list[Run]) -> np.ndarray:
    """Confusion counts (rows true, columns predicted) summed over folds and seeds."""
    return np.sum([np.asarray(r.summary["confusion"], dtype=float) for r in _as_list(runs)],
                  axis=0)


def confusion_table(run: Run | list[Run]) -> pd.DataFrame:
    """Row-normalised confusion in % (summed over folds and seeds): rows true, columns
    predicted."""
    counts = confusion_counts(run)
    names = [SHORT_NAMES[c] for c in PAPER_CLASSES]
    return pd.DataFrame(confusion_percent(counts).round(1), index=names, columns=names)


def plot_confusion(table: pd.DataFrame, *, title: str, ax=None):
    """One row-normalised confusion matrix (%) as a seaborn heatmap; returns the axes.

    Parameters
    ----------
    table : DataFrame or array, shape (4, 4)
        Percentages, rows true, columns predicted, in ``PAPER_CLASSES`` order.
    title : str
        Axes title.
    ax : matplotlib Axes, optional
        Where to draw; a new figure when omitted.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    values = np.asarray(table, dtype=float)
    if values.shape != (len(PAPER_CLASSES), len(PAPER_CLASSES)):
        raise SerlibError(f"confusion table of shape {values.shape}: expected "
                          f"({len(PAPER_CLASSES)}, {len(PAPER_CLASSES)})")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.2), constrained_layout=True)
    names = [SHORT_NAMES[c] for c in PAPER_CLASSES]
    sns.heatmap(pd.DataFrame(values, index=names, columns=names), annot=True, fmt=".1f",
                vmin=0, vmax=100, cmap="Blues", cbar=False, square=True, ax=ax)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    return ax


def plot_confusion_pair(ours: pd.DataFrame, theirs: pd.DataFrame, *, title: str):
    """Two heatmaps side by side: this build's confusion (%) and the paper's."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    plot_confusion(ours, title=f"{title}: this build", ax=axes[0])
    plot_confusion(theirs, title=f"{title}: paper", ax=axes[1])
    return fig


def plot_learning_curves(run: Run):
    """Training loss and validation UA per epoch, one line per fold; the folds' legend sits
    beside the panels, never over a curve."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    history = run.history.assign(fold=run.history["fold"].astype(str),
                                 val_ua_percent=100 * run.history["val_ua"])
    sns.lineplot(data=history, x="epoch", y="train_loss", hue="fold", ax=axes[0], legend=False,
                 marker="o", markersize=5)
    sns.lineplot(data=history, x="epoch", y="val_ua_percent", hue="fold", ax=axes[1],
                 marker="o", markersize=5)
    axes[0].set(title=f"{run.name}: training loss", xlabel="epoch",
                ylabel=f"{run.loss} loss (per clip)")
    axes[1].set(title=f"{run.name}: validation UA", xlabel="epoch", ylabel="UA (%)")
    axes[1].legend(title="fold", loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    last = int(history["epoch"].max())
    for ax in axes:
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    return fig


def fold_table(run: Run) -> pd.DataFrame:
    """Per-fold WA, UA, macro-F1 (%), best epoch and sizes."""
    rows = [{"fold": m["fold"], "WA %": round(100 * m["wa"], 1), "UA %": round(100 * m["ua"], 1),
             "macro-F1 %": round(100 * m["macro_f1"], 1), "best epoch": m["best_epoch"],
             "train": m["n_train"], "val": m["n_val"], "test": m["n_test"]}
            for m in run.folds]
    return pd.DataFrame(rows).set_index("fold")


def recall_change_table(softmax: Run | list[Run], focal: Run | list[Run]) -> pd.DataFrame:
    """Per-class recall (%) of MFCC + softmax and + focal loss (all folds and seeds), their
    change, and the paper's change from its Table 2 to Table 3 (IEMOCAP), with the test clips
    behind each class (per seed).

    Returns
    -------
    DataFrame, one row per class (``PAPER_CLASSES`` order): ``softmax %``, ``focal %``,
    ``change (points)``, ``paper change (points)``, ``test clips``.
    """
    ours = [confusion_counts(runs) for runs in (softmax, focal)]
    n_seeds = len(_as_list(focal))
    rows = []
    for k, name in enumerate(PAPER_CLASSES):
        recall = [100 * c[k, k] / c[k].sum() if c[k].sum() else np.nan for c in ours]
        rows.append({"class": name, "softmax %": round(recall[0], 1),
                     "focal %": round(recall[1], 1),
                     "change (points)": round(recall[1] - recall[0], 1),
                     "paper change (points)": round(float(paper.TABLE3.loc[name, name]
                                                          - paper.TABLE2.loc[name, name]), 1),
                     "test clips": int(ours[1][k].sum()) // n_seeds})
    return pd.DataFrame(rows).set_index("class")


def confusion_change(softmax: Run | list[Run], focal: Run | list[Run]) -> np.ndarray:
    """Focal minus softmax row-normalised confusion, in points, from the exact counts (not
    from rounded percentages), shape (4, 4)."""
    return confusion_percent(confusion_counts(focal)) - confusion_percent(
        confusion_counts(softmax))


def plot_confusion_change(softmax: Run, focal: Run):
    """Two heatmaps: focal minus softmax loss in row-normalised confusion (points), this
    build's and the paper's (Table 3 minus Table 2)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    names = [SHORT_NAMES[c] for c in PAPER_CLASSES]
    ours = confusion_change(softmax, focal)          # exact counts, not rounded percentages
    theirs = paper.TABLE3.to_numpy() - paper.TABLE2.to_numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for ax, values, title in ((axes[0], ours, "this build"), (axes[1], theirs, "paper")):
        sns.heatmap(pd.DataFrame(values, index=names, columns=names), annot=True, fmt="+.1f",
                    vmin=-40, vmax=40, cmap="RdBu", center=0, cbar=False, square=True, ax=ax)
        ax.set(title=f"focal minus softmax (points): {title}", xlabel="predicted",
               ylabel="true")
    axes[1].set_title("focal minus softmax (points): paper (IEMOCAP)")
    return fig
