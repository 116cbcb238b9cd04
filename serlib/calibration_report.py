"""Tables, figures and verdicts of the calibration and controlled-imbalance chapters.

The computation is :mod:`serlib.calibration` (ECE, Brier, NLL, temperature scaling) and
:mod:`serlib.imbalance` (subsampled training parts); this module pairs runs on their folds
and seeds (:func:`serlib.stats.check_paired`) and tests per-(seed, fold) differences with the
corrected resampled t-test (:func:`serlib.stats.corrected_ttest`, Nadeau and Bengio 2003), as
the book's other verdicts do. A directional claim is tested one-sided at ``alpha``; the
interval printed beside a verdict is the two-sided ``1 - 2 alpha`` interval of the same
corrected t, so it lies wholly on the claimed side of zero exactly when the verdict is
"agrees", and wholly on the other side exactly when it is "contradicts".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from serlib.calibration import (
    PROB_COLUMNS,
    apply_temperature,
    calibrate_run,
    fit_temperature,
    has_validation,
    read_validation,
    reliability_diagram,
)
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES
from serlib.results import Run

#: The calibration measures tabled, with their labels.
MEASURES = {"ece": "ECE", "classwise_ece": "class-wise ECE", "brier": "Brier", "nll": "NLL"}
MINORITY = ("happiness", "anger")


# ----------------------------------------------------------------------------- paired tests
@dataclass(frozen=True)
class PairedTest:
    """A one-sided paired test of per-(seed, fold) differences (other minus reference)."""

    measure: str
    n: int
    mean_difference: float
    interval: tuple[float, float]   # two-sided 1 - 2 alpha, from the corrected t
    t: float
    p_one_sided: float              # in the claimed direction
    detectable: float               # smallest |difference| with 80 % power at alpha
    verdict: str                    # agrees / contradicts / inconclusive


def paired_test(differences, *, test_train_ratio: float, direction: int, alpha: float = 0.05,
                measure: str = "") -> PairedTest:
    """One-sided corrected resampled t-test of ``differences`` in ``direction`` (+1: other
    higher, -1: other lower), by :mod:`serlib.stats`' one inference: its paired t, one-sided
    p-values, ``1 - 2 alpha`` t-interval and minimum detectable effect at 80 % power, so a
    calibration verdict reads as every other verdict of the book."""
    from serlib.stats import minimum_detectable_effect, paired_t, t_interval, t_p_value

    if direction not in (1, -1):
        raise SerlibError(f"direction={direction!r} must be +1 or -1")
    d = np.asarray(differences, dtype=float)
    mean, se, df = paired_t(d, test_train_ratio=test_train_ratio)
    claim, opposite = ("greater", "less") if direction == 1 else ("less", "greater")
    p_claim = t_p_value(mean, se, df, alternative=claim)
    p_other = t_p_value(mean, se, df, alternative=opposite)
    verdict = "agrees" if p_claim < alpha else "contradicts" if p_other < alpha \
        else "inconclusive"
    detectable = minimum_detectable_effect(sd=float(d.std(ddof=1)), n=len(d),
                                           test_train_ratio=test_train_ratio, alpha=alpha)
    t = mean / se if se else float(np.sign(mean) * np.inf)
    return PairedTest(measure=measure, n=len(d), mean_difference=mean,
                      interval=t_interval(mean, se, df, level=1 - 2 * alpha), t=float(t),
                      p_one_sided=p_claim, detectable=detectable, verdict=verdict)


def _test_train_ratio(runs: list[Run]) -> float:
    ratios = [m["n_test"] / (m["n_train"] + m.get("n_val", 0)) for r in runs for m in r.folds]
    return float(np.mean(ratios))


def fold_values(runs: list[Run], value) -> pd.DataFrame:
    """``value(run, fold, frame)`` for every (seed, fold) of ``runs``: columns seed, fold,
    value (``frame``: the fold's test predictions)."""
    from serlib.stats import run_seed

    rows = []
    for run in runs:
        for k, frame in run.predictions.groupby("fold"):
            rows.append({"seed": run_seed(run), "fold": int(k),
                         "value": float(value(run, int(k), frame))})
    return pd.DataFrame(rows)


def paired_differences(reference: list[Run], other: list[Run], value) -> np.ndarray:
    """Per-(seed, fold) ``value(other) - value(reference)``; refuses unpaired runs."""
    from serlib.stats import check_paired

    check_paired(reference, other)
    a = fold_values(reference, value).set_index(["seed", "fold"])["value"]
    b = fold_values(other, value).set_index(["seed", "fold"])["value"]
    return (b - a.loc[b.index]).to_numpy()


# ----------------------------------------------------------------------------- calibration
def _calibration_value(measure: str, scaled: bool):
    def value(run: Run, fold: int, frame: pd.DataFrame) -> float:
        from serlib.calibration import calibration_metrics

        p = frame[list(PROB_COLUMNS)].to_numpy()
        y = frame["label"].map(PAPER_CLASSES.index).to_numpy()
        if scaled:
            val = read_validation(run.path, fold)
            t = fit_temperature(val[list(PROB_COLUMNS)].to_numpy(),
                                val["label"].map(PAPER_CLASSES.index).to_numpy())
            p = apply_temperature(p, t)
        return calibration_metrics(p, y)[measure]
    return value


def calibration_summary(runs: dict[str, list[Run]], *, n_bins: int = 15) -> pd.DataFrame:
    """One row per label: each measure's mean over seeds x folds before and after temperature
    scaling (``—`` where the run kept no validation predictions), and the mean temperature."""
    rows = []
    for label, seeds in runs.items():
        per_fold = [fc for run in seeds for fc in calibrate_run(run, n_bins=n_bins)]
        row = {"run": label, "folds x seeds": len(per_fold),
               "accuracy %": 100 * np.mean([fc.before["accuracy"] for fc in per_fold])}
        scaled = all(fc.after is not None for fc in per_fold)
        for key, name in MEASURES.items():
            row[name] = np.mean([fc.before[key] for fc in per_fold])
            row[f"{name} (TS)"] = np.mean([fc.after[key] for fc in per_fold]) if scaled \
                else np.nan
        row["T"] = np.mean([fc.temperature for fc in per_fold]) if scaled else np.nan
        # T is one number fitted on each fold's validation part: few clips, a noisy T
        row["validation clips"] = np.mean([fc.n_validation for fc in per_fold]) if scaled \
            else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def calibration_verdict(reference: list[Run], other: list[Run], *, measure: str = "ece",
                        scaled: bool = False, alpha: float = 0.05) -> PairedTest:
    """Is ``other`` better calibrated (lower ``measure``) than ``reference``? Paired over
    seeds x folds; one-sided (direction -1)."""
    if scaled and not all(has_validation(r.path) for r in reference + other):
        raise SerlibError("a run kept no validation predictions: it cannot be scaled")
    d = paired_differences(reference, other, _calibration_value(measure, scaled))
    return paired_test(d, test_train_ratio=_test_train_ratio(reference), direction=-1,
                       alpha=alpha, measure=measure)


def verdict_line(claim: str, test: PairedTest, *, scale: float = 1.0, unit: str = "",
                 alpha: float = 0.05) -> str:
    """One sentence: the claim, the verdict, the mean difference with its interval, the
    one-sided p and the smallest detectable difference."""
    lo, hi = test.interval
    return (f"**{claim}: {test.verdict}.** Mean paired difference "
            f"{scale * test.mean_difference:+.3g}{unit} "
            f"({100 * (1 - 2 * alpha):.0f} % interval {scale * lo:+.3g} to {scale * hi:+.3g}"
            f"{unit}; one-sided corrected t-test p = {test.p_one_sided:.3g}, "
            f"n = {test.n} seed x fold pairs; smallest difference detectable with 80 % power: "
            f"{scale * test.detectable:.3g}{unit})")


def plot_reliability(runs: dict[str, list[Run]], *, n_bins: int = 15, title: str = ""):
    """Reliability diagrams side by side, one panel per label, pooled over seeds and folds:
    before temperature scaling (filled) and after it (open, where the run can be scaled).
    Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 4.0), squeeze=False,
                             sharey=True)
    for ax, (label, seeds) in zip(axes[0], runs.items(), strict=True):
        frames = [r.predictions for r in seeds]
        p = np.concatenate([f[list(PROB_COLUMNS)].to_numpy() for f in frames])
        y = np.concatenate([f["label"].map(PAPER_CLASSES.index).to_numpy() for f in frames])
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
        before = reliability_diagram(p, y, n_bins=n_bins)
        ax.plot(before["confidence"], before["accuracy"], "o-", label="as trained")
        if all(has_validation(r.path) for r in seeds):
            scaled = [calibrate_scaled(r) for r in seeds]
            ps = np.concatenate([s[0] for s in scaled])
            ys = np.concatenate([s[1] for s in scaled])
            after = reliability_diagram(ps, ys, n_bins=n_bins)
            ax.plot(after["confidence"], after["accuracy"], "s--", mfc="none",
                    label="temperature-scaled")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", title=label)
        ax.set_aspect("equal")
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def calibrate_scaled(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """A run's test probabilities, each fold divided by its fitted temperature, and labels."""
    ps, ys = [], []
    for k, frame in run.predictions.groupby("fold"):
        val = read_validation(run.path, int(k))
        t = fit_temperature(val[list(PROB_COLUMNS)].to_numpy(),
                            val["label"].map(PAPER_CLASSES.index).to_numpy())
        ps.append(apply_temperature(frame[list(PROB_COLUMNS)].to_numpy(), t))
        ys.append(frame["label"].map(PAPER_CLASSES.index).to_numpy())
    return np.concatenate(ps), np.concatenate(ys)


# ----------------------------------------------------------------------------- imbalance
def _recall(frame: pd.DataFrame, classes) -> float:
    recalls = [(frame.loc[frame["label"] == c, "predicted"] == c).mean()
               for c in classes if (frame["label"] == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def ua_value(run: Run, fold: int, frame: pd.DataFrame) -> float:
    """UA (mean per-class recall) of one fold's test predictions."""
    return _recall(frame, PAPER_CLASSES)


def minority_value(run: Run, fold: int, frame: pd.DataFrame) -> float:
    """Mean recall of the classes the imbalance profiles make rare (happiness, anger)."""
    return _recall(frame, MINORITY)


def remedy_of(row) -> str:
    """A study row's remedy, without its imbalance profile (``"softmax"``, ``"focal,
    gamma 2"``, ``"softmax + logit adjustment (tau 1)"``...)."""
    label = row.label
    profile = row.config.get("imbalance", "none")
    return label.replace(f", {profile} shares", "").replace(f"{profile} shares, ", "")


def imbalance_curve(rows, runs: dict[str, list[Run]]) -> pd.DataFrame:
    """UA and minority recall per (remedy, imbalance profile): mean over seeds x folds with a
    descriptive 95 % t interval over them (cut to [0, 1]). Columns: remedy, profile, ratio,
    measure, mean, low, high, n."""
    from scipy import stats as sps

    from serlib.imbalance import imbalance_ratio

    out = []
    for row in rows:
        if row.label not in runs:
            continue
        profile = row.config.get("imbalance", "none")
        for measure, value in (("UA", ua_value), ("minority recall", minority_value)):
            v = fold_values(runs[row.label], value)["value"].to_numpy()
            half = sps.t.ppf(0.975, df=len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)) \
                if len(v) > 1 else 0.0
            out.append({"remedy": remedy_of(row), "profile": profile,
                        "ratio": imbalance_ratio(profile), "measure": measure,
                        "mean": v.mean(), "low": max(0.0, v.mean() - half),  # recalls
                        "high": min(1.0, v.mean() + half),
                        "n": len(v)})
    return pd.DataFrame(out)


def plot_imbalance_curve(curve: pd.DataFrame, *, title: str = ""):
    """UA and minority recall (%) against the majority / minority ratio (log axis), one line
    per remedy with its descriptive 95 % interval. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    for ax, measure in zip(axes, ("UA", "minority recall"), strict=True):
        part = curve[curve["measure"] == measure]
        for i, (remedy, line) in enumerate(part.groupby("remedy", sort=False)):
            line = line.sort_values("ratio")
            x = line["ratio"] * (1 + 0.02 * (i - 2))      # small offsets: intervals apart
            ax.errorbar(x, 100 * line["mean"],
                        yerr=[100 * (line["mean"] - line["low"]),
                              100 * (line["high"] - line["mean"])],
                        marker="o", capsize=3, label=remedy)
        ax.set_xscale("log")
        ratios = sorted(part["ratio"].unique())
        ax.set_xticks(ratios, [f"{r:.3g}" for r in ratios])
        ax.minorticks_off()
        ax.set(xlabel="majority / minority class share (training part)",
               ylabel=f"{measure} %", title=measure)
    # one legend below the panels, never over a line
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def advantage_by_ratio(rows, runs: dict[str, list[Run]], *, other: str, reference: str,
                       measure: str = "UA", alpha: float = 0.05) -> pd.DataFrame:
    """``other`` minus ``reference`` (remedy names, :func:`remedy_of`) at every imbalance
    profile, paired over seeds x folds, one-sided (other higher)."""
    value = ua_value if measure == "UA" else minority_value
    by = {(remedy_of(r), r.config.get("imbalance")): r.label for r in rows if r.label in runs}
    from serlib.imbalance import imbalance_ratio

    out = []
    for profile in dict.fromkeys(r.config.get("imbalance") for r in rows):
        if (other, profile) not in by or (reference, profile) not in by:
            continue
        d = paired_differences(runs[by[(reference, profile)]], runs[by[(other, profile)]],
                               value)
        test = paired_test(d, test_train_ratio=_test_train_ratio(runs[by[(reference,
                                                                          profile)]]),
                           direction=1, alpha=alpha, measure=measure)
        out.append({"profile": profile, "ratio": imbalance_ratio(profile),
                    f"Δ {measure} (points)": 100 * test.mean_difference,
                    "interval": f"{100 * test.interval[0]:+.1f} to {100 * test.interval[1]:+.1f}",
                    "p (one-sided)": test.p_one_sided, "verdict": test.verdict,
                    "detectable (points)": 100 * test.detectable})
    return pd.DataFrame(out).sort_values("ratio").reset_index(drop=True)


def advantage_growth(rows, runs: dict[str, list[Run]], *, other: str, reference: str,
                     measure: str = "UA", alpha: float = 0.05) -> PairedTest | None:
    """Does ``other``'s advantage over ``reference`` grow from the mildest to the harshest
    imbalance profile? The per-(seed, fold) difference of differences
    ``(other - reference)_harshest - (other - reference)_mildest`` (same test folds, so
    paired), one-sided (it grows). None with fewer than two profiles."""
    value = ua_value if measure == "UA" else minority_value
    by = {(remedy_of(r), r.config.get("imbalance")): r.label for r in rows if r.label in runs}
    from serlib.imbalance import imbalance_ratio

    profiles = sorted({p for (_, p) in by if (other, p) in by and (reference, p) in by},
                      key=imbalance_ratio)
    if len(profiles) < 2:
        return None
    mild, harsh = profiles[0], profiles[-1]

    def gap(profile):
        return paired_differences(runs[by[(reference, profile)]], runs[by[(other, profile)]],
                                  value)

    d = gap(harsh) - gap(mild)
    return paired_test(d, test_train_ratio=_test_train_ratio(runs[by[(reference, mild)]]),
                       direction=1, alpha=alpha, measure=f"{measure}: {harsh} vs {mild}")


def skipped_profiles(study: dict, selection, *, training: dict, seed: int = 0) -> list[str]:
    """The study's imbalance profiles the selection has too few clips for, each with why."""
    from serlib.imbalance import feasibility

    shared = study.get("shared") or {}
    profiles = shared.get("imbalance", [])
    profiles = [profiles] if isinstance(profiles, str) else list(profiles)
    fraction = float(shared.get("imbalance_fraction", training.get("imbalance_fraction", 0.5)))
    protocol = shared.get("protocol", training.get("protocol", "stratified"))
    folds = int(training.get("folds", 5))
    out = []
    for profile in profiles:
        why = feasibility(selection, name=profile, fraction=fraction, protocol=protocol,
                          n_folds=folds, seed=seed)
        if why is not None:
            out.append(f"{profile}: {why}")
    return out


__all__ = ["MEASURES", "PairedTest", "advantage_by_ratio", "advantage_growth",
           "calibrate_scaled", "calibration_summary", "calibration_verdict", "fold_values",
           "imbalance_curve", "load_available", "minority_value", "paired_differences",
           "paired_test", "plot_imbalance_curve", "plot_reliability", "remedy_of",
           "skipped_profiles", "ua_value", "verdict_line"]


def load_available(runs_dir, rows) -> tuple[dict[str, list[Run]], list[str]]:
    """The runs of every study row whose run folders are all finished (posthoc rows computed,
    :func:`serlib.posthoc.logit_adjust`), and the labels of the rows left out (not trained,
    e.g. an imbalance profile the corpus had too few clips for)."""
    from pathlib import Path

    from serlib.posthoc import logit_adjust
    from serlib.results import load_run

    runs, missing = {}, []
    for row in rows:
        folders = [Path(runs_dir) / name for name in row.runs]
        if not all((f / "summary.json").is_file() for f in folders):
            missing.append(row.label)
            continue
        loaded = [load_run(f) for f in folders]
        if row.kind == "posthoc":
            loaded = [logit_adjust(r, tau=float(row.posthoc["tau"])) for r in loaded]
        runs[row.label] = loaded
    return runs, missing
