"""Any corpus as a manifest CSV: ``path,label,speaker`` (optional ``session``, ``gender``)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from serlib._io import read_text_csv
from serlib.corpora.iemocap import COLUMNS, as_corpus_table
from serlib.errors import SerlibError
from serlib.features.audio import audio_info, display_name

REQUIRED_COLUMNS = ("path", "label", "speaker")


def load_manifest(csv_path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV into the same table as :func:`serlib.corpora.load_iemocap`.

    Parameters
    ----------
    csv_path : path
        CSV with columns ``path`` (relative to the CSV's folder, or absolute), ``label`` (the
        emotion: neutral, happiness, sadness, anger or any other name), ``speaker``, and
        optionally ``session`` (integer) and ``gender`` (F/M).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`serlib.corpora.iemocap.COLUMNS`. ``utterance_id`` is the file's stem,
        ``improvised`` is True and ``n_agree`` is missing (no agreement filter applies),
        ``duration_s`` comes from the wav header, and ``corpus`` is ``"manifest:<folder>"``.
    """
    csv_path = Path(csv_path).expanduser()
    # every cell a string: a file null.wav or a speaker NA is not a missing value
    manifest = read_text_csv(csv_path, what="manifest CSV")
    # a header written "path, label, speaker" names the columns without the spaces
    manifest.columns = [str(c).strip() for c in manifest.columns]
    absent = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if absent:
        raise SerlibError(
            f"{csv_path}: missing column(s) {', '.join(absent)} "
            f"(a manifest needs {', '.join(REQUIRED_COLUMNS)}; optional: session, gender)"
        )
    if manifest.empty:
        raise SerlibError(f"{csv_path}: the manifest has no rows")
    base = csv_path.parent
    rows = []
    for number, record in enumerate(manifest.to_dict("records"), start=2):  # line 1: header
        where = f"{csv_path}, line {number}"
        for column in REQUIRED_COLUMNS:
            if not record[column].strip():
                raise SerlibError(f"{where}: empty {column!r}")
        wav = Path(record["path"])
        wav = wav if wav.is_absolute() else base / wav
        try:
            _, _, duration = audio_info(wav)
        except SerlibError as error:   # "PATH: reason": the path said once
            reason = str(error).removeprefix(f"{display_name(wav)}: ")
            raise SerlibError(f"{where}: cannot read audio file {wav}: {reason}") from None
        session = record.get("session", "").strip()
        if session and not session.isdigit():
            raise SerlibError(f"{where}: session must be an integer, got {session!r}")
        gender = record.get("gender", "").strip().upper() or None
        if gender not in (None, "F", "M"):
            raise SerlibError(f"{where}: gender must be F, M or empty, got {record['gender']!r}")
        rows.append({
            "utterance_id": wav.stem,
            "path": str(wav.resolve()),
            "session": int(session) if session else None,
            "speaker": record["speaker"].strip(),
            "gender": gender,
            "dialog": None,
            "improvised": True,
            "label": record["label"].strip().lower(),
            "raw_label": record["label"].strip(),
            "n_agree": None,
            "duration_s": float(duration),
            "start_s": float("nan"),
            "end_s": float("nan"),
            "corpus": f"manifest:{csv_path.resolve().parent.name}",
        })
    table = as_corpus_table(pd.DataFrame(rows, columns=list(COLUMNS)))
    duplicated = table["utterance_id"][table["utterance_id"].duplicated()]
    if not duplicated.empty:
        raise SerlibError(
            f"{csv_path}: file names must be unique (they become utterance ids); repeated: "
            f"{', '.join(sorted(set(duplicated))[:5])}"
        )
    return table
