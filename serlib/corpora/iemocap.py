"""Read a real (or IEMOCAP-shaped) ``IEMOCAP_full_release`` tree into one table.

The release, as a loader meets it::

    <root>/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt
    <root>/Session{1..5}/sentences/wav/<dialog>/<utterance_id>.wav     (16 kHz, 16-bit, mono)

Each EmoEvaluation file holds one block per utterance: a tab-separated summary line whose label
is already the evaluators' majority vote (``xxx``: no majority), then categorical votes of the
external evaluators (``C-E1:``), the actors' self-evaluations (``C-F1:``/``C-M1:``) and
dimensional ratings (``A-E3:``)::

    [140.2250 - 145.6000]	Ses01F_impro05_F019	ang	[1.5000, 4.0000, 4.5000]
    C-E1:	Anger;	()
    C-E2:	Anger; Frustration;	()
    C-F1:	Anger;	()
    A-E3:	val 2; act 4; dom  4;	()
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from serlib.errors import SerlibError
from serlib.features.audio import audio_info

#: Folder name of the official release; the loader also accepts any folder shaped like it.
RELEASE_NAME = "IEMOCAP_full_release"
#: Marker file that :mod:`serlib.corpora.synthetic` writes at the root of a generated tree.
SYNTHETIC_MARKER = "serlib_synthetic.json"

#: IEMOCAP's label codes and the paper's class names for the four it uses.
CODE_TO_CLASS = {"neu": "neutral", "hap": "happiness", "sad": "sadness", "ang": "anger"}
LABEL_CODES = ("neu", "hap", "sad", "ang", "exc", "fru", "sur", "fea", "dis", "oth", "xxx")

#: Vote words of the evaluator lines, lower-cased, mapped to label codes.
VOTE_WORDS = {
    "neutral": "neu", "neutral state": "neu",
    "happiness": "hap", "happy": "hap",
    "sadness": "sad", "sad": "sad",
    "anger": "ang", "angry": "ang",
    "excited": "exc", "excitement": "exc",
    "frustration": "fru", "frustrated": "fru",
    "surprise": "sur", "surprised": "sur",
    "fear": "fea", "fearful": "fea",
    "disgust": "dis", "disgusted": "dis",
    "other": "oth",
}

# [140.2250 - 145.6000]<TAB>Ses01F_impro05_F019<TAB>ang<TAB>[1.5000, 4.0000, 4.5000]
SUMMARY_LINE = re.compile(
    r"^\[(?P<start>\d+(?:\.\d+)?)\s*-\s*(?P<end>\d+(?:\.\d+)?)\]\s+"
    r"(?P<utterance_id>\S+)\s+(?P<label>[a-z]{3})\s+"
    r"\[(?P<valence>[-\d.]+),\s*(?P<activation>[-\d.]+),\s*(?P<dominance>[-\d.]+)\]\s*$"
)
# C-E1:<TAB>Anger; Frustration;<TAB>(comment)   (E: external evaluator; F/M: the actor)
CATEGORICAL_LINE = re.compile(
    r"^C-(?P<evaluator>(?P<kind>[EFM])\d+):\s*(?P<votes>[^\t(]*)(?P<comment>.*)$"
)
# A-E3:<TAB>val 2; act 4; dom  4;<TAB>()
DIMENSIONAL_LINE = re.compile(r"^A-(?P<evaluator>[EFM]\d+):\s*val\s*(?P<val>[\d.]+);")
# Ses<SS><F|M>_<impro|script><NN>[a|b][_<k>[b]]_<F|M><NNN>; the speaker is the LAST letter.
UTTERANCE_ID = re.compile(
    r"^(?P<dialog>Ses(?P<session>0[1-5])(?P<dialog_gender>[FM])_"
    r"(?P<kind>impro|script)(?P<number>\d{2})(?P<variant>[ab])?"
    r"(?:_(?P<part>\d+)(?P<part_variant>[ab])?)?)"
    r"_(?P<speaker_gender>[FM])(?P<turn>\d{3})$"
)

#: Columns of every corpus table (IEMOCAP and manifest alike), in order.
COLUMNS = (
    "utterance_id", "path", "session", "speaker", "gender", "dialog", "improvised", "label",
    "raw_label", "n_agree", "duration_s", "start_s", "end_s", "corpus",
)


@dataclass
class UtteranceId:
    """The parts of an IEMOCAP utterance id."""

    dialog: str
    session: int
    speaker: str  # e.g. "Ses01M": session + the gender letter of the LAST part
    gender: str
    improvised: bool


def parse_utterance_id(utterance_id: str) -> UtteranceId:
    """Split an IEMOCAP utterance id into dialog, session, speaker and kind.

    >>> parse_utterance_id("Ses01F_impro04_M011").speaker
    'Ses01M'
    >>> parse_utterance_id("Ses05M_script01_1b_F003").dialog
    'Ses05M_script01_1b'
    """
    match = UTTERANCE_ID.match(utterance_id)
    if match is None:
        raise SerlibError(
            f"not an IEMOCAP utterance id: {utterance_id!r} "
            "(expected Ses<SS><F|M>_<impro|script><NN>[a|b][_<k>[b]]_<F|M><NNN>)"
        )
    session = int(match["session"])
    gender = match["speaker_gender"]
    return UtteranceId(
        dialog=match["dialog"],
        session=session,
        speaker=f"Ses{session:02d}{gender}",
        gender=gender,
        improvised=match["kind"] == "impro",
    )


def normalise_vote(word: str) -> str | None:
    """Map one vote word (``"Neutral state"``, ``"Other:annoyed"``) to a label code, or None."""
    word = word.strip().lower()
    if word.startswith("other"):
        return "oth"
    return VOTE_WORDS.get(word)


@dataclass
class EvaluationFile:
    """What one EmoEvaluation file says, before the wav files are looked at."""

    rows: list[dict] = field(default_factory=list)
    unknown_votes: Counter = field(default_factory=Counter)
    #: where each unknown vote word was first seen: "<file>, line <n>"
    unknown_first_seen: dict[str, str] = field(default_factory=dict)


def parse_evaluation_file(path: str | os.PathLike) -> EvaluationFile:
    """Parse one ``EmoEvaluation/<dialog>.txt`` file.

    Returns one dict per utterance with utterance_id, raw_label, start_s, end_s, the external
    evaluators' votes (list of sets of label codes) and n_agree (how many external evaluators'
    votes include the majority label). Malformed summary lines raise :class:`SerlibError`
    naming the file and the line number.
    """
    path = Path(path)
    result = EvaluationFile()
    current: dict | None = None
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise SerlibError(f"{path}: cannot read: {error}") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("%"):
            continue
        if line.startswith("["):
            match = SUMMARY_LINE.match(line.strip())
            if match is None:
                raise SerlibError(
                    f"{path}, line {number}: malformed summary line {line.strip()!r} (expected "
                    "'[start - end]<TAB>utterance_id<TAB>label<TAB>[val, act, dom]')"
                )
            if match["label"] not in LABEL_CODES:
                raise SerlibError(
                    f"{path}, line {number}: unknown label {match['label']!r} "
                    f"(expected one of {', '.join(LABEL_CODES)})"
                )
            current = {
                "utterance_id": match["utterance_id"],
                "raw_label": match["label"],
                "start_s": float(match["start"]),
                "end_s": float(match["end"]),
                "votes": [],
                "line": number,
            }
            result.rows.append(current)
            continue
        match = CATEGORICAL_LINE.match(line)
        if match is not None and current is not None and match["kind"] == "E":
            codes = set()
            for word in filter(None, (w.strip() for w in match["votes"].split(";"))):
                code = normalise_vote(word)
                if code is None:
                    result.unknown_votes[word] += 1
                    result.unknown_first_seen.setdefault(word, f"{path}, line {number}")
                else:
                    codes.add(code)
            current["votes"].append(codes)
        # self-evaluations (C-F1/C-M1), dimensional lines and anything else carry no vote
    for row in result.rows:
        row["n_agree"] = sum(row["raw_label"] in votes for votes in row.pop("votes"))
    return result


def find_release_root(root: str | os.PathLike) -> Path:
    """The folder holding ``Session1..5``: ``root`` itself or its ``IEMOCAP_full_release``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SerlibError(f"{root}: IEMOCAP root does not exist or is not a folder")
    for candidate in (root, root / RELEASE_NAME):
        if any(candidate.glob("Session*/dialog/EmoEvaluation/*.txt")):
            return candidate
    raise SerlibError(
        f"{root}: not an IEMOCAP tree: expected Session<N>/dialog/EmoEvaluation/<dialog>.txt "
        f"and Session<N>/sentences/wav/<dialog>/<utterance>.wav below it (or below "
        f"{root / RELEASE_NAME})"
    )


