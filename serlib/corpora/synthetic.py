"""The built-in corpus: a generated, IEMOCAP-shaped tree of speech-like audio.

``generate_corpus(out_dir)`` writes ``out_dir/IEMOCAP_full_release`` with the release's folders
and EmoEvaluation line formats (summary lines, external evaluators' categorical votes that
sometimes disagree, the actors' self-evaluations, dimensional ratings), improvised and scripted
dialogs, five sessions of one female and one male speaker, distractor labels (exc, fru, xxx, ...)
and 16 kHz mono 16-bit wavs, so :func:`serlib.corpora.load_iemocap` reads it unchanged. The
audio comes from :func:`serlib.corpora.speech.synthesize_speech`.

The paper's selection of the generated tree has the paper's class shares (48.8 / 12.3 / 26.9 /
12.0 %) for the ``tiny`` and ``small`` sizes, and exactly the real IEMOCAP counts for the
``iemocap`` size (:data:`IEMOCAP_SELECTED_PER_SPEAKER`, :data:`IEMOCAP_SELECTED_PER_CLASS`).
For ``iemocap`` the per-speaker totals and the per-class totals are exact; the cells of the
speaker x class table are a proportional split of those margins (:func:`selected_counts`).
Durations are log-normal with a median of 3.5 s; about a fifth are longer than 6 s.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from serlib._io import atomic_directory
from serlib.corpora.iemocap import RELEASE_NAME, SYNTHETIC_MARKER
from serlib.corpora.speech import synthesize_speech
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES

__all__ = [
    "IEMOCAP_SELECTED_PER_CLASS",
    "IEMOCAP_SELECTED_PER_SPEAKER",
    "PAPER_SHARES",
    "SIZES",
    "generate_corpus",
    "selected_counts",
    "synthesize_speech",
]

SAMPLE_RATE = 16000
SPEAKERS = tuple(f"Ses{s:02d}{g}" for s in range(1, 6) for g in "FM")

#: The real counts of the paper's selection of IEMOCAP (improvised, 4 classes, exc not merged,
#: majority label, at least 2 evaluators agreeing): GUIDE.md section 2.
IEMOCAP_SELECTED_PER_SPEAKER = {
    "Ses01F": 217, "Ses01M": 205, "Ses02F": 185, "Ses02M": 208, "Ses03F": 264,
    "Ses03M": 274, "Ses04F": 149, "Ses04M": 221, "Ses05F": 298, "Ses05M": 259,
}
IEMOCAP_SELECTED_PER_CLASS = {"neutral": 1099, "happiness": 284, "sadness": 608, "anger": 289}
#: The paper's class shares (%) of its selection.
PAPER_SHARES = {"neutral": 48.8, "happiness": 12.3, "sadness": 26.9, "anger": 12.0}
#: Selected utterances per size (``iemocap``: the real 2,280).
SIZES = {"tiny": 80, "small": 360, "iemocap": 2280}
#: Distractor utterances (not selected by the defaults) per selected one.
DISTRACTOR_RATIO = 0.8
#: Log-normal durations: median (s), log-space spread, and bounds (s). IEMOCAP's selection has
#: median 3.49 s, 23 % longer than 6 s (ln(6 / 3.49) / 0.73 = 0.74 standard deviations).
DURATION_MEDIAN_S = 3.49
DURATION_SIGMA = 0.73
DURATION_BOUNDS_S = (0.6, 20.0)

CODE_OF = {"neutral": "neu", "happiness": "hap", "sadness": "sad", "anger": "ang"}
VOTE_WORD = {
    "neu": "Neutral", "hap": "Happiness", "sad": "Sadness", "ang": "Anger", "exc": "Excited",
    "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "dis": "Disgust", "oth": "Other",
}
# prosody used for the audio of labels outside the four classes
AUDIO_EMOTION = {
    "neu": "neutral", "hap": "happiness", "sad": "sadness", "ang": "anger", "exc": "happiness",
    "fru": "anger", "sur": "happiness", "fea": "sadness", "dis": "anger", "oth": "neutral",
    "xxx": "neutral",
}
# dimensional ratings (valence, activation, dominance) around which evaluators rate a label
DIMENSIONS = {
    "neu": (3.0, 2.5, 2.5), "hap": (4.0, 3.2, 3.0), "sad": (2.0, 2.0, 2.0),
    "ang": (1.8, 4.0, 4.0), "exc": (4.0, 3.8, 3.2), "fru": (2.0, 3.3, 3.0),
}


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum exactly to ``total``."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def selected_counts(size: str) -> pd.DataFrame:
    """Selected utterances per speaker (rows) and class (columns) for a corpus size.

    Row sums follow the real per-speaker counts (scaled for ``tiny`` and ``small``); column sums
    are the real per-class counts for ``iemocap`` and the paper's shares otherwise.
    """
    if size not in SIZES:
        raise SerlibError(f"size={size!r} must be one of {', '.join(SIZES)}")
    total = SIZES[size]
    speaker_weights = np.array([IEMOCAP_SELECTED_PER_SPEAKER[s] for s in SPEAKERS], float)
    if size == "iemocap":
        rows = speaker_weights.astype(int)
        cols = np.array([IEMOCAP_SELECTED_PER_CLASS[c] for c in PAPER_CLASSES])
    else:
        rows = _largest_remainder(total, speaker_weights)
        cols = _largest_remainder(total, np.array([PAPER_SHARES[c] for c in PAPER_CLASSES]))
    # integer matrix with these margins: floor of the proportional table, then hand out the
    # remaining units cell by cell in order of the largest fractional parts
    exact = np.outer(rows, cols) / total
    table = np.floor(exact).astype(int)
    row_left = rows - table.sum(axis=1)
    col_left = cols - table.sum(axis=0)
    for flat in np.argsort(-(exact - table), axis=None, kind="stable"):
        i, j = divmod(int(flat), len(cols))
        if row_left[i] > 0 and col_left[j] > 0:
            table[i, j] += 1
            row_left[i] -= 1
            col_left[j] -= 1
    assert not row_left.any() and not col_left.any()
    return pd.DataFrame(table, index=list(SPEAKERS), columns=list(PAPER_CLASSES))


def _plan(size: str, rng: np.random.Generator) -> pd.DataFrame:
    """Every utterance to write: speaker, label code, improvised, n_agree target, duration."""
    counts = selected_counts(size)
    rows = []
    for speaker in SPEAKERS:
        for name in PAPER_CLASSES:
            rows += [(speaker, CODE_OF[name], True, None)] * int(counts.loc[speaker, name])
        n_distractors = round(DISTRACTOR_RATIO * counts.loc[speaker].sum())
        for _ in range(n_distractors):
            kind = rng.random()
            if kind < 0.4:  # scripted dialog, any label
                code = rng.choice(["neu", "hap", "sad", "ang", "exc", "fru", "xxx"])
                rows.append((speaker, str(code), False, None))
            elif kind < 0.85:  # improvised, a label outside the four classes
                code = rng.choice(["exc", "fru", "xxx", "sur", "fea", "dis", "oth"],
                                  p=[0.3, 0.3, 0.25, 0.05, 0.04, 0.03, 0.03])
                rows.append((speaker, str(code), True, None))
            else:  # improvised, four classes, but only one evaluator agrees
                code = rng.choice(["neu", "hap", "sad", "ang"])
                rows.append((speaker, str(code), True, 1))
    plan = pd.DataFrame(rows, columns=["speaker", "code", "improvised", "n_agree"])
    # durations: stratified draws, separately for the selected utterances and the distractors,
    # so that even a small selection has IEMOCAP's median and share of long clips
    selected = plan["n_agree"].isna() & plan["improvised"] & plan["code"].isin(CODE_OF.values())
    plan["duration_s"] = 0.0
    for mask in (selected, ~selected):
        plan.loc[mask, "duration_s"] = _durations(int(mask.sum()), rng)
    # shuffle so that dialogs mix classes and distractors
    return plan.sample(frac=1.0, random_state=rng.integers(2**31)).reset_index(drop=True)


def _durations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` log-normal durations (s) between the bounds, drawn one per quantile stratum.

    Median 3.49 s and 23 % longer than 6 s, as IEMOCAP's selection (GUIDE.md section 2).
    """
    from scipy.stats import norm

    low, high = norm.cdf(np.log(np.array(DURATION_BOUNDS_S) / DURATION_MEDIAN_S)
                         / DURATION_SIGMA)
    p = (rng.permutation(n) + rng.uniform(0, 1, n)) / max(n, 1)
    z = norm.ppf(low + p * (high - low))
    return DURATION_MEDIAN_S * np.exp(DURATION_SIGMA * z)


