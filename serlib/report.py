"""Tables, figures and verdict sentences of the study chapters (speaker leakage, imbalance).

Everything is computed from run folders (and :mod:`serlib.stats`); a chapter only calls these.
Percentages are points (0..100); differences are *row minus its reference*.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from serlib import paper
from serlib._io import read_text_csv
from serlib.config import RECIPES
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES, SHORT_NAMES
from serlib.posthoc import logit_adjust
from serlib.results import (
    BASELINE_LABELS,
    Run,
    fusion_sources,
    is_fusion,
    load_run,
    pooled_fold_summary,
)
from serlib.stats import (
    Comparison,
    Inference,
    compare_pooled,
    compare_runs,
    infer,
    pooled_interval,
    verdict,
)
from serlib.studies import StudyRow

MINORITY = ("happiness", "anger")
_IEMOCAP_SPEAKER = re.compile(r"^Ses\d+(?P<gender>[FM])$")


def load_study(runs_dir: str | os.PathLike, rows: list[StudyRow]) -> dict[str, list[Run]]:
    """The runs of every row (one per seed), keyed by row label; posthoc rows are computed
    (:func:`serlib.posthoc.logit_adjust`). A missing run folder raises, naming it."""
    runs_dir = Path(runs_dir)
    out = {}
    for row in rows:
        runs = [load_run(runs_dir / name) for name in row.runs]
        if row.kind == "posthoc":
            runs = [logit_adjust(r, tau=float(row.posthoc["tau"])) for r in runs]
        out[row.label] = runs
    return out


def _pooled_recall(runs: list[Run]) -> tuple[np.ndarray, np.ndarray]:
    confusion = np.sum([np.asarray(r.summary["confusion"]) for r in runs], axis=0)
    n = confusion.sum(axis=1)
    return np.divide(np.diag(confusion), n, out=np.zeros(len(n)), where=n > 0), n


def _listed(runs) -> list[Run]:
    return list(runs) if isinstance(runs, (list, tuple)) else [runs]


def _fold_values(runs: list[Run], key: str) -> np.ndarray:
    return np.array([m[key] for r in runs for m in r.folds])


def _pm(values: np.ndarray) -> str:
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{100 * values.mean():.1f} ± {100 * std:.1f}"


def _diff(inference: Inference) -> str:
    """``"+2.1 [+0.3, +3.9]"``: the tested effect (mean paired difference) and its interval,
    in points."""
    lo, hi = inference.interval
    return f"{100 * inference.effect:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def format_p(p: float, *, missing: str = "—") -> str:
    """A p-value for tables: three decimals, ``< 0.001`` below that, ``missing`` if NaN."""
    return missing if not np.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else "< 0.001")


def _p(p: float) -> str:
    return format_p(p)


def _p_clause(p: float) -> str:
    """``p = 0.094`` or ``p < 0.001`` for a sentence."""
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _mde(inference: Inference) -> str:
    return f"{100 * inference.mde:.1f}"


def inference_columns(comparison: Comparison, *, direction: int, alpha: float,
                      metrics: tuple[str, ...] = ("ua", "wa")) -> dict:
    """The columns every comparison row of the book shows, per metric (points): the effect
    tested with its ``1 - 2 alpha`` interval, the one-sided p of the claimed direction, the
    minimum detectable effect at 80 % power and the verdict (:func:`serlib.stats.infer`).
    Each verdict sits beside its own interval: ``inconclusive`` exactly when it holds 0."""
    out = {}
    for m in metrics:
        inf = infer(comparison.metric(m), direction=direction, alpha=alpha)
        name = m.upper()
        out[f"Δ {name} [{round(100 * inf.level)} % CI]"] = _diff(inf)
        out[f"p {name} (one-sided)"] = _p(inf.p)
        out[f"MDE {name}"] = _mde(inf)
        out[f"verdict {name}"] = inf.verdict
    return out


def verdict_phrase(verdicts: dict) -> str:
    """``"agrees"`` when UA and WA say the same, else ``"UA: agrees, WA: inconclusive"``:
    never one word for two metrics that disagree."""
    if verdicts["ua"] == verdicts["wa"]:
        return verdicts["ua"]
    return f"UA: {verdicts['ua']}, WA: {verdicts['wa']}"


def inference_note(comparison: Comparison, *, alpha: float) -> str:
    """The caption that says what the inference columns are."""
    c = comparison
    unit = (f"{c.n} paired fold differences ({len(c.seeds)} seed(s) x folds), corrected "
            "resampled t-test" if c.paired_by == "fold"
            else f"{c.n} paired speaker differences, paired t-test over speakers")
    return (f"Δ: mean of the {unit}, with its {round(100 * (1 - 2 * alpha))} % t-interval; "
            f"p: one-sided in the claimed direction, at alpha = {alpha:g} (the interval "
            "excludes 0 exactly when the verdict is not inconclusive); MDE: the smallest "
            "true difference detectable with 80 % power (points).")


def compare_rows(rows: list[StudyRow], runs: dict[str, list[Run]], *, alpha: float,
                 direction: int, n_resamples: int = 2000, seed: int = 0
                 ) -> dict[str, tuple[Comparison, dict]]:
    """Each non-reference row against its reference: ``{label: (comparison, verdicts)}``.

    Rows on the same folds as their reference get :func:`serlib.stats.compare_runs`; rows on
    other folds (another protocol) get :func:`serlib.stats.compare_pooled`.
    """
    out = {}
    for row in rows:
        if row.compare_with is None:
            continue
        ref, other = runs[row.compare_with], runs[row.label]
        same_folds = ref[0].summary["protocol"] == other[0].summary["protocol"]
        compare = compare_runs if same_folds else compare_pooled
        c = compare(ref, other, n_resamples=n_resamples, seed=seed)
        out[row.label] = (c, verdict(c, direction=direction, alpha=alpha))
    return out


# ----------------------------------------------------------------------------- leakage
def leakage_table(rows: list[StudyRow], runs: dict[str, list[Run]],
                  comparisons: dict[str, tuple[Comparison, dict]], *, alpha: float = 0.05
                  ) -> pd.DataFrame:
    """Table 4 under both protocols side by side: WA and UA (mean ± std over seeds x folds),
    then the test of "leakage inflates" (session minus stratified below zero) on UA and WA:
    :func:`inference_columns` (mean per-speaker difference, interval, one-sided p, MDE,
    verdict)."""
    by_label = {r.label: r for r in rows}
    table = []
    for label, (c, _) in comparisons.items():
        row = by_label[label]
        ref = runs[row.compare_with]
        other = runs[label]
        table.append({
            "feature": row.config["feature"], "loss": row.config["loss"],
            "paper WA": _paper(row, "WA"), "paper UA": _paper(row, "UA"),
            f"{ref[0].summary['protocol']} WA": _pm(_fold_values(ref, "wa")),
            f"{ref[0].summary['protocol']} UA": _pm(_fold_values(ref, "ua")),
            f"{other[0].summary['protocol']} WA": _pm(_fold_values(other, "wa")),
            f"{other[0].summary['protocol']} UA": _pm(_fold_values(other, "ua")),
            **inference_columns(c, direction=-1, alpha=alpha)})
    return pd.DataFrame(table).set_index(["feature", "loss"])


def _paper(row: StudyRow, metric: str):
    t = paper.TABLE4.set_index(["feature", "loss"])
    key = (row.config.get("feature"), row.config.get("loss"))
    return t.loc[key, metric] if key in t.index else "—"


def speaker_genders(run: Run) -> dict[str, str]:
    """Gender of each speaker: the selection CSV's ``gender`` column when the run's
    ``config.json`` names a readable one, else IEMOCAP-style ids (``Ses01F``), else ``"?"``."""
    speakers = run.predictions["speaker"].astype(str).unique()
    path = ((run.config or {}).get("selection") or {}).get("path")
    if path and Path(path).is_file():
        selection = read_text_csv(path, what="selection CSV")
        if {"speaker", "gender"} <= set(selection):
            known = selection.drop_duplicates("speaker").set_index("speaker")["gender"]
            return {s: str(known.get(s, "?")) for s in speakers}
    out = {}
    for s in speakers:
        m = _IEMOCAP_SPEAKER.match(s)
        out[s] = m["gender"] if m else "?"
    return out


def per_speaker_table(runs: list[Run]) -> pd.DataFrame:
    """Per speaker (all seeds pooled): gender, utterances, WA and UA (%)."""
    from serlib.metrics import unweighted_accuracy, weighted_accuracy

    genders = speaker_genders(runs[0])
    preds = pd.concat([r.predictions for r in runs], ignore_index=True)
    rows = []
    for speaker, g in preds.groupby(preds["speaker"].astype(str)):
        rows.append({"speaker": speaker, "gender": genders.get(speaker, "?"),
                     "utterances": len(g) // len(runs),
                     "WA %": 100 * weighted_accuracy(g["label"], g["predicted"]),
                     "UA %": 100 * unweighted_accuracy(g["label"], g["predicted"])})
    return pd.DataFrame(rows).set_index("speaker").round(1)


def plot_per_speaker(table: pd.DataFrame, *, title: str, ax=None):
    """One bar per speaker (UA %), coloured by gender; a line at the pooled mean."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.4), constrained_layout=True)
    data = table.reset_index()
    sns.barplot(data=data, x="speaker", y="UA %", hue="gender", dodge=False, ax=ax,
                palette={"F": "tab:red", "M": "tab:blue", "?": "tab:gray"})
    ax.axhline(data["UA %"].mean(), color="k", lw=1, ls="--", label="mean of speakers")
    ax.set(title=title, ylim=(0, 100), ylabel="UA %")
    ax.tick_params(axis="x", rotation=45)
    # outside the axes: the legend never covers a bar
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="gender",
              frameon=False)
    return ax


