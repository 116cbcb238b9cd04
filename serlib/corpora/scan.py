"""Find a corpus's audio files beneath a folder, by a file-name scheme.

The public corpora (:mod:`serlib.corpora.public`) encode emotion and speaker in their file
names. :func:`scan_corpus` walks the folder a user points at (the one the download unpacks to,
or any folder below it), parses every audio file's NAME (never the whole path) with the
corpus's regex, and sorts out what is not part of the corpus:

- hidden files and macOS AppleDouble files (``.DS_Store``, ``._03-01-01-01-01-01-01.wav``) and
  anything inside a hidden folder or ``__MACOSX``: skipped and counted;
- files that are not audio of the corpus (``.txt``, ``.csv``, ``.mp4``, ``.mp3``, ...): skipped
  and counted (the corpora ship their audio as ``.wav``);
- a ``.wav`` whose name does not fit the scheme: an error naming the file and the scheme.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from serlib.corpora.iemocap import COLUMNS, as_corpus_table
from serlib.errors import SerlibError
from serlib.features.audio import audio_info

#: The suffix of the corpora's audio files (compared case-insensitively).
AUDIO_SUFFIX = ".wav"
HIDDEN = "hidden or AppleDouble files"
NOT_AUDIO = f"files that are not {AUDIO_SUFFIX} audio"
EMPTY = "empty audio files (no samples)"


@dataclass(frozen=True)
class Scheme:
    """How one corpus names its files.

    Attributes
    ----------
    corpus : str
        The corpus's name, as the ``corpus`` column holds it (``"emodb"``).
    pattern : re.Pattern
        Full match of a file NAME (with suffix), with named groups.
    description : str
        The scheme in words for error messages, e.g. ``"SSTTTEV.wav (03a01Wa.wav)"``.
    key : callable, optional
        ``key(path, match)``: what must be unique among the corpus's files (two files with one
        key are two copies of the corpus); default: the file name, case-insensitively.
    """

    corpus: str
    pattern: re.Pattern
    description: str
    key: Callable[[Path, re.Match], str] | None = None


@dataclass
class Scan:
    """What :func:`scan_corpus` found: the corpus's files and what it skipped."""

    matches: list[tuple[Path, re.Match]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def _is_hidden(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def scan_corpus(root: str | os.PathLike, scheme: Scheme) -> tuple[Path, Scan]:
    """Every audio file beneath ``root`` whose name fits ``scheme``.

    Parameters
    ----------
    root : path
        The corpus folder as unpacked, or any folder below it that holds its audio.
    scheme : Scheme

    Returns
    -------
    (root, Scan)
        The resolved root, the (path, match) pairs sorted by path, and the skip counts.

    Raises
    ------
    SerlibError
        If ``root`` is not a folder, if a ``.wav`` name does not fit the scheme (the message
        names the first few such files and the scheme), if two files share a name (two copies
        of the corpus below ``root``), or if no file of the scheme is found.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SerlibError(f"{root}: {scheme.corpus} data root does not exist or is not a folder")
    root = root.resolve()
    scan = Scan()
    misnamed: list[Path] = []
    seen: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        if _is_hidden(path, root):
            scan.skipped[HIDDEN] += 1
            continue
        if path.suffix.lower() != AUDIO_SUFFIX:
            scan.skipped[NOT_AUDIO] += 1
            continue
        match = scheme.pattern.fullmatch(path.name)
        if match is None:
            misnamed.append(path)
            continue
        key = scheme.key(path, match) if scheme.key else path.name.lower()
        if key in seen:
            raise SerlibError(
                f"{path}: a second file for {key} (the first is {seen[key]}): {root} "
                f"holds two copies of {scheme.corpus}; point the data root at one of them"
            )
        seen[key] = path
        scan.matches.append((path, match))
    if misnamed:
        shown = "\n  ".join(str(p) for p in misnamed[:5])
        more = f"\n  ... and {len(misnamed) - 5} more" if len(misnamed) > 5 else ""
        raise SerlibError(
            f"{len(misnamed)} file(s) under {root} do not fit the {scheme.corpus} naming "
            f"scheme {scheme.description}:\n  {shown}{more}"
        )
    if not scan.matches:
        skipped = ", ".join(f"{n} {why}" for why, n in scan.skipped.items()) or "nothing else"
        raise SerlibError(
            f"{root}: no {scheme.corpus} audio files ({scheme.description}) in it or below it "
            f"(found {skipped})"
        )
    return root, scan


def build_table(
    root: Path,
    scan: Scan,
    row: Callable[[Path, re.Match], dict | str],
    *,
    corpus: str,
    progress: bool = False,
) -> pd.DataFrame:
    """The corpus table of a scan: one row per file that ``row`` keeps.

    Parameters
    ----------
    root : Path
        The scanned root (kept in ``table.attrs["root"]``).
    scan : Scan
    row : callable
        ``row(path, match)`` returns the file's fields (utterance_id, speaker, gender, label,
        raw_label; session optional) or a string: the reason it is skipped (counted).
    corpus : str
        Value of the ``corpus`` column.
    progress : bool
        Show a progress bar over the files (reading each wav header).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`serlib.corpora.iemocap.COLUMNS`; ``table.attrs["skipped"]`` maps each
        skip reason to its count.
    """
    from tqdm import tqdm

    skipped = Counter(scan.skipped)
    rows = []
    for path, match in tqdm(scan.matches, desc=corpus, unit="file", disable=not progress):
        fields = row(path, match)
        if isinstance(fields, str):
            skipped[fields] += 1
            continue
        frames, _, duration = audio_info(path)   # names a FIFO, an unreadable file
        if frames == 0:
            skipped[EMPTY] += 1
            continue
        rows.append({
            "session": None, "dialog": None,
            # acted corpora have no improvised/scripted split: True, as for a manifest, so
            # that the paper's improvised-dialog filter keeps every clip
            "improvised": True, "n_agree": None,
            **fields,
            "path": str(path),
            "duration_s": float(duration),
            "start_s": float("nan"), "end_s": float("nan"),
            "corpus": corpus,
        })
    if not rows:
        raise SerlibError(f"{root}: every {corpus} file was skipped ({dict(skipped)})")
    table = as_corpus_table(pd.DataFrame(rows, columns=list(COLUMNS)))
    table.attrs["root"] = str(root)
    table.attrs["skipped"] = dict(skipped)
    return table
