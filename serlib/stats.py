"""Is a difference between two runs real? One inference for every comparison of the book.

Two comparisons, both returning a :class:`Comparison` (differences are always *other minus
reference*, as fractions in -1..1):

:func:`compare_runs`, runs trained on the same folds (same selection, protocol, folds and seeds)
    The unit is a test fold: ``n = seeds x folds`` paired differences of WA and UA. The
    **effect** is their mean, and the decision test is the **corrected resampled t-test** of
    Nadeau and Bengio (Machine Learning 52, 2003): the folds' training parts overlap, so the
    differences are correlated, and the plain t-test's variance ``s^2 / n`` is inflated to
    ``(1/n + n_test/n_train) s^2``, with ``n_test/n_train`` the mean over folds of
    ``n_test / (n_train + n_val)``. Seeds are a source of variance like folds: every (seed,
    fold) difference counts, which shrinks the ``1/n`` term (not the correction).
:func:`compare_pooled`, runs that predicted the same utterances on different folds
    (the stratified and the session protocol of one configuration). Fold differences do not
    pair, speakers do: the effect is the mean of the per-speaker differences (all seeds
    pooled), the decision test the paired t-test over speakers.

**One effect, one test, one interval.** Each metric's :class:`MetricTest` holds the mean
difference, its standard error and degrees of freedom; the p-value and the t-interval come from
the same ``t`` distribution, so the interval excludes 0 exactly when the test rejects.
:func:`infer` states a claim: a directional claim (``direction`` +1 or -1) is tested
**one-sided** at ``alpha`` and shown with the two-sided ``1 - 2 alpha`` interval (90 % at
alpha 0.05), whose lower (upper) end is above (below) 0 exactly when the one-sided test
agrees (contradicts); it also gives the **minimum detectable effect** at 80 % power
(:func:`minimum_detectable_effect`). :func:`holm` adjusts the p-values of a family of claims.

Secondary, labelled as such where shown: the difference of the pooled WA and UA (all test
predictions of a side together) with a **speaker bootstrap** interval (whole speakers
resampled, :func:`scipy.stats.bootstrap`, a descriptive interval that decides nothing), and the
Wilcoxon signed-rank p-value of the same paired differences.

:func:`verdict` turns a comparison and a claimed direction into *agrees / contradicts /
inconclusive* on WA and on UA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.optimize import brentq

from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES
from serlib.results import Run, load_run

VERDICTS = ("agrees", "contradicts", "inconclusive")
ALTERNATIVES = ("two-sided", "greater", "less")
POWER = 0.8

RunLike = Run | str | os.PathLike


@dataclass(frozen=True)
class MetricTest:
    """The test of one metric (``"wa"`` or ``"ua"``); differences are other minus reference.

    Attributes
    ----------
    mean_difference : float
        The effect tested: mean of the paired differences (fold differences over seeds x folds
        for :func:`compare_runs`, speaker differences for :func:`compare_pooled`).
    se : float
        Its standard error under the decision test (``sqrt((1/n + ratio) var)``; ratio 0 for
        speakers).
    df : int
        Degrees of freedom of the t distribution (``n - 1``).
    sd : float
        Standard deviation of the paired differences (``ddof=1``).
    t, p_t : float
        t statistic and its two-sided p-value.
    ci : (float, float)
        Two-sided t-interval of ``mean_difference`` at the comparison's ``level``; it excludes
        0 exactly when ``p_t < 1 - level``.
    pooled_difference : float
        Secondary: difference of the metric computed on all pooled test predictions.
    bootstrap_ci : (float, float)
        Secondary, descriptive: speaker-bootstrap interval of ``pooled_difference``.
    wilcoxon_p : float
        Secondary: two-sided Wilcoxon signed-rank p-value of the paired differences.
    p : float
        The decision test's two-sided p-value (``p_t``).
    """

    metric: str
    mean_difference: float
    se: float
    df: int
    sd: float
    t: float
    p_t: float
    ci: tuple[float, float]
    pooled_difference: float
    bootstrap_ci: tuple[float, float]
    wilcoxon_p: float
    p: float
    test: str
    test_train_ratio: float = 0.0

    @property
    def n(self) -> int:
        return self.df + 1

    def p_value(self, alternative: str = "two-sided") -> float:
        """p-value of the decision test: ``"two-sided"``, ``"greater"`` (other higher) or
        ``"less"``."""
        return t_p_value(self.mean_difference, self.se, self.df, alternative=alternative)

    def interval(self, level: float) -> tuple[float, float]:
        """Two-sided t-interval of the effect at ``level`` (same t distribution as the test)."""
        return t_interval(self.mean_difference, self.se, self.df, level=level)


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise SerlibError(f"alternative={alternative!r} must be one of "
                          f"{', '.join(ALTERNATIVES)}")


def t_p_value(mean: float, se: float, df: int, *, alternative: str = "two-sided") -> float:
    """p-value of ``t = mean / se`` on ``df`` degrees of freedom; ``se = 0`` (all differences
    equal) gives 0 in the direction of a non-zero mean, 1 otherwise."""
    _check_alternative(alternative)
    if se == 0:
        sign = np.sign(mean)
        if alternative == "two-sided":
            return 0.0 if sign else 1.0
        return 0.0 if sign == (1 if alternative == "greater" else -1) else 1.0
    t = mean / se
    if alternative == "greater":
        return float(sps.t.sf(t, df))
    if alternative == "less":
        return float(sps.t.cdf(t, df))
    return float(min(1.0, 2 * sps.t.sf(abs(t), df)))


def t_interval(mean: float, se: float, df: int, *, level: float) -> tuple[float, float]:
    """``mean -+ t_{(1+level)/2, df} se``: the interval that goes with :func:`t_p_value`."""
    if not 0 < level < 1:
        raise SerlibError(f"level={level!r} must be between 0 and 1")
    half = float(sps.t.ppf((1 + level) / 2, df)) * se
    return (float(mean - half), float(mean + half))


def minimum_detectable_effect(*, sd: float, n: int, test_train_ratio: float = 0.0,
                              alpha: float = 0.05, power: float = 0.8,
                              alternative: str = "greater") -> float:
    """Smallest true mean difference the (corrected) t-test detects with probability ``power``.

    The standard error is ``sd * sqrt(1/n + test_train_ratio)``; the effect solves
    ``P(T > t_crit) = power`` for a noncentral t with ``n - 1`` degrees of freedom and
    noncentrality ``effect / se`` (:data:`scipy.stats.nct`); ``t_crit`` is the one-sided
    ``1 - alpha`` quantile (``1 - alpha/2`` for ``"two-sided"``, whose far tail is ignored).
    More differences (folds x seeds) shrink it, down to the floor that the correction sets.

    Returns
    -------
    float
        The effect, in the units of ``sd`` (a positive number; 0 when ``sd`` is 0).
    """
    _check_alternative(alternative)
    if n < 2:
        raise SerlibError(f"n={n!r}: a minimum detectable effect needs >= 2 differences")
    if not 0 < power < 1 or not 0 < alpha < 1:
        raise SerlibError(f"power={power!r} and alpha={alpha!r} must be between 0 and 1")
    if not sd > 0:
        return 0.0
    se = sd * np.sqrt(1 / n + test_train_ratio)
    df = n - 1
    crit = sps.t.ppf(1 - (alpha / 2 if alternative == "two-sided" else alpha), df)

    def gap(ncp: float) -> float:
        return float(sps.nct.sf(crit, df, ncp)) - power

    high = crit + 10.0
    while gap(high) < 0:
        high *= 2
    return float(brentq(gap, 0.0, high, xtol=1e-10) * se)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and does not count).

    ``p_(i) * (m - i + 1)`` in ascending order, made monotone and capped at 1; a claim holds
    at family-wise level ``alpha`` when its adjusted p is below ``alpha``.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adjusted, 1.0)
    return out


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
def corrected_ttest(differences: Sequence[float], *, test_train_ratio: float,
                    alternative: str = "two-sided") -> tuple[float, float]:
    """Nadeau and Bengio's corrected resampled t-test of paired differences.

    ``t = mean(d) / sqrt((1/n + test_train_ratio) * var(d, ddof=1))`` with ``n - 1`` degrees of
    freedom (:data:`scipy.stats.t`); returns ``(t, p)``, ``p`` for ``alternative``
    (``"two-sided"``, ``"greater"`` or ``"less"``). All-equal differences give ``t = 0, p = 1``
    when they are zero and ``t = +-inf, p = 0`` (in their direction) otherwise (equal up to
    1e-12, since fold metrics are rounded fractions).
    """
    mean, se, df = paired_t(differences, test_train_ratio=test_train_ratio)
    p = t_p_value(mean, se, df, alternative=alternative)
    if se == 0:
        return (0.0 if mean == 0 else float(np.sign(mean) * np.inf)), p
    return float(mean / se), p


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


def paired_t(differences: Sequence[float], *, test_train_ratio: float
             ) -> tuple[float, float, int]:
    """Mean, standard error and degrees of freedom of the (corrected) paired t-test:
    ``se = sqrt((1/n + test_train_ratio) var(d, ddof=1))``, ``df = n - 1``; ``se`` is 0 when
    the differences are equal up to 1e-12 (fold metrics are rounded fractions)."""
    d = np.asarray(differences, dtype=float)
    if d.ndim != 1 or len(d) < 2:
        raise SerlibError(f"a paired t-test needs >= 2 paired differences, got {d.size}")
    if not test_train_ratio >= 0:
        raise SerlibError(f"test_train_ratio={test_train_ratio!r} must be >= 0")
    if np.ptp(d) <= 1e-12:
        return float(d.mean()), 0.0, len(d) - 1
    return (float(d.mean()), float(np.sqrt((1 / len(d) + test_train_ratio) * d.var(ddof=1))),
            len(d) - 1)


def _metric_test(name: str, d: np.ndarray, *, ratio: float, level: float, boot: tuple,
                 test: str) -> MetricTest:
    mean, se, df = paired_t(d, test_train_ratio=ratio)
    pooled, boot_ci, _ = boot
    p = t_p_value(mean, se, df)
    t = float(mean / se) if se > 0 else (0.0 if mean == 0 else float(np.sign(mean) * np.inf))
    sd = float(d.std(ddof=1)) if se > 0 else 0.0
    return MetricTest(metric=name, mean_difference=mean, se=se, df=df, sd=sd, t=t, p_t=p,
                      ci=t_interval(mean, se, df, level=level), pooled_difference=pooled,
                      bootstrap_ci=boot_ci, wilcoxon_p=wilcoxon_p(d), p=p, test=test,
                      test_train_ratio=ratio)


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
        Level of the two-sided t-interval ``ci`` (and of the descriptive bootstrap interval).
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    Comparison
        ``differences`` has one row per (seed, fold): ``seed, fold, d_wa, d_ua``;
        ``n = seeds x folds``; the decision test is the corrected resampled t-test of the
        mean fold difference.
    """
    ref, oth = _as_runs(reference, "reference"), _as_runs(other, "other")
    pairs, ratio = _fold_pairs(ref, oth)
    diffs = pd.DataFrame([{"seed": run_seed(a), "fold": int(m["fold"]),
                           "d_wa": mo["wa"] - m["wa"], "d_ua": mo["ua"] - m["ua"]}
                          for a, m, mo in pairs])
    boot = speaker_bootstrap(_paired_predictions(ref, oth), n_resamples=n_resamples, seed=seed,
                             level=level)
    tests = {name: _metric_test(name, diffs[f"d_{name}"].to_numpy(), ratio=ratio, level=level,
                                boot=boot[name], test="corrected resampled t-test")
             for name in ("wa", "ua")}
    return Comparison(reference=_label(ref), other=_label(oth), paired_by="fold",
                      differences=diffs, n=len(diffs), test_train_ratio=ratio, level=level,
                      seeds=tuple(run_seed(r) for r in ref), **tests)