# ----------------------------------------------------------------------------- imbalance
def remedy_table(rows: list[StudyRow], runs: dict[str, list[Run]],
                 comparisons: dict[str, tuple[Comparison, dict]], *, alpha: float = 0.05,
                 classes: tuple[str, ...] = PAPER_CLASSES) -> pd.DataFrame:
    """Every row's WA, UA, macro-F1 (mean ± std over seeds x folds), pooled recall (%) of
    ``classes``, and against its reference on "it beats the reference":
    :func:`inference_columns` (effect, interval, one-sided p, MDE, verdict)."""
    table = []
    for row in rows:
        rs = runs[row.label]
        recall, _ = _pooled_recall(rs)
        entry = {"remedy": row.label, "WA %": _pm(_fold_values(rs, "wa")),
                 "UA %": _pm(_fold_values(rs, "ua")),
                 "macro-F1 %": _pm(_fold_values(rs, "macro_f1")),
                 **{f"{SHORT_NAMES[c]} %": round(100 * r, 1)
                    for c, r in zip(PAPER_CLASSES, recall, strict=True) if c in classes}}
        if row.label in comparisons:
            c, _ = comparisons[row.label]
            entry.update(inference_columns(c, direction=1, alpha=alpha))
        table.append(entry)
    if comparisons:            # the reference row: blank inference columns, in their order
        c, _ = next(iter(comparisons.values()))
        blank = dict.fromkeys(inference_columns(c, direction=1, alpha=alpha), "")
        for entry in table:
            if entry["remedy"] not in comparisons:
                entry.update({**blank, "verdict UA": "reference"})
    return pd.DataFrame(table).set_index("remedy")


