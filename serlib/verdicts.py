"""The book's answers in one table: one row per claim, the paper's words beside our test.

:func:`verdict_table` reads a build's run folders and tests every claim the book makes or
checks, each with the one inference of :mod:`serlib.stats` (effect = mean of the paired
differences over seeds x folds, one-sided test of the claimed direction at ``alpha`` with its
``1 - 2 alpha`` t-interval, the minimum detectable effect at 80 % power) and Holm's adjustment
across the table's family of tested claims.

The paper's claims: focal loss beats softmax (per feature, on WA and on UA, Table 4); focal
loss raises the recall of the rare classes (Tables 2 -> 3; the rare classes of *this* corpus,
:mod:`serlib.corpus_facts`); MFCC beats the spectrogram (Table 4); the proposed model beats
the literature rows of Table 1 (testable only on IEMOCAP under the row's own protocol).
Ours: speaker leakage inflates the score; focal loss beats each other imbalance remedy and the
best of them; the deep model beats the measured baselines; the strong recipe beats the
paper's (optimistic where it was chosen on the same corpus); a fused run (a profile's
``fusion:``, :mod:`serlib.fusion`) beats each of the two runs it fuses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from serlib import paper
from serlib.corpus_facts import CorpusFacts, run_facts
from serlib.errors import SerlibError
from serlib.results import (
    BASELINE_LABELS,
    beside_runs,
    fusion_sources,
    is_fusion,
    load_seeded_runs,
    seed_runs,
)
from serlib.stats import (
    MetricTest,
    compare_fold_values,
    compare_runs,
    compare_with_published,
    holm,
    infer,
)

#: Table 1's literature rows: corpus and protocol as their authors describe them (this book
#: has not re-run them). ``protocol`` is matched against this build's protocols: "session"
#: (speaker-independent folds), "stratified" (utterance folds) or None (no protocol of ours).
LITERATURE = (
    {"model": "Lee & Tashev (2015)", "corpus": "iemocap", "protocol": None,
     "described": "IEMOCAP, 4 classes, speaker-independent (one speaker held out at a time)"},
    {"model": "Satt et al. (2017)", "corpus": "iemocap", "protocol": "session",
     "described": "IEMOCAP improvised, 4 classes, speaker-independent (leave one session out)"},
    {"model": "Yenigalla et al. (2018)", "corpus": "iemocap", "protocol": "stratified",
     "described": "IEMOCAP improvised, 4 classes, 5-fold cross-validation on utterances"},
)

#: The corpora on which the strong recipe (serlib.config.RECIPES) was chosen.
RECIPE_CHOSEN_ON = ("emodb",)

#: Verdict beside its effect, so that a reader at 1280 px sees both before the table scrolls;
#: corpus, protocol and the paper's words after them.
COLUMNS = ("claim", "by", "metric", "effect [CI] (points)", "verdict", "p (one-sided)",
           "p (Holm)", "holds after Holm", "MDE (points)", "corpus", "protocol",
           "the paper says", "chapter", "note")


@dataclass
class _Row:
    claim: str
    by: str
    paper: str
    corpus: str
    protocol: str
    metric: str
    chapter: str
    test: MetricTest | None = None
    direction: int = 1
    verdict: str = ""
    note: str = ""


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _p(p: float) -> str:
    from serlib.report import format_p

    return format_p(p, missing="")


def _protocol(facts: CorpusFacts, runs) -> str:
    s = runs[0].summary
    return facts.protocol_short(s["protocol"], s["n_folds"])


def _tested(rows: list[_Row], make, *, claim, by, paper_words, corpus, protocol, metrics,
            chapter, direction=1, note=""):
    """Append one row per metric of ``make()`` (dict metric -> MetricTest), or one
    explanatory row when the runs are missing or do not pair."""
    try:
        tests = make()
    except (SerlibError, KeyError) as error:
        reason = str(error)
        word = "not run in this build" if isinstance(error, KeyError) else "not paired"
        rows.append(_Row(claim, by, paper_words, corpus, protocol, ", ".join(metrics), chapter,
                         verdict=word, note=(reason if word == "not paired" else note)))
        return
    for metric in metrics:
        rows.append(_Row(claim, by, paper_words, corpus, protocol, metric.upper()
                         if metric in ("ua", "wa") else metric, chapter,
                         test=tests[metric], direction=direction, note=note))


def _study_rows(studies: dict, name: str, training: dict, seeds):
    from serlib.studies import study_rows

    if name not in (studies or {}):
        return []
    return study_rows(studies, name, base_training=training, seeds=seeds)


def verdict_table(runs_dir: str | os.PathLike, *, studies: dict, training: dict, seeds,
                  alpha: float = 0.05, n_resamples: int = 200) -> pd.DataFrame:
    """One row per claim (per metric where a claim covers two), tested on this build's runs.

    Parameters
    ----------
    runs_dir : path
        The build's runs folder (the grid's, the studies' and the baselines' run folders).
    studies, training, seeds
        The profile's ``studies:``, ``training:`` and seeds (:func:`serlib.studies.study_rows`).
    alpha : float
        Level of each one-sided test; the interval shown is the ``1 - 2 alpha`` t-interval.
    n_resamples : int
        Speaker-bootstrap resamples of :func:`serlib.stats.compare_runs` (descriptive; not
        shown here).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`. ``verdict`` is agrees / contradicts / inconclusive (the
        interval excludes 0 exactly when it is not inconclusive), or why there is no test
        ("not testable here", "not run in this build", "not paired"). ``p (Holm)`` adjusts the
        one-sided p-values of every tested row together.
    """
    from serlib.report import best_other_remedy, compare_rows, load_study

    runs_dir = Path(runs_dir)
    grid = load_seeded_runs(runs_dir)
    if not grid:
        raise SerlibError(f"{runs_dir}: none of the paper's four configurations was run")
    first = next(iter(grid.values()))
    facts = run_facts(first[0])
    corpus = facts.short_name
    rows: list[_Row] = []
    t4 = paper.TABLE4.set_index(["feature", "loss"])

    def kw(**extra):
        return dict(n_resamples=n_resamples, **extra)

    # ----------------------------------------------------------------- the paper's claims
    for feature, label in (("spectrogram", "Spectrogram"), ("mfcc", "MFCC")):
        words = (f"focal loss raises WA {t4.loc[(feature, 'softmax'), 'WA']} -> "
                 f"{t4.loc[(feature, 'focal'), 'WA']} and UA "
                 f"{t4.loc[(feature, 'softmax'), 'UA']} -> {t4.loc[(feature, 'focal'), 'UA']}"
                 " (Table 4)")
        protocol = _protocol(facts, grid.get((feature, "focal")) or first)
        _tested(rows, lambda f=feature: _pair(compare_runs(grid[(f, "softmax")],
                                                           grid[(f, "focal")], **kw())),
                claim=f"Focal loss beats softmax ({label})", by="paper", paper_words=words,
                corpus=corpus, protocol=protocol, metrics=("ua", "wa"),
                chapter="Results, Table 4")
    minority = facts.minority
    shift = {c: (paper.TABLE2.loc[c, c], paper.TABLE3.loc[c, c]) for c in ("happiness", "anger")}
    words = ("focal loss lifts the rare classes: happiness recall "
             f"{shift['happiness'][0]} -> {shift['happiness'][1]}, anger {shift['anger'][0]} -> "
             f"{shift['anger'][1]} (Tables 2, 3, MFCC)")

    def minority_recall(metrics: dict) -> float:
        return float(np.mean([metrics["per_class_recall"][c] for c in minority]))

    metric_name = f"mean recall of {facts.minority_phrase()}"
    _tested(rows, lambda: {metric_name: compare_fold_values(
                grid[("mfcc", "softmax")], grid[("mfcc", "focal")], value=minority_recall,
                name=metric_name)},
            claim="Focal loss raises the rare classes' recall (MFCC)", by="paper",
            paper_words=words, corpus=corpus,
            protocol=_protocol(facts, grid.get(("mfcc", "focal")) or first),
            metrics=(metric_name,), chapter="Results, Tables 2 and 3",
            note=("" if set(minority) == {"happiness", "anger"} else
                  f"on this corpus the rare classes are {facts.minority_phrase()} "
                  f"(the largest is {facts.majority}), not IEMOCAP's happiness and anger"))
    words = (f"MFCC beats the spectrogram with focal loss: WA "
             f"{t4.loc[('spectrogram', 'focal'), 'WA']} -> {t4.loc[('mfcc', 'focal'), 'WA']}, "
             f"UA {t4.loc[('spectrogram', 'focal'), 'UA']} -> {t4.loc[('mfcc', 'focal'), 'UA']}"
             " (Table 4)")
    _tested(rows, lambda: _pair(compare_runs(grid[("spectrogram", "focal")],
                                             grid[("mfcc", "focal")], **kw())),
            claim="MFCC beats the spectrogram (focal loss)", by="paper", paper_words=words,
            corpus=corpus, protocol=_protocol(facts, grid.get(("mfcc", "focal")) or first),
            metrics=("ua", "wa"), chapter="Results, Table 4")
    _literature_rows(rows, runs_dir, facts, studies, training, seeds, grid)

    # ----------------------------------------------------------------- ours
    leakage = _study_rows(studies, "leakage", training, seeds)
    if leakage:
        try:
            runs = load_study(runs_dir, leakage)
            for label, (c, _) in compare_rows(leakage, runs, alpha=alpha, direction=-1,
                                              n_resamples=n_resamples).items():
                row = next(r for r in leakage if r.label == label)
                rows.append(_Row(f"Speaker leakage inflates the score ({row.config['feature']}"
                                 f" + {row.config['loss']})", "ours", "", corpus,
                                 f"{_protocol(facts, runs[label])} vs "
                                 f"{_protocol(facts, runs[row.compare_with])}", "UA",
                                 "Speaker leakage", test=c.ua, direction=-1))
        except SerlibError as error:
            rows.append(_Row("Speaker leakage inflates the score", "ours", "", corpus, "",
                             "UA", "Speaker leakage", verdict="not run in this build",
                             note=str(error)))
    imbalance = _study_rows(studies, "imbalance", training, seeds)
    if imbalance:
        _remedy_rows(rows, runs_dir, imbalance, facts, corpus, best_other_remedy, load_study,
                     kw)
    beside = beside_runs(runs_dir, seeds=True)
    paper_recipe = grid.get(("mfcc", "focal"))
    for name in BASELINE_LABELS:
        if name in beside and paper_recipe:
            _tested(rows, lambda n=name: _pair(compare_runs(beside[n], paper_recipe, **kw())),
                    claim=f"The ResNet (paper's recipe, MFCC + focal) beats "
                          f"{BASELINE_LABELS[name].split(': ', 1)[-1]}", by="ours",
                    paper_words="", corpus=corpus, protocol=_protocol(facts, paper_recipe),
                    metrics=("ua", "wa"), chapter="Results, recipes and baselines")
    optimistic = (f"the strong recipe was chosen on {corpus}'s inner splits: this estimate is "
                  "optimistic here" if facts.corpus in RECIPE_CHOSEN_ON else "")
    for name, runs in beside.items():
        if name in BASELINE_LABELS or is_fusion(name) or not paper_recipe:
            continue
        _tested(rows, lambda r=runs: _pair(compare_runs(paper_recipe, r, **kw())),
                claim="The strong recipe beats the paper's recipe", by="ours", paper_words="",
                corpus=corpus, protocol=_protocol(facts, runs), metrics=("ua",),
                chapter="Results, recipes and baselines", note=optimistic)
        for base in BASELINE_LABELS:
            if base in beside:
                _tested(rows, lambda r=runs, b=base: _pair(compare_runs(beside[b], r, **kw())),
                        claim=f"The strong recipe beats "
                              f"{BASELINE_LABELS[base].split(': ', 1)[-1]}", by="ours",
                        paper_words="", corpus=corpus, protocol=_protocol(facts, runs),
                        metrics=("ua",), chapter="Results, recipes and baselines",
                        note=optimistic)
    _fusion_rows(rows, beside, runs_dir=runs_dir, corpus=corpus, facts=facts,
                 optimistic=optimistic, kw=kw)
    return _finish(rows, alpha=alpha)


#: What a fused run is, in the verdicts' note (serlib.fusion); ``{criterion}``: what its
#: weights were chosen by (its record's ``criterion``: UA or log-loss).
FUSION_NOTE = ("late fusion: w * p(deep run) + (1 - w) * p(baseline), w per test fold chosen "
               "by {criterion} on that fold's training part (out-of-fold or validation "
               "predictions), never on the test fold")


def _short(baseline: str) -> str:
    return BASELINE_LABELS.get(baseline, baseline).split(": ", 1)[-1]


def _fusion_rows(rows: list[_Row], beside: dict, *, runs_dir, corpus, facts, optimistic,
                 kw) -> None:
    """One row per fused run and each of the two runs it fuses: the fusion beats it (UA)."""
    for name, runs in beside.items():
        if not is_fusion(name):
            continue
        deep, baseline = fusion_sources(runs)
        what = "the strong recipe" if deep.endswith("_strong") else deep
        record = (runs if isinstance(runs, list) else [runs])[0].summary["fusion"]
        criterion = {"ua": "UA"}.get(record.get("criterion", "ua"), record.get("criterion"))
        note = FUSION_NOTE.format(criterion=criterion) + (
            f"; {optimistic}" if optimistic and deep.endswith("_strong") else "")
        for source, label in ((deep, what), (baseline, _short(baseline))):
            claim = f"Fusion ({what} + {_short(baseline)}) beats {label}"
            found = beside.get(source) or seed_runs(runs_dir, source)
            if not found:
                rows.append(_Row(claim, "ours", "", corpus, _protocol(facts, runs), "UA",
                                 "Results, recipes and baselines",
                                 verdict="not run in this build",
                                 note=f"no run {source} in this build"))
                continue
            _tested(rows, lambda f=found, r=runs: _pair(compare_runs(f, r, **kw())),
                    claim=claim, by="ours", paper_words="", corpus=corpus,
                    protocol=_protocol(facts, runs), metrics=("ua",),
                    chapter="Results, recipes and baselines", note=note)


def _pair(comparison) -> dict:
    return {"ua": comparison.ua, "wa": comparison.wa}


def _literature_rows(rows, runs_dir, facts, studies, training, seeds, grid) -> None:
    literature = paper.TABLE1[paper.TABLE1["kind"] != "paper"].set_index("model")
    proposed = paper.TABLE1[paper.TABLE1["kind"] == "paper"].set_index("model")
    ours_ua = proposed["UA"].max()
    session_runs = None
    for entry in LITERATURE:
        name = entry["model"]
        if name not in literature.index:
            continue
        wa, ua = literature.loc[name, "WA"], literature.loc[name, "UA"]
        words = (f"the proposed model (UA {ours_ua}) beats {name} (WA {wa}, UA {ua}); "
                 f"{name}: {entry['described']}")
        reasons = []
        if not facts.is_iemocap:
            reasons.append(f"this build's corpus is {facts.name}, theirs IEMOCAP")
        if entry["protocol"] is None:
            reasons.append("no run of this build uses their protocol")
        if reasons:
            rows.append(_Row(f"The proposed model beats {name}", "paper", words,
                             facts.short_name, entry["described"], "UA", "Results, Table 1",
                             verdict="not testable here", note="; ".join(reasons)))
            continue
        runs = grid.get(("mfcc", "focal"))
        if entry["protocol"] == "session":
            if session_runs is None:
                session_runs = _session_runs(runs_dir, studies, training, seeds)
            runs = session_runs
        if not runs:
            rows.append(_Row(f"The proposed model beats {name}", "paper", words,
                             facts.short_name, entry["described"], "UA", "Results, Table 1",
                             verdict="not run in this build",
                             note=f"no MFCC + focal run under the {entry['protocol']} "
                                  "protocol"))
            continue
        rows.append(_Row(f"Our MFCC + focal model beats {name}", "paper", words,
                         facts.short_name, _protocol(facts, runs), "UA", "Results, Table 1",
                         test=compare_with_published(runs, metric="ua", published=ua / 100),
                         note="against the published number (no per-fold values of theirs)"))


def _session_runs(runs_dir, studies, training, seeds):
    from serlib.report import load_study

    for row in _study_rows(studies, "leakage", training, seeds):
        if (row.config.get("protocol") == "session" and row.config.get("feature") == "mfcc"
                and row.config.get("loss") == "focal"):
            try:
                return load_study(runs_dir, [row])[row.label]
            except SerlibError:
                return None
    return None


def _remedy_rows(rows, runs_dir, imbalance, facts, corpus, best_other_remedy, load_study,
                 kw) -> None:
    try:
        runs = load_study(runs_dir, imbalance)
        focal, best = best_other_remedy(imbalance, runs)
    except SerlibError as error:
        rows.append(_Row("Focal loss beats the other imbalance remedies", "ours", "", corpus,
                         "", "UA", "Imbalance", verdict="not run in this build",
                         note=str(error)))
        return
    protocol = _protocol(facts, runs[focal])
    others = [r.label for r in imbalance if not r.reference and r.label != focal
              and not (r.config.get("loss") == "focal"
                       and not (set(r.config) - {"feature", "loss", "protocol", "gamma"}))]
    for label in others:
        suffix = " (the best other remedy by mean UA)" if label == best else ""
        _tested(rows, lambda lab=label: _pair(compare_runs(runs[lab], runs[focal], **kw())),
                claim=f"Focal loss ({focal}) beats {label}{suffix}", by="ours", paper_words="",
                corpus=corpus, protocol=protocol, metrics=("ua",), chapter="Imbalance")


def _finish(rows: list[_Row], *, alpha: float) -> pd.DataFrame:
    inferences = [infer(r.test, direction=r.direction, alpha=alpha) if r.test is not None
                  else None for r in rows]
    adjusted = holm([i.p if i is not None else np.nan for i in inferences])
    out = []
    for row, inf, p_holm in zip(rows, inferences, adjusted, strict=True):
        entry = {"claim": row.claim, "by": row.by, "the paper says": row.paper or "—",
                 "corpus": row.corpus, "protocol": row.protocol, "metric": row.metric}
        if inf is None:
            entry.update({"effect [CI] (points)": "—", "p (one-sided)": "",
                          "p (Holm)": "", "MDE (points)": "", "verdict": row.verdict,
                          "holds after Holm": ""})
        else:
            lo, hi = inf.interval
            entry.update({
                "effect [CI] (points)": f"{_pts(inf.effect)} [{_pts(lo)}, {_pts(hi)}]",
                "p (one-sided)": _p(inf.p), "p (Holm)": _p(p_holm),
                "MDE (points)": f"{100 * inf.mde:.1f}", "verdict": inf.verdict,
                "holds after Holm": ("yes" if inf.verdict == "agrees" and p_holm < alpha
                                     else "no")})
        entry.update({"chapter": row.chapter, "note": row.note})
        out.append(entry)
    return pd.DataFrame(out, columns=list(COLUMNS))


def verdict_note(*, alpha: float, seeds) -> str:
    """The caption of the verdicts table: what each column is."""
    level = round(100 * (1 - 2 * alpha))
    return (f"Effect: mean over {len(seeds)} seed(s) x folds of the paired differences (ours "
            f"minus the claim's reference; speakers for the leakage rows), in points, with its "
            f"{level} % t-interval; p: one-sided in the claimed direction (corrected resampled "
            f"t-test; paired t over speakers for leakage); verdict at alpha = {alpha:g}: "
            "agrees / contradicts when the interval lies above / below 0 (below / above for "
            "leakage, claimed downward), else inconclusive; MDE: the smallest true effect "
            "this comparison detects with 80 % power; p (Holm): adjusted across every tested "
            "row of this table.")


__all__ = ["COLUMNS", "FUSION_NOTE", "LITERATURE", "RECIPE_CHOSEN_ON", "verdict_note",
           "verdict_table"]
