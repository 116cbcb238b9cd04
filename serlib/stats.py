"""Is a difference between two runs real? Paired tests on runs that share their folds.

Two comparisons, both returning a :class:`Comparison` (differences are always *other minus
reference*, as fractions in -1..1):

:func:`compare_runs`, runs trained on the same folds (same selection, protocol, folds and seeds)
    The unit is a test fold: ``n = seeds x folds`` paired differences of WA and UA. The decision
    test is the **corrected resampled t-test** of Nadeau and Bengio (Machine Learning 52, 2003):
    the folds' training parts overlap, so the differences are correlated, and the plain t-test's
    variance ``s^2 / n`` is inflated to ``(1/n + n_test/n_train) s^2``, with ``n_test/n_train``
    the mean over folds of ``n_test / (n_train + n_val)`` (the fold metrics' sizes; the
    validation part is part of what was held out of the test fold). The **Wilcoxon signed-rank
    test** (:func:`scipy.stats.wilcoxon`) is reported beside it; with 5 differences its smallest
    two-sided p-value is 0.0625, which is why it is not the decision test.
:func:`compare_pooled`, runs that predicted the same utterances on different folds
    (the stratified and the session protocol of one configuration). Fold differences do not
    pair, utterances do: the decision test is the Wilcoxon signed-rank test over the
    per-speaker differences of WA and UA.

Both carry a **cluster bootstrap** interval of the difference of the pooled WA and UA (all
test predictions of a side, every seed together): whole speakers are resampled with
replacement (:func:`scipy.stats.bootstrap`, percentile method, seeded), because the
utterances of one speaker are correlated.

:func:`verdict` turns a comparison and a claimed direction into *agrees / contradicts /
inconclusive* on WA and on UA at a stated ``alpha``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES
from serlib.results import Run, load_run

VERDICTS = ("agrees", "contradicts", "inconclusive")

RunLike = Run | str | os.PathLike


@dataclass(frozen=True)
class MetricTest:
    """The tests of one metric (``"wa"`` or ``"ua"``); differences are other minus reference.

    Attributes
    ----------
    mean_difference : float
        Mean of the paired differences (fold differences for :func:`compare_runs`, speaker
        differences for :func:`compare_pooled`).
    pooled_difference : float
        Difference of the metric computed on all pooled test predictions of each side.
    ci : (float, float)
        Cluster (speaker) bootstrap interval of ``pooled_difference`` at ``level``.
    t, p_t : float
        Corrected resampled t statistic and its two-sided p-value (NaN for pooled comparisons).
    wilcoxon_p : float
        Two-sided p-value of the Wilcoxon signed-rank test of the paired differences.
    p : float
        The decision test's p-value (``p_t`` or ``wilcoxon_p``, named by ``test``).
    """

    metric: str
    mean_difference: float
    pooled_difference: float
    ci: tuple[float, float]
    t: float
    p_t: float
    wilcoxon_p: float
    p: float
    test: str


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of two runs (or two lists of runs, one per seed)."""

    reference: str
    other: str
    paired_by: str                 # "fold" or "speaker"
    differences: pd.DataFrame      # one row per paired unit: d_wa, d_ua (+ seed, fold | speaker)
    n: int
    test_train_ratio: float        # NaN for pooled comparisons
    level: float
    wa: MetricTest
    ua: MetricTest
    seeds: tuple[int, ...] = field(default=())

    def metric(self, name: str) -> MetricTest:
        if name not in ("wa", "ua"):
            raise SerlibError(f"metric={name!r} must be 'wa' or 'ua'")
        return getattr(self, name)


# ----------------------------------------------------------------------------- inputs
def run_seed(run: Run) -> int:
    """The seed a run was trained with (``config.json`` ``train.seed``, or ``baseline.seed``
    for a :mod:`serlib.baselines` run, else ``summary.seed``)."""
    config = run.config or {}
    for section in ("train", "baseline"):
        if "seed" in (config.get(section) or {}):
            return int(config[section]["seed"])
    if "seed" in run.summary:
        return int(run.summary["seed"])
    raise SerlibError(f"{run.path}: config.json has no train.seed and summary.json no seed; "
                      "cannot pair it by seed")