def best_other_remedy(rows: list[StudyRow], runs: dict[str, list[Run]]) -> tuple[str, str]:
    """``(focal, best other)``: the plain focal row with the highest mean UA over seeds x
    folds, and the highest-UA row that is neither focal loss nor the reference."""
    def ua(label: str) -> float:
        return float(_fold_values(runs[label], "ua").mean())

    focal = [r.label for r in rows if r.kind == "trained" and r.config.get("loss") == "focal"
             and not (set(r.config) - {"feature", "loss", "protocol", "gamma"})]
    others = [r.label for r in rows if not r.reference and r.config.get("loss") != "focal"]
    if not focal or not others:
        raise SerlibError("the study needs a plain focal row and another remedy to compare "
                          "focal loss with the best other remedy")
    return max(focal, key=ua), max(others, key=ua)


def gamma_curve(rows: list[StudyRow], runs: dict[str, list[Run]], *,
                n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Pooled UA (%) with its speaker-bootstrap 95 % interval against gamma: the focal rows
    without other remedies, and plain softmax as gamma 0 (focal loss at gamma 0 is
    cross-entropy)."""
    points = []
    for row in rows:
        c = row.config
        plain = row.kind == "trained" and not (set(c) - {"feature", "loss", "protocol",
                                                         "gamma"})
        if not plain or c["loss"] not in ("focal", "softmax"):
            continue
        gamma = float(c["gamma"]) if c["loss"] == "focal" else 0.0
        value, (lo, hi) = pooled_interval(runs[row.label], n_resamples=n_resamples,
                                          seed=seed)["ua"]
        points.append({"gamma": gamma, "loss": c["loss"], "UA %": 100 * value,
                       "low": 100 * lo, "high": 100 * hi})
    if not points:
        raise SerlibError("no plain focal or softmax row in the study: nothing to plot "
                          "against gamma")
    return pd.DataFrame(points).sort_values("gamma").reset_index(drop=True)


def plot_gamma_curve(curve: pd.DataFrame, *, title: str, ax=None):
    """UA against gamma with its intervals (error bars)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    err = np.vstack([curve["UA %"] - curve["low"], curve["high"] - curve["UA %"]])
    ax.errorbar(curve["gamma"], curve["UA %"], yerr=err, marker="o", capsize=4)
    ax.set(title=title, xlabel="gamma (0 = softmax / cross-entropy)", ylabel="pooled UA %")
    return ax


def paper_minority_shift() -> dict[str, float]:
    """The paper's recall change (points) from Table 2 (softmax) to Table 3 (focal)."""
    return {c: float(paper.TABLE3.loc[c, c] - paper.TABLE2.loc[c, c]) for c in PAPER_CLASSES}


def minority_shift_table(rows: list[StudyRow], runs: dict[str, list[Run]], *,
                         minority: tuple[str, ...] = MINORITY) -> pd.DataFrame:
    """How each row moves every class's pooled recall (points, row minus its reference), with
    the paper's Table 2 -> 3 shift (IEMOCAP) as the first row and the test clips behind the
    recall of each ``minority`` class (this build's, :mod:`serlib.corpus_facts`)."""
    by_label = {r.label: r for r in rows}
    shift = paper_minority_shift()
    column = f"test clips ({' / '.join(SHORT_NAMES[c] for c in minority)})"
    index = [PAPER_CLASSES.index(c) for c in minority]
    table = [{"remedy": "paper (IEMOCAP): focal vs softmax (Tables 2 -> 3)",
              **{f"Δ {SHORT_NAMES[c]}": round(shift[c], 1) for c in PAPER_CLASSES},
              column: "—"}]
    for label, row in by_label.items():
        if row.compare_with is None:
            continue
        r1, n = _pooled_recall(runs[label])
        r0, _ = _pooled_recall(runs[row.compare_with])
        n_runs = len(runs[label])
        table.append({"remedy": label,
                      **{f"Δ {SHORT_NAMES[c]}": round(100 * (a - b), 1)
                         for c, a, b in zip(PAPER_CLASSES, r1, r0, strict=True)},
                      column: " / ".join(str(int(n[k]) // n_runs) for k in index)})
    return pd.DataFrame(table).set_index("remedy")


# ----------------------------------------------------------------------------- sentences
_VERB = {"agrees": "agrees with", "contradicts": "contradicts",
         "inconclusive": "is inconclusive on"}


def verdict_sentence(label: str, comparison: Comparison, verdicts: dict | None = None, *,
                     claim: str, alpha: float, direction: int = 1) -> str:
    """One sentence: the claim, the effect tested on UA and WA with its ``1 - 2 alpha``
    interval, one-sided p and minimum detectable effect, the verdict. (The pooled difference
    and its speaker bootstrap, :attr:`serlib.stats.MetricTest.bootstrap_ci`, are descriptive
    and left out: one interval per verdict.)

    ``verdicts`` (from :func:`serlib.stats.verdict`) is optional; when given it must be the
    one for ``direction`` and ``alpha`` (a mismatch raises: the words would not follow the
    numbers).
    """
    c = comparison
    words = verdict(c, direction=direction, alpha=alpha)
    if verdicts is not None and verdicts != words:
        raise SerlibError(f"verdicts {verdicts} were not computed with direction={direction} "
                          f"and alpha={alpha:g} ({words})")
    if words["ua"] == words["wa"]:
        head = f"{_VERB[words['ua']]} the claim that {claim}"
    else:   # e.g. "on the claim that X: inconclusive on UA, agrees on WA"
        head = f"on the claim that {claim}: {words['ua']} on UA, {words['wa']} on WA"
    parts = []
    for m in ("ua", "wa"):
        inf = infer(c.metric(m), direction=direction, alpha=alpha)
        parts.append(f"{m.upper()} {_diff(inf)} points (one-sided {_p_clause(inf.p)}, "
                     f"{inf.verdict}; detectable at 80 % power: {_mde(inf)})")
    level = round(100 * (1 - 2 * alpha))
    unit = (f"mean of {c.n} paired fold differences ({len(c.seeds)} seed(s) x folds), "
            "corrected resampled t-test" if c.paired_by == "fold"
            else f"mean of {c.n} paired speaker differences, paired t-test over speakers")
    return (f"**{label}** {head}: {parts[0]}, {parts[1]}; {unit}, "
            f"one-sided at alpha = {alpha:g} with {level} % intervals.")


# ----------------------------------------------------------------------------- recipes
def recipe_comparison(reference: Run | list[Run] | None, beside: dict[str, Run | list[Run]], *,
                      alpha: float = 0.05,
                      n_resamples: int = 1000, seed: int = 0,
                      labels: dict[str, str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The paper's recipe, the strong recipe, the fused runs and the measured baselines side
    by side.

    Parameters
    ----------
    reference : Run, list of Run (one per seed) or None
        The paper's recipe on this build's corpus (``mfcc_focal``).
    beside : dict of str to Run or list of Run
        :func:`serlib.results.beside_runs`: the strong recipe, the fused runs and the
        baselines, by folder (``seeds=True``: every seed, paired seed by seed).
    labels : dict of str to str, optional
        Row names by folder (default: the folder names).

    Returns
    -------
    (pd.DataFrame, list of str)
        One row per run (WA, UA as mean ± std over folds, macro-F1, in %), and markdown bullet
        sentences: each run against the paper's recipe (paired over the same utterances, or
        "not paired" with the reason when the folds differ), the strong recipe against each
        baseline, each fused run against each of the two runs it fuses (where shown), a note
        on each strong-recipe run narrower or shorter than the recipe
        (:data:`serlib.config.RECIPES`), and which run has the highest UA.
    """
    labels = labels or {}
    named = ([("paper recipe (mfcc_focal)", reference)] if reference is not None else []) + [
        (labels.get(folder, folder), run) for folder, run in beside.items()]
    rows, sentences = [], []
    for name, run in named:
        ours = pooled_fold_summary(run)
        rows.append({"run": name, "WA %": ours["WA"], "UA %": ours["UA"],
                     "macro-F1 %": round(100 * float(_fold_values(_listed(run),
                                                                  "macro_f1").mean()), 1),
                     "seeds x folds": ours["seeds x folds"]})

    def paired(a, b, name: str, claim: str) -> str:
        try:
            comparison = compare_runs(a, b, n_resamples=n_resamples, seed=seed)
        except SerlibError as error:      # folds differ: never paired
            reason = str(error)
            for run in (*_listed(a), *_listed(b)):   # the folder names, not the build's paths
                reason = reason.replace(str(run.path), run.path.name)
            return f"- **{name}** is not paired: {reason}"
        v = verdict(comparison, direction=1, alpha=alpha)
        return "- " + verdict_sentence(name, comparison, v, claim=claim, alpha=alpha)

    for folder, run in beside.items():
        if reference is not None:
            sentences.append(paired(reference, run, labels.get(folder, folder),
                                    "it beats the paper's recipe"))
    strong = {f: r for f, r in beside.items() if f not in BASELINE_LABELS and not is_fusion(f)}
    baselines = {f: r for f, r in beside.items() if f in BASELINE_LABELS}
    for sf, srun in strong.items():
        for bf, brun in baselines.items():
            sentences.append(paired(brun, srun, f"{labels.get(sf, sf)} against "
                                    f"{labels.get(bf, bf)}", "it beats the baseline"))
    for ff, frun in beside.items():       # a fused run against each run it was made of
        if not is_fusion(ff):
            continue
        for source, claim in zip(fusion_sources(frun), ("it beats the deep run it fuses",
                                                        "it beats the baseline it fuses"),
                                 strict=True):
            if source in beside:
                sentences.append(paired(beside[source], frun, f"{labels.get(ff, ff)} against "
                                        f"{labels.get(source, source)}", claim))
    recipe = RECIPES["strong"]
    for folder, run in strong.items():
        width, epochs = _listed(run)[0].summary.get("width"), _listed(run)[0].summary.get(
            "epochs")
        if (width, epochs) != (recipe["width"], recipe["epochs"]):
            sentences.append(
                f"- **{labels.get(folder, folder)}** ran at width {width} for {epochs} epochs, "
                f"not the recipe's {recipe['width']} and {recipe['epochs']}: its row shows "
                "the recipe's pipeline at a smaller size, not the recipe's accuracy.")
    if rows:
        def mean_ua(item):
            return float(_fold_values(_listed(item[1]), "ua").mean())

        best = max(named, key=mean_ua)
        sentences.append(f"- Highest mean UA over seeds x folds here: **{best[0]}** "
                         f"({100 * mean_ua(best):.1f} %); whether that lead is "
                         "more than chance is what the paired tests above say.")
    table = pd.DataFrame(rows, columns=["run", "WA %", "UA %", "macro-F1 %", "seeds x folds"]
                         ).set_index("run")
    return table, sentences


__all__ = [
    "best_other_remedy",
    "compare_rows",
    "gamma_curve",
    "inference_columns",
    "inference_note",
    "verdict_phrase",
    "leakage_table",
    "load_study",
    "minority_shift_table",
    "paper_minority_shift",
    "per_speaker_table",
    "plot_gamma_curve",
    "plot_per_speaker",
    "recipe_comparison",
    "remedy_table",
    "speaker_genders",
    "verdict_sentence",
]