def load_iemocap(root: str | os.PathLike, *, progress: bool = False) -> pd.DataFrame:
    """Every utterance of an IEMOCAP tree, one row each.

    Parameters
    ----------
    root : path
        The release folder (``IEMOCAP_full_release``, any name) or its parent.
    progress : bool
        Show a progress bar over the evaluation files.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`: ``label`` is the paper's class name for neu/hap/sad/ang and the
        raw code otherwise; ``duration_s`` comes from the wav header (no audio is decoded);
        ``corpus`` is ``"generated"`` for a tree written by :mod:`serlib.corpora.synthetic`, else
        ``"iemocap"``. Utterances whose wav is missing are left out with a warning listing them;
        if every wav is missing, :class:`SerlibError` is raised.
    """
    from tqdm import tqdm

    release = find_release_root(root)
    corpus = "generated" if (release / SYNTHETIC_MARKER).exists() else "iemocap"
    files = sorted(
        p for p in release.glob("Session*/dialog/EmoEvaluation/*.txt")
        if not p.name.startswith(".")  # macOS resource forks ("._Ses01F_impro01.txt")
    )
    rows, missing = [], []
    unknown: Counter = Counter()
    first_seen: dict[str, str] = {}
    for evaluation in tqdm(files, desc="EmoEvaluation", unit="file", disable=not progress):
        parsed = parse_evaluation_file(evaluation)
        unknown.update(parsed.unknown_votes)
        for word, where in parsed.unknown_first_seen.items():
            first_seen.setdefault(word, where)
        session_dir = evaluation.parents[2]
        for row in parsed.rows:
            try:
                uid = parse_utterance_id(row["utterance_id"])
            except SerlibError as error:
                raise SerlibError(f"{evaluation}, line {row['line']}: {error}") from None
            wav = session_dir / "sentences" / "wav" / uid.dialog / f"{row['utterance_id']}.wav"
            if not wav.exists():
                missing.append(str(wav))
                continue
            _, _, duration = audio_info(wav)   # a FIFO, unreadable file: named
            rows.append({
                "utterance_id": row["utterance_id"],
                "path": str(wav.resolve()),
                "session": uid.session,
                "speaker": uid.speaker,
                "gender": uid.gender,
                "dialog": uid.dialog,
                "improvised": uid.improvised,
                "label": CODE_TO_CLASS.get(row["raw_label"], row["raw_label"]),
                "raw_label": row["raw_label"],
                "n_agree": row["n_agree"],
                "duration_s": float(duration),
                "start_s": row["start_s"],
                "end_s": row["end_s"],
                "corpus": corpus,
            })
    if unknown:
        listed = "\n  ".join(f"{word!r} x{n} (first in {first_seen[word]})"
                             for word, n in unknown.most_common())
        warnings.warn(f"{release}: {sum(unknown.values())} unknown vote words (not counted as "
                      f"votes):\n  {listed}", stacklevel=2)
    if missing and not rows:
        raise SerlibError(
            f"{release}: none of the {len(missing)} utterances has its wav file "
            f"(first expected: {missing[0]})"
        )
    if missing:
        shown = "\n  ".join(missing[:20]) + ("\n  ..." if len(missing) > 20 else "")
        warnings.warn(
            f"{release}: {len(missing)} utterances have no readable wav file, left out:\n  {shown}",
            stacklevel=2,
        )
    return as_corpus_table(pd.DataFrame(rows, columns=list(COLUMNS)))


def as_corpus_table(table: pd.DataFrame) -> pd.DataFrame:
    """Give a corpus table the shared column order and dtypes (nullable ints for gaps)."""
    table = table.reindex(columns=list(COLUMNS))
    table["session"] = table["session"].astype("Int64")
    table["n_agree"] = table["n_agree"].astype("Int64")
    table["improvised"] = table["improvised"].astype(bool)
    for column in ("duration_s", "start_s", "end_s"):
        table[column] = table[column].astype(float)
    for column in ("utterance_id", "path", "speaker", "label", "raw_label", "corpus"):
        table[column] = table[column].astype(str)
    return table.reset_index(drop=True)


def read_marker(root: str | os.PathLike) -> dict | None:
    """The generator's marker of a generated tree (seed, size, version), or None."""
    marker = find_release_root(root) / SYNTHETIC_MARKER
    return json.loads(marker.read_text()) if marker.exists() else None