def _as_runs(side: RunLike | Sequence[RunLike], what: str) -> list[Run]:
    items = [side] if isinstance(side, (Run, str, os.PathLike)) else list(side)
    if not items:
        raise SerlibError(f"{what}: no run given")
    runs = [item if isinstance(item, Run) else load_run(item) for item in items]
    seeds = [run_seed(r) for r in runs]
    if len(set(seeds)) != len(seeds):
        raise SerlibError(f"{what}: two runs share a seed ({sorted(seeds)}); give one run "
                          "folder per seed")
    return [r for _, r in sorted(zip(seeds, runs, strict=True), key=lambda x: x[0])]


def _label(runs: list[Run]) -> str:
    return str(runs[0].path) + (f" (+{len(runs) - 1} seeds)" if len(runs) > 1 else "")


def fold_utterances(run: Run) -> dict[int, frozenset[str]]:
    """Each fold's test utterance ids, from the run's ``predictions.csv``."""
    p = run.predictions
    return {int(k): frozenset(g["utterance_id"].astype(str)) for k, g in p.groupby("fold")}


def _fingerprint(run: Run) -> str | None:
    return ((run.config or {}).get("selection") or {}).get("fingerprint")


def _check_same_utterances(a: Run, b: Run) -> None:
    why = f"cannot pair {a.path} with {b.path}"
    fa, fb = _fingerprint(a), _fingerprint(b)
    if fa and fb and fa != fb:
        raise SerlibError(f"{why}: they were trained on different selections "
                          f"(fingerprints {fa} and {fb})")
    ua = set(a.predictions["utterance_id"].astype(str))
    ub = set(b.predictions["utterance_id"].astype(str))
    if ua != ub:
        raise SerlibError(f"{why}: they predicted different utterances "
                          f"({len(ua - ub)} only in the first, {len(ub - ua)} only in the second)")


def check_paired(reference: list[Run], other: list[Run]) -> None:
    """Refuse (:class:`SerlibError`, saying why) unless both sides share their folds: the same
    seeds, protocol, number of folds, and each fold's test utterances (``predictions.csv``)."""
    seeds_a = [run_seed(r) for r in reference]
    seeds_b = [run_seed(r) for r in other]
    if seeds_a != seeds_b:
        raise SerlibError(f"cannot pair {_label(reference)} with {_label(other)}: seeds "
                          f"{seeds_a} and {seeds_b} differ (runs are paired by seed)")
    for a, b in zip(reference, other, strict=True):
        why = f"cannot pair {a.path} with {b.path}"
        for key in ("protocol", "n_folds"):
            if a.summary[key] != b.summary[key]:
                raise SerlibError(f"{why}: {key} differs ({a.summary[key]!r} and "
                                  f"{b.summary[key]!r}), so their folds are not the same")
        _check_same_utterances(a, b)
        folds_a, folds_b = fold_utterances(a), fold_utterances(b)
        for k in sorted(set(folds_a) | set(folds_b)):
            ta, tb = folds_a.get(k, frozenset()), folds_b.get(k, frozenset())
            if ta != tb:
                raise SerlibError(f"{why}: fold {k}'s test utterances differ "
                                  f"({len(ta - tb)} only in the first, {len(tb - ta)} only "
                                  "in the second)")