def _dialogs(session: int, improvised: bool) -> list[str]:
    """Dialog names of a session (the prefix letter is the actor who starts the dialog)."""
    names = []
    for gender in "FM":
        if improvised:
            for k in range(1, 9):
                variants = ["a", "b"] if (session == 3 and k == 5) else [""]
                names += [f"Ses{session:02d}{gender}_impro{k:02d}{v}" for v in variants]
        else:
            for k in range(1, 4):
                parts = ["1", "2"] + (["1b"] if session == 5 and k == 1 else [])
                names += [f"Ses{session:02d}{gender}_script{k:02d}_{p}" for p in parts]
    return names


def _votes(code: str, n_agree: int | None, rng: np.random.Generator) -> list[list[str]]:
    """Vote words of the external evaluators for an utterance labelled ``code``."""
    n_evaluators = 3 if rng.random() < 0.8 else 4
    others = [c for c in VOTE_WORD if c != code]
    if code == "xxx":  # no majority: everybody votes something different
        picks = rng.choice(list(VOTE_WORD), size=n_evaluators, replace=False)
        return [[VOTE_WORD[str(p)]] for p in picks]
    agree = n_agree if n_agree is not None else int(rng.choice([2, 3], p=[0.35, 0.65]))
    agree = min(agree, n_evaluators)
    votes = []
    for k in range(n_evaluators):
        if k < agree:
            words = [VOTE_WORD[code]]
            if code == "neu" and rng.random() < 0.2:
                words = ["Neutral state"]
            if rng.random() < 0.15:  # a second emotion in the same vote
                words.append(VOTE_WORD[str(rng.choice(others))])
        else:
            # a dissenting vote: never the label (so n_agree is exactly `agree`)
            word = VOTE_WORD[str(rng.choice(others))]
            words = [f"Other:{rng.choice(['annoyed', 'amused', 'bored'])}"] if word == "Other" \
                else [word]
        votes.append(words)
    order = rng.permutation(n_evaluators)
    return [votes[i] for i in order]