def _fold_pairs(ref: list, oth: list) -> tuple[list[tuple], float]:
    """The folds of paired runs (checked by :func:`check_paired`), seed by seed: ``(run,
    reference fold metrics, other fold metrics)`` per fold, and the mean test / training size
    ratio of the reference folds (the corrected resampled t-test's correction)."""
    check_paired(ref, oth)
    pairs, ratios = [], []
    for a, b in zip(ref, oth, strict=True):
        fb = {int(m["fold"]): m for m in b.folds}
        for m in a.folds:
            pairs.append((a, m, fb[int(m["fold"])]))
            ratios.append(m["n_test"] / (m["n_train"] + m.get("n_val", 0)))
    return pairs, float(np.mean(ratios))


def compare_fold_values(reference: RunLike | Sequence[RunLike],
                        other: RunLike | Sequence[RunLike], *, value, name: str,
                        level: float = 0.95) -> MetricTest:
    """The corrected resampled t-test of any per-fold quantity (other minus reference).

    ``value(fold_metrics) -> float`` reads it from one fold's ``metrics.json`` (e.g. the mean
    recall of the minority classes); runs pair as in :func:`compare_runs` (refused otherwise).
    No bootstrap: the pooled fields hold the mean and its t-interval.
    """
    ref, oth = _as_runs(reference, "reference"), _as_runs(other, "other")
    pairs, ratio = _fold_pairs(ref, oth)
    d = np.asarray([float(value(mo)) - float(value(m)) for _, m, mo in pairs])
    mean, se, df = paired_t(d, test_train_ratio=ratio)
    ci = t_interval(mean, se, df, level=level)
    return _metric_test(name, d, ratio=ratio, level=level,
                        boot=(mean, ci, None), test="corrected resampled t-test")