# ----------------------------------------------------------------------------- tests
def corrected_ttest(differences: Sequence[float], *, test_train_ratio: float
                    ) -> tuple[float, float]:
    """Nadeau and Bengio's corrected resampled t-test of paired differences.

    ``t = mean(d) / sqrt((1/n + test_train_ratio) * var(d, ddof=1))`` with ``n - 1`` degrees of
    freedom (:data:`scipy.stats.t`); returns ``(t, two-sided p)``. All-equal differences give
    ``t = 0, p = 1`` when they are zero and ``t = +-inf, p = 0`` otherwise (equal up to 1e-12,
    since fold metrics are rounded fractions).
    """
    d = np.asarray(differences, dtype=float)
    if d.ndim != 1 or len(d) < 2:
        raise SerlibError(f"corrected t-test needs >= 2 paired differences, got {d.size}")
    if not test_train_ratio >= 0:
        raise SerlibError(f"test_train_ratio={test_train_ratio!r} must be >= 0")
    mean, var = d.mean(), d.var(ddof=1)
    if np.ptp(d) <= 1e-12:                  # equal up to rounding (e.g. 0.65 - 0.6 per fold)
        return (0.0, 1.0) if mean == 0 else (float(np.sign(mean) * np.inf), 0.0)
    t = mean / np.sqrt((1 / len(d) + test_train_ratio) * var)
    return float(t), float(2 * sps.t.sf(abs(t), df=len(d) - 1))


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`);
    1.0 when every difference is zero."""
    d = np.asarray(differences, dtype=float)
    if not np.any(d != 0):
        return 1.0
    return float(sps.wilcoxon(d).pvalue)


def _unit_counts(frames: list[pd.DataFrame], unit: str) -> tuple[np.ndarray, list]:
    """Per unit (speaker): class counts and correct counts of both sides, summed over seeds.

    Returns an array of shape (n_units, 3, C): [n per true class, correct of reference,
    correct of other].
    """
    joined = pd.concat(frames, ignore_index=True)
    units = sorted(joined[unit].astype(str).unique())
    index = {u: i for i, u in enumerate(units)}
    counts = np.zeros((len(units), 3, len(PAPER_CLASSES)))
    u = joined[unit].astype(str).map(index).to_numpy()
    c = joined["label"].map(PAPER_CLASSES.index).to_numpy()
    np.add.at(counts, (u, 0, c), 1)
    np.add.at(counts, (u, 1, c), joined["correct_ref"].to_numpy(dtype=float))
    np.add.at(counts, (u, 2, c), joined["correct_other"].to_numpy(dtype=float))
    return counts, units


def _pooled_differences(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WA and UA differences (other - reference) of pooled counts, shape (..., 3, C)."""
    n, ref, oth = counts[..., 0, :], counts[..., 1, :], counts[..., 2, :]
    total = n.sum(axis=-1)
    d_wa = (oth.sum(axis=-1) - ref.sum(axis=-1)) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        recall_diff = np.where(n > 0, (oth - ref) / n, np.nan)
    d_ua = np.nanmean(recall_diff, axis=-1)   # over the classes present, like UA
    return d_wa, d_ua


def _paired_predictions(reference: list[Run], other: list[Run]) -> list[pd.DataFrame]:
    frames = []
    for a, b in zip(reference, other, strict=True):
        _check_same_utterances(a, b)
        pa = a.predictions[["utterance_id", "speaker", "label", "predicted"]].astype(
            {"utterance_id": str})
        pb = b.predictions[["utterance_id", "label", "predicted"]].astype({"utterance_id": str})
        m = pa.merge(pb, on="utterance_id", suffixes=("", "_other"), validate="one_to_one")
        if not (m["label"] == m["label_other"]).all():
            raise SerlibError(f"cannot pair {a.path} with {b.path}: the same utterance has "
                              "different labels")
        frames.append(pd.DataFrame({
            "speaker": m["speaker"], "label": m["label"],
            "correct_ref": m["predicted"] == m["label"],
            "correct_other": m["predicted_other"] == m["label"]}))
    return frames


def speaker_bootstrap(frames: list[pd.DataFrame], *, n_resamples: int, seed: int, level: float
                      ) -> dict:
    """Cluster bootstrap of the pooled WA and UA differences, resampling whole speakers.

    ``frames`` hold one row per (seed, utterance): ``speaker``, ``label``, ``correct_ref``,
    ``correct_other``. Returns ``{"wa": (pooled, (lo, hi), distribution), "ua": ...}``.
    """
    counts, speakers = _unit_counts(frames, "speaker")
    if len(speakers) < 2:
        raise SerlibError(f"a speaker bootstrap needs >= 2 speakers, got {len(speakers)}")
    full_wa, full_ua = _pooled_differences(counts.sum(axis=0))
    out = {}
    for k, name in enumerate(("wa", "ua")):
        def statistic(idx, axis=-1, k=k):
            idx = np.asarray(idx, dtype=int)
            return _pooled_differences(counts[idx].sum(axis=-3))[k]

        result = sps.bootstrap((np.arange(len(speakers)),), statistic, vectorized=True,
                               n_resamples=n_resamples, confidence_level=level,
                               method="percentile", rng=np.random.default_rng(seed))
        ci = result.confidence_interval
        out[name] = (float((full_wa, full_ua)[k]), (float(ci.low), float(ci.high)),
                     result.bootstrap_distribution)
    return out


def pooled_interval(runs: RunLike | Sequence[RunLike], *, n_resamples: int = 2000,
                    level: float = 0.95, seed: int = 0) -> dict:
    """Pooled WA and UA of one run (all seeds' test predictions) with a speaker bootstrap
    interval: ``{"wa": (value, (lo, hi)), "ua": ...}``, fractions."""
    runs = _as_runs(runs, "runs")
    frames = [pd.DataFrame({"speaker": r.predictions["speaker"], "label": r.predictions["label"],
                            "correct_ref": False,
                            "correct_other": r.predictions["predicted"] == r.predictions["label"]})
              for r in runs]                     # difference from an always-wrong reference
    boot = speaker_bootstrap(frames, n_resamples=n_resamples, seed=seed, level=level)
    return {m: (boot[m][0], boot[m][1]) for m in ("wa", "ua")}


# ----------------------------------------------------------------------------- comparisons
def compare_runs(reference: RunLike | Sequence[RunLike], other: RunLike | Sequence[RunLike],
                 *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
                 ) -> Comparison:
    """Paired comparison of two runs trained on the same folds (other minus reference).

    Parameters
    ----------
    reference, other : Run, run folder, or a list of them (one per seed)
        Paired by seed; each pair must share protocol, number of folds and each fold's test
        utterances (refused with :class:`SerlibError` otherwise).
    n_resamples : int
        Bootstrap resamples of speakers.
    level : float
        Confidence level of the bootstrap interval.
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    Comparison
        ``differences`` has one row per (seed, fold): ``seed, fold, d_wa, d_ua``;
        ``n = seeds x folds``; the decision test is the corrected resampled t-test.
    """
    ref, oth = _as_runs(reference, "reference"), _as_runs(other, "other")
    check_paired(ref, oth)
    rows, ratios = [], []
    for a, b in zip(ref, oth, strict=True):
        fb = {int(m["fold"]): m for m in b.folds}
        for m in a.folds:
            k = int(m["fold"])
            rows.append({"seed": run_seed(a), "fold": k, "d_wa": fb[k]["wa"] - m["wa"],
                         "d_ua": fb[k]["ua"] - m["ua"]})
            ratios.append(m["n_test"] / (m["n_train"] + m.get("n_val", 0)))
    diffs = pd.DataFrame(rows)
    ratio = float(np.mean(ratios))
    boot = speaker_bootstrap(_paired_predictions(ref, oth), n_resamples=n_resamples, seed=seed,
                             level=level)
    tests = {}
    for name in ("wa", "ua"):
        d = diffs[f"d_{name}"].to_numpy()
        t, p_t = corrected_ttest(d, test_train_ratio=ratio)
        pooled, ci, _ = boot[name]
        tests[name] = MetricTest(metric=name, mean_difference=float(d.mean()),
                                 pooled_difference=pooled, ci=ci, t=t, p_t=p_t,
                                 wilcoxon_p=wilcoxon_p(d), p=p_t,
                                 test="corrected resampled t-test")
    return Comparison(reference=_label(ref), other=_label(oth), paired_by="fold",
                      differences=diffs, n=len(diffs), test_train_ratio=ratio, level=level,
                      seeds=tuple(run_seed(r) for r in ref), **tests)


def compare_pooled(reference: RunLike | Sequence[RunLike], other: RunLike | Sequence[RunLike],
                   *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
                   ) -> Comparison:
    """Comparison of two runs that predicted the same utterances on *different* folds.

    For one configuration under two protocols (stratified vs session): each utterance is in
    exactly one test fold on each side, so the pooled predictions pair by utterance. The
    decision test is the Wilcoxon signed-rank test over per-speaker differences (each
    speaker's WA and UA, all seeds pooled); the interval is the speaker bootstrap. Lists of
    runs are paired by position after sorting by seed (seeds need not match: under the
    stratified protocol they reshuffle the folds).

    Returns
    -------
    Comparison
        ``differences`` has one row per speaker: ``speaker, d_wa, d_ua``.
    """
    ref, oth = _as_runs(reference, "reference"), _as_runs(other, "other")
    if len(ref) != len(oth):
        raise SerlibError(f"cannot pair {_label(ref)} with {_label(oth)}: {len(ref)} and "
                          f"{len(oth)} seeds")
    frames = _paired_predictions(ref, oth)
    counts, speakers = _unit_counts(frames, "speaker")
    d_wa, d_ua = _pooled_differences(counts)            # per speaker
    diffs = pd.DataFrame({"speaker": speakers, "d_wa": d_wa, "d_ua": d_ua})
    boot = speaker_bootstrap(frames, n_resamples=n_resamples, seed=seed, level=level)
    tests = {}
    for name in ("wa", "ua"):
        d = diffs[f"d_{name}"].to_numpy()
        pooled, ci, _ = boot[name]
        w = wilcoxon_p(d)
        tests[name] = MetricTest(metric=name, mean_difference=float(d.mean()),
                                 pooled_difference=pooled, ci=ci, t=float("nan"),
                                 p_t=float("nan"), wilcoxon_p=w, p=w,
                                 test="Wilcoxon signed-rank test over speakers")
    return Comparison(reference=_label(ref), other=_label(oth), paired_by="speaker",
                      differences=diffs, n=len(diffs), test_train_ratio=float("nan"),
                      level=level, seeds=tuple(run_seed(r) for r in ref), **tests)


# ----------------------------------------------------------------------------- verdicts
def metric_verdict(test: MetricTest, *, direction: int, alpha: float) -> str:
    """``agrees`` when the decision test rejects at ``alpha`` and the mean difference has the
    claimed sign (``direction`` +1: other > reference, -1: other < reference), ``contradicts``
    when it rejects with the opposite sign, else ``inconclusive``."""
    if direction not in (1, -1):
        raise SerlibError(f"direction={direction!r} must be +1 (other higher) or -1 (lower)")
    if not 0 < alpha < 1:
        raise SerlibError(f"alpha={alpha!r} must be between 0 and 1")
    if not test.p < alpha or test.mean_difference == 0:
        return "inconclusive"
    return "agrees" if np.sign(test.mean_difference) == direction else "contradicts"


def verdict(comparison: Comparison, *, direction: int = 1, alpha: float = 0.05) -> dict:
    """Three-way verdict on a claimed direction, on WA and on UA, and overall.

    Returns ``{"wa": v, "ua": v, "overall": v}`` with each ``v`` in :data:`VERDICTS`.
    ``overall`` is ``agrees`` when both metrics agree (the paper claims gains in both),
    ``contradicts`` when either contradicts, else ``inconclusive``.
    """
    out = {m: metric_verdict(comparison.metric(m), direction=direction, alpha=alpha)
           for m in ("wa", "ua")}
    if out["wa"] == out["ua"] == "agrees":
        out["overall"] = "agrees"
    elif "contradicts" in out.values():
        out["overall"] = "contradicts"
    else:
        out["overall"] = "inconclusive"
    return out


__all__ = [
    "VERDICTS",
    "Comparison",
    "MetricTest",
    "check_paired",
    "compare_pooled",
    "compare_runs",
    "corrected_ttest",
    "fold_utterances",
    "metric_verdict",
    "pooled_interval",
    "run_seed",
    "speaker_bootstrap",
    "verdict",
    "wilcoxon_p",
]