def _block(uid: str, code: str, start: float, end: float, n_agree: int | None,
           gender: str, rng: np.random.Generator) -> str:
    val, act, dom = DIMENSIONS.get(code, (3.0, 3.0, 3.0))
    dims = np.clip(np.round(np.array([val, act, dom]) + rng.normal(0, 0.4, 3)), 1, 5)
    half = np.clip(np.round(dims * 2 + rng.integers(-1, 2, 3)) / 2, 1, 5)
    lines = [f"[{start:.4f} - {end:.4f}]\t{uid}\t{code}\t"
             f"[{half[0]:.4f}, {half[1]:.4f}, {half[2]:.4f}]"]
    votes = _votes(code, n_agree, rng)
    # as in the release, evaluator numbers vary between utterances (E2, E3, E4 ...)
    evaluators = np.sort(rng.choice(np.arange(1, 7), size=len(votes), replace=False))
    for k, words in zip(evaluators, votes, strict=True):
        lines.append(f"C-E{k}:\t{'; '.join(words)};\t()")
    self_word = VOTE_WORD.get(code if code != "xxx" else "fru", "Neutral")
    comment = str(rng.choice(["", "", "", "calm", "tense", "mildly annoyed", "amused"]))
    lines.append(f"C-{gender}1:\t{self_word};\t({comment})")
    for k in evaluators:
        v, a, d = (int(x) for x in np.clip(dims + rng.integers(-1, 2, 3), 1, 5))
        lines.append(f"A-E{k}:\tval {v}; act {a}; dom  {d};\t()")
    v, a, d = (int(x) for x in dims)
    lines.append(f"A-{gender}1:\tval {v}; act {a}; dom  {d};\t()")
    return "\n".join(lines) + "\n"


def _write_wav(job: tuple[str, int, str, str, int]) -> None:
    path, n_samples, emotion, speaker, seed = job
    audio = synthesize_speech(duration_s=n_samples / SAMPLE_RATE, sample_rate=SAMPLE_RATE,
                              emotion=emotion, speaker=speaker, seed=seed)
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")