def compare_with_published(runs: RunLike | Sequence[RunLike], *, metric: str,
                           published: float, level: float = 0.95) -> MetricTest:
    """Our per-fold ``metric`` (seeds x folds) against a published number (a fraction):
    differences ``ours - published``, corrected resampled t-test (the published side has no
    variance we know of). Only meaningful on the same corpus under the same protocol."""
    runs = _as_runs(runs, "runs")
    d = np.array([m[metric] - published for r in runs for m in r.folds], dtype=float)
    ratio = float(np.mean([m["n_test"] / (m["n_train"] + m.get("n_val", 0))
                           for r in runs for m in r.folds]))
    mean, se, df = paired_t(d, test_train_ratio=ratio)
    return _metric_test(metric, d, ratio=ratio, level=level,
                        boot=(mean, t_interval(mean, se, df, level=level), None),
                        test="corrected resampled t-test against the published value")


def compare_pooled(reference: RunLike | Sequence[RunLike], other: RunLike | Sequence[RunLike],
                   *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
                   ) -> Comparison:
    """Comparison of two runs that predicted the same utterances on *different* folds.

    For one configuration under two protocols (stratified vs session): each utterance is in
    exactly one test fold on each side, so the pooled predictions pair by utterance. The
    effect is the mean of the per-speaker differences (each speaker's WA and UA, all seeds
    pooled) and the decision test the paired t-test over speakers (no correction: the
    speakers do not share a training part); the Wilcoxon p-value and the speaker bootstrap
    of the pooled difference are secondary. Lists of
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
    tests = {name: _metric_test(name, diffs[f"d_{name}"].to_numpy(), ratio=0.0, level=level,
                                boot=boot[name], test="paired t-test over speakers")
             for name in ("wa", "ua")}
    return Comparison(reference=_label(ref), other=_label(oth), paired_by="speaker",
                      differences=diffs, n=len(diffs), test_train_ratio=float("nan"),
                      level=level, seeds=tuple(run_seed(r) for r in ref), **tests)


# ----------------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class Inference:
    """One metric's answer to a directional claim (see :func:`infer`); fractions.

    ``interval`` is the two-sided t-interval at ``level = 1 - 2 alpha``: its lower end is
    above 0 exactly when ``verdict`` is ``agrees`` for an upward claim (below 0 for a
    downward one), and it holds 0 exactly when the verdict is ``inconclusive``.
    """

    metric: str
    direction: int
    alternative: str          # "greater" or "less": the claimed direction, tested one-sided
    alpha: float
    effect: float             # the mean paired difference (what the test tests)
    interval: tuple[float, float]
    level: float
    p: float                  # one-sided p-value in the claimed direction
    p_opposite: float         # one-sided p-value in the other direction
    mde: float                # minimum detectable effect at ``power`` (one-sided, alpha)
    power: float
    verdict: str
    test: str
    n: int


def infer(test: MetricTest, *, direction: int, alpha: float = 0.05, power: float = POWER
          ) -> Inference:
    """A directional claim on one metric: one-sided test at ``alpha`` in the claimed direction
    (``direction`` +1: other higher, -1: other lower), the matching ``1 - 2 alpha`` interval
    and the minimum detectable effect at ``power``.

    ``agrees`` when the one-sided p in the claimed direction is below ``alpha``,
    ``contradicts`` when the one-sided p in the opposite direction is, else
    ``inconclusive`` (two one-sided tests at ``alpha``: the interval decides the same).
    """
    if direction not in (1, -1):
        raise SerlibError(f"direction={direction!r} must be +1 (other higher) or -1 (lower)")
    if not 0 < alpha < 0.5:
        raise SerlibError(f"alpha={alpha!r} must be between 0 and 0.5")
    alternative, opposite = ("greater", "less") if direction == 1 else ("less", "greater")
    p, p_opp = test.p_value(alternative), test.p_value(opposite)
    word = "agrees" if p < alpha else "contradicts" if p_opp < alpha else "inconclusive"
    level = 1 - 2 * alpha
    mde = minimum_detectable_effect(sd=test.sd, n=test.n, test_train_ratio=test.test_train_ratio,
                                    alpha=alpha, power=power, alternative="greater")
    return Inference(metric=test.metric, direction=direction, alternative=alternative,
                     alpha=alpha, effect=test.mean_difference,
                     interval=test.interval(level), level=level, p=p, p_opposite=p_opp,
                     mde=mde, power=power, verdict=word, test=test.test, n=test.n)


def metric_verdict(test: MetricTest, *, direction: int, alpha: float) -> str:
    """The verdict word of :func:`infer`: one-sided test of the claimed direction at
    ``alpha`` (``agrees``), of the opposite one (``contradicts``), else ``inconclusive``."""
    return infer(test, direction=direction, alpha=alpha).verdict


def verdict(comparison: Comparison, *, direction: int = 1, alpha: float = 0.05) -> dict:
    """Three-way verdict on a claimed direction, on WA and on UA, and overall.

    Returns ``{"wa": v, "ua": v, "overall": v}`` with each ``v`` in :data:`VERDICTS`
    (:func:`metric_verdict`). ``overall`` is ``agrees`` when both metrics agree (the paper
    claims gains in both), ``contradicts`` when either contradicts, else ``inconclusive``.
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
    "ALTERNATIVES",
    "POWER",
    "VERDICTS",
    "Comparison",
    "Inference",
    "MetricTest",
    "check_paired",
    "compare_fold_values",
    "compare_pooled",
    "compare_runs",
    "compare_with_published",
    "corrected_ttest",
    "fold_utterances",
    "holm",
    "infer",
    "minimum_detectable_effect",
    "paired_t",
    "metric_verdict",
    "pooled_interval",
    "run_seed",
    "speaker_bootstrap",
    "t_interval",
    "t_p_value",
    "verdict",
    "wilcoxon_p",
]