def _write_audio(jobs: list[tuple[str, int, str, str, int]], *, progress: bool) -> None:
    """Synthesise and write every wav; across processes when there are many.

    Each job carries its own seed, so the files do not depend on the number of processes.
    Workers are spawned (not forked) so that a parent with torch threads is safe.
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    n_jobs = min(os.cpu_count() or 1, 8)
    with tqdm(total=len(jobs), desc="synth", unit="utt", disable=not progress) as bar:
        if n_jobs < 2 or len(jobs) < 200:
            for job in jobs:
                _write_wav(job)
                bar.update()
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=context) as pool:
            for _ in pool.map(_write_wav, jobs, chunksize=16):
                bar.update()


def generate_corpus(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    size: str = "small",
    progress: bool = True,
) -> Path:
    """Write a generated IEMOCAP-shaped corpus and return its release root.

    Parameters
    ----------
    out_dir : path
        Parent folder; the tree goes to ``out_dir/IEMOCAP_full_release``. An existing tree
        written with the same seed and size is reused as it is.
    seed : int
        Same seed and size, byte-identical files.
    size : {"tiny", "small", "iemocap"}
        Number of utterances the paper's selection keeps: 80 (tests), 360 (default, generates
        in well under a minute), or the real 2,280 with IEMOCAP's exact per-speaker and
        per-class counts. About 0.8 distractor utterances per selected one are added
        (scripted dialogs, other labels, too little agreement).
    progress : bool
        Show a progress bar over the utterances.

    Returns
    -------
    pathlib.Path
        ``out_dir/IEMOCAP_full_release``, ready for :func:`serlib.corpora.load_iemocap`.
    """
    if size not in SIZES:
        raise SerlibError(f"size={size!r} must be one of {', '.join(SIZES)}")
    root = Path(out_dir).expanduser() / RELEASE_NAME
    marker = {"generator": "serlib.corpora.synthetic", "format": 2, "seed": int(seed),
              "size": size, "sample_rate": SAMPLE_RATE}
    if (root / SYNTHETIC_MARKER).exists():
        found = json.loads((root / SYNTHETIC_MARKER).read_text())
        if found == marker:
            return root
        differs = ", ".join(f"{key} {found.get(key)!r} (wanted {value!r})"
                            for key, value in marker.items() if found.get(key) != value)
        raise SerlibError(
            f"{root}: a generated corpus with other settings is already there ({differs}); "
            "choose another --out or delete it"
        )
    if root.exists():
        raise SerlibError(f"{root}: exists and is not a serlib-generated corpus; not touching it")

    rng = np.random.default_rng(seed)
    plan = _plan(size, rng)
    with atomic_directory(root) as tmp:
        blocks: dict[tuple[int, str], list[str]] = {}
        clock: dict[str, float] = {}
        turns: dict[tuple[str, str], int] = {}
        dialogs = {(s, imp): _dialogs(s, imp) for s in range(1, 6) for imp in (True, False)}
        jobs: list[tuple[str, int, str, str, int]] = []
        for i, row in enumerate(plan.itertuples()):
            session, gender = int(row.speaker[3:5]), row.speaker[-1]
            names = dialogs[(session, bool(row.improvised))]
            dialog = names[int(rng.integers(len(names)))]
            turn = turns.get((dialog, gender), 0)
            turns[(dialog, gender)] = turn + 1
            uid = f"{dialog}_{gender}{turn:03d}"
            start = clock.get(dialog, 0.0) + float(rng.uniform(0.3, 2.0))
            # the wav's exact length defines the duration; the transcript times round it
            n_samples = round(row.duration_s * SAMPLE_RATE)
            end = start + n_samples / SAMPLE_RATE
            clock[dialog] = end
            n_agree = None if pd.isna(row.n_agree) else int(row.n_agree)
            blocks.setdefault((session, dialog), []).append(
                _block(uid, row.code, start, end, n_agree, gender, rng))
            wav = tmp / f"Session{session}" / "sentences" / "wav" / dialog / f"{uid}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((str(wav), n_samples, AUDIO_EMOTION[row.code], row.speaker,
                         int(np.random.SeedSequence([seed, i]).generate_state(1)[0])))
        _write_audio(jobs, progress=progress)
        header = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        for (session, dialog), entries in sorted(blocks.items()):
            folder = tmp / f"Session{session}" / "dialog" / "EmoEvaluation"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{dialog}.txt").write_text(header + "\n".join(entries))
        (tmp / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return root
