"""The public emotion corpora by name, read as their authors distribute them.

Each loader reads the folder a download unpacks to (or any folder below it that holds the
audio) into the same corpus table as :func:`serlib.corpora.load_iemocap` and
:func:`serlib.corpora.load_manifest`: columns :data:`serlib.corpora.COLUMNS`, ``corpus`` the
corpus's name, ``session`` empty (none of them has sessions: the speaker-independent protocol
groups speakers into folds), ``utterance_id`` the file's stem (``DC_a01`` for SAVEE, whose
per-speaker layout repeats stems), ``raw_label`` the emotion code of the file name, ``label``
the paper's class (neutral, happiness, sadness, anger) where the corpus's emotion is one of
them, else the corpus's own emotion (``fear``, ``disgust``, ``calm``, ...), which the paper's
selection leaves out. ``table.attrs["skipped"]`` counts the files skipped, by reason.

==========  ==========================================  ==================================
corpus      file name (regex on the NAME)                speaker, gender
==========  ==========================================  ==================================
ravdess     ``03-01-EE-II-SS-RR-AA.wav``                 actor AA 01-24, odd = male
crema-d     ``AAAA_SSS_EEE_LL.wav``                      actor 1001-1091,
                                                         ``VideoDemographics.csv``
tess        ``OAF_word_emotion.wav``, ``YAF_...``        OAF, YAF: both female
savee       ``DC/a01.wav`` or ``DC_a01.wav``             DC, JE, JK, KL: all male
emodb       ``03a01Wa.wav``                              03 ... 16, the corpus's docs
emovo       ``dis-f1-b1.wav``                            f1-f3 female, m1-m3 male
==========  ==========================================  ==================================

:func:`class_mapping` gives each corpus's emotion -> class table; :func:`load_corpus` reads any
of them (and IEMOCAP) by name.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from serlib.corpora.scan import Scheme, build_table, scan_corpus
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES

# --- emotion codes: (code in the file name, emotion as the authors name it, serlib label) ----
# the label is one of the paper's four classes where the emotion is one, else its own name

MAPPINGS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "ravdess": (
        ("01", "neutral", "neutral"), ("02", "calm", "calm"), ("03", "happy", "happiness"),
        ("04", "sad", "sadness"), ("05", "angry", "anger"), ("06", "fearful", "fear"),
        ("07", "disgust", "disgust"), ("08", "surprised", "surprise"),
    ),
    "crema-d": (
        ("NEU", "neutral", "neutral"), ("HAP", "happy", "happiness"), ("SAD", "sad", "sadness"),
        ("ANG", "anger", "anger"), ("FEA", "fear", "fear"), ("DIS", "disgust", "disgust"),
    ),
    "tess": (
        ("neutral", "neutral", "neutral"), ("happy", "happiness", "happiness"),
        ("sad", "sadness", "sadness"), ("angry", "anger", "anger"), ("fear", "fear", "fear"),
        ("disgust", "disgust", "disgust"), ("ps", "pleasant surprise", "surprise"),
    ),
    "savee": (
        ("n", "neutral", "neutral"), ("h", "happiness", "happiness"),
        ("sa", "sadness", "sadness"), ("a", "anger", "anger"), ("f", "fear", "fear"),
        ("d", "disgust", "disgust"), ("su", "surprise", "surprise"),
    ),
    "emodb": (
        ("N", "neutral", "neutral"), ("F", "Freude (happiness)", "happiness"),
        ("T", "Trauer (sadness)", "sadness"), ("W", "Ärger (anger)", "anger"),
        ("A", "Angst (fear)", "fear"), ("E", "Ekel (disgust)", "disgust"),
        ("L", "Langeweile (boredom)", "boredom"),
    ),
    "emovo": (
        ("neu", "neutrale (neutral)", "neutral"), ("gio", "gioia (joy)", "happiness"),
        ("tri", "tristezza (sadness)", "sadness"), ("rab", "rabbia (anger)", "anger"),
        ("pau", "paura (fear)", "fear"), ("dis", "disgusto (disgust)", "disgust"),
        ("sor", "sorpresa (surprise)", "surprise"),
    ),
}

#: EmoDB speakers' genders, from the corpus documentation (erklaerung.txt).
EMODB_GENDERS = {"03": "M", "08": "F", "09": "F", "10": "M", "11": "M", "12": "M",
                 "13": "F", "14": "F", "15": "M", "16": "F"}
SAVEE_SPEAKERS = ("DC", "JE", "JK", "KL")  # four male speakers (the SAVEE documentation)
CREMA_D_DEMOGRAPHICS = "VideoDemographics.csv"

# --- naming schemes (full match on the file NAME) -------------------------------------------

RAVDESS = Scheme("ravdess", re.compile(
    r"(?P<modality>0[1-3])-(?P<channel>0[12])-(?P<emotion>0[1-8])-(?P<intensity>0[12])-"
    r"(?P<statement>0[12])-(?P<repetition>0[12])-(?P<actor>\d{2})\.wav", re.IGNORECASE),
    "MM-CC-EE-II-SS-RR-AA.wav (modality 01-03, channel 01-02, emotion 01-08, intensity, "
    "statement, repetition 01-02, actor 01-24; e.g. 03-01-05-02-01-01-12.wav)")
CREMA_D = Scheme("crema-d", re.compile(
    r"(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>ANG|DIS|FEA|HAP|NEU|SAD)_"
    r"(?P<level>LO|MD|HI|XX)\.wav"),
    "AAAA_SSS_EEE_LL.wav (actor 1001-1091, sentence code, emotion ANG/DIS/FEA/HAP/NEU/SAD, "
    "level LO/MD/HI/XX; e.g. 1001_DFA_ANG_XX.wav)")
TESS = Scheme("tess", re.compile(
    r"(?P<speaker>OAF|YAF)_(?P<word>[a-z]+)_(?P<emotion>neutral|happy|sad|angry|fear|disgust|ps)"
    r"\.wav", re.IGNORECASE),
    "OAF_word_emotion.wav or YAF_word_emotion.wav (emotion angry/disgust/fear/happy/neutral/ps/"
    "sad; e.g. OAF_back_angry.wav)")
SAVEE = Scheme("savee", re.compile(
    r"(?:(?P<speaker>DC|JE|JK|KL)_)?(?P<emotion>sa|su|a|d|f|h|n)(?P<number>\d{2})\.wav"),
    "DC/a01.wav (speaker folder DC/JE/JK/KL) or DC_a01.wav (emotion a/d/f/h/n/sa/su, "
    "number 01-30)",
    # DC/a01.wav and JE/a01.wav are two speakers' files, not two copies
    key=lambda path, match: f"{match['speaker'] or path.parent.name}_{match['emotion']}"
                            f"{match['number']}")
EMODB = Scheme("emodb", re.compile(
    r"(?P<speaker>\d{2})(?P<text>[ab]\d{2})(?P<emotion>[WLEAFTN])(?P<version>[a-z])\.wav"),
    "SSTTTEV.wav (speaker 03-16, text a01-b10, emotion W/L/E/A/F/T/N, version a-z; "
    "e.g. 03a01Wa.wav)")
EMOVO = Scheme("emovo", re.compile(
    r"(?P<emotion>dis|gio|neu|pau|rab|sor|tri)-(?P<speaker>[fm][1-3])-(?P<sentence>[a-z]\d{1,2})"
    r"\.wav", re.IGNORECASE),
    "EEE-SS-TT.wav (emotion dis/gio/neu/pau/rab/sor/tri, speaker f1-f3/m1-m3, sentence; "
    "e.g. dis-f1-b1.wav)")


def class_mapping(corpus: str) -> pd.DataFrame:
    """A corpus's emotions and the paper's class each becomes.

    Parameters
    ----------
    corpus : str
        One of ``ravdess``, ``crema-d``, ``tess``, ``savee``, ``emodb``, ``emovo``.

    Returns
    -------
    pandas.DataFrame
        One row per emotion code, columns ``code`` (as in the file names), ``emotion`` (as the
        corpus's authors name it), ``label`` (the corpus table's label) and ``paper class``
        (the label if it is one of the paper's four classes, else ``"(left out)"``).
    """
    key = canonical_name(corpus)
    if key not in MAPPINGS:
        raise SerlibError(f"corpus={corpus!r} has no class mapping (public corpora: "
                          f"{', '.join(MAPPINGS)})")
    frame = pd.DataFrame(MAPPINGS[key], columns=["code", "emotion", "label"])
    frame["paper class"] = frame["label"].where(frame["label"].isin(PAPER_CLASSES),
                                                "(left out)")
    return frame


def _labels(corpus: str) -> dict[str, str]:
    return {code.lower(): label for code, _, label in MAPPINGS[corpus]}


def _emotion_row(corpus: str, match: re.Match, **fields) -> dict:
    code = match["emotion"]
    return {"utterance_id": fields.pop("utterance_id"), "raw_label": code,
            "label": _labels(corpus)[code.lower()], **fields}


def load_ravdess(root: str | os.PathLike, *, keep_calm: bool = False,
                 progress: bool = False) -> pd.DataFrame:
    """RAVDESS speech: ``Actor_NN/03-01-EE-II-SS-RR-AA.wav`` (Livingstone & Russo 2018).

    Parameters
    ----------
    root : path
        ``Audio_Speech_Actors_01-24`` (the unpacked download), a folder above it, or one
        ``Actor_NN`` folder.
    keep_calm : bool
        Keep the calm clips (label ``calm``, left out by the paper's selection) instead of
        dropping them. Calm is never merged into neutral.
    progress : bool
        Show a progress bar.

    Returns
    -------
    pandas.DataFrame
        The corpus table (:data:`serlib.corpora.COLUMNS`); speaker ``"01"`` ... ``"24"``,
        odd actors male. Files of another modality than 03 (audio-only), of the song channel
        (02) and, by default, calm clips are skipped and counted in ``attrs["skipped"]``.
    """
    root, scan = scan_corpus(root, RAVDESS)

    def row(path: Path, match: re.Match) -> dict | str:
        if match["modality"] != "03":
            return "other modality (not 03, audio-only)"
        if match["channel"] != "01":
            return "song channel (vocal channel 02)"
        if match["emotion"] == "02" and not keep_calm:
            return "calm (dropped; keep_calm=True keeps it)"
        actor = int(match["actor"])
        if not 1 <= actor <= 24:
            raise SerlibError(f"{path}: actor {match['actor']} outside 01-24 in the RAVDESS "
                              f"scheme {RAVDESS.description}")
        return _emotion_row("ravdess", match, utterance_id=path.stem,
                            speaker=f"{actor:02d}", gender="M" if actor % 2 else "F")

    return build_table(root, scan, row, corpus="ravdess", progress=progress)


def _find_demographics(root: Path) -> Path | None:
    """``VideoDemographics.csv`` in ``root``, below it, or up to two folders above it."""
    for folder in (root, *list(root.parents)[:2]):
        if (folder / CREMA_D_DEMOGRAPHICS).is_file():
            return folder / CREMA_D_DEMOGRAPHICS
    found = sorted(p for p in root.rglob(CREMA_D_DEMOGRAPHICS) if p.is_file())
    return found[0] if found else None


def read_crema_d_genders(path: str | os.PathLike) -> dict[str, str]:
    """Actor id -> ``"F"``/``"M"`` from CREMA-D's ``VideoDemographics.csv`` (ActorID, Sex)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            records = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SerlibError(f"{path}: cannot read: {error}") from error
    genders = {}
    for number, record in enumerate(records, start=2):
        actor, sex = (record.get("ActorID") or "").strip(), (record.get("Sex") or "").strip()
        if not actor or sex.lower() not in ("male", "female"):
            raise SerlibError(f"{path}, line {number}: expected an ActorID and Sex Male/Female, "
                              f"got ActorID={actor!r}, Sex={sex!r}")
        genders[actor] = "M" if sex.lower() == "male" else "F"
    return genders


def load_crema_d(root: str | os.PathLike, *, progress: bool = False) -> pd.DataFrame:
    """CREMA-D: ``AudioWAV/AAAA_SSS_EEE_LL.wav`` (Cao et al. 2014).

    Parameters
    ----------
    root : path
        The CREMA-D folder (the repository with ``AudioWAV/``) or ``AudioWAV`` itself.
    progress : bool

    Returns
    -------
    pandas.DataFrame
        The corpus table; speaker the actor id ``"1001"`` ... ``"1091"``; gender from
        ``VideoDemographics.csv`` (looked for in ``root``, below it, or up to two folders above
        it), empty when there is none. The ``.mp3``/video copies are skipped as non-wav files.
    """
    root, scan = scan_corpus(root, CREMA_D)
    demographics = _find_demographics(root)
    genders = read_crema_d_genders(demographics) if demographics else None

    def row(path: Path, match: re.Match) -> dict:
        actor = match["actor"]
        if not 1001 <= int(actor) <= 1091:
            raise SerlibError(f"{path}: actor {actor} outside 1001-1091 in the CREMA-D scheme "
                              f"{CREMA_D.description}")
        gender = None
        if genders is not None:
            if actor not in genders:
                raise SerlibError(f"{demographics}: no row for actor {actor} (of {path})")
            gender = genders[actor]
        return _emotion_row("crema-d", match, utterance_id=path.stem, speaker=actor,
                            gender=gender)

    return build_table(root, scan, row, corpus="crema-d", progress=progress)


def load_tess(root: str | os.PathLike, *, progress: bool = False) -> pd.DataFrame:
    """TESS: ``OAF_word_emotion.wav`` / ``YAF_word_emotion.wav`` (Dupuis & Pichora-Fuller 2010).

    Parameters
    ----------
    root : path
        The unpacked TESS folder (one folder per speaker and emotion) or any folder below it.
    progress : bool

    Returns
    -------
    pandas.DataFrame
        The corpus table; speakers ``OAF`` (older) and ``YAF`` (younger), both female;
        ``ps`` (pleasant surprise) is labelled ``surprise``. With two speakers, TESS is too
        small for the speaker-independent protocol with more than two folds.
    """
    root, scan = scan_corpus(root, TESS)

    def row(path: Path, match: re.Match) -> dict:
        return _emotion_row("tess", match, utterance_id=path.stem,
                            speaker=match["speaker"].upper(), gender="F")

    return build_table(root, scan, row, corpus="tess", progress=progress)


def load_savee(root: str | os.PathLike, *, progress: bool = False) -> pd.DataFrame:
    """SAVEE, in either distributed layout: ``DC/a01.wav`` or ``DC_a01.wav`` (Haq & Jackson).

    Parameters
    ----------
    root : path
        ``AudioData`` (with a folder per speaker), a folder above it, one speaker's folder, or
        a folder of ``<speaker>_<emotion><NN>.wav`` files.
    progress : bool

    Returns
    -------
    pandas.DataFrame
        The corpus table; speakers DC, JE, JK, KL (all male); ``utterance_id`` is
        ``<speaker>_<emotion><NN>`` in both layouts. A ``a01.wav`` whose folder is not a
        speaker's is an error naming the file.
    """
    root, scan = scan_corpus(root, SAVEE)

    def row(path: Path, match: re.Match) -> dict:
        speaker = match["speaker"] or path.parent.name
        if speaker not in SAVEE_SPEAKERS:
            raise SerlibError(
                f"{path}: no SAVEE speaker: the folder of a file named like a01.wav must be one "
                f"of {', '.join(SAVEE_SPEAKERS)} (scheme {SAVEE.description})")
        stem = f"{match['emotion']}{match['number']}"
        return _emotion_row("savee", match, utterance_id=f"{speaker}_{stem}", speaker=speaker,
                            gender="M")

    return build_table(root, scan, row, corpus="savee", progress=progress)


def load_emodb(root: str | os.PathLike, *, progress: bool = False) -> pd.DataFrame:
    """EmoDB (Berlin Database of Emotional Speech): ``wav/03a01Wa.wav`` (Burkhardt et al. 2005).

    Parameters
    ----------
    root : path
        The unpacked download (with ``wav/``) or ``wav`` itself.
    progress : bool

    Returns
    -------
    pandas.DataFrame
        The corpus table; speaker the two-digit id (``"03"``), gender from the corpus's
        documentation (:data:`EMODB_GENDERS`: 5 female, 5 male); ``boredom``, ``fear`` and
        ``disgust`` are kept with their own labels.
    """
    root, scan = scan_corpus(root, EMODB)

    def row(path: Path, match: re.Match) -> dict:
        speaker = match["speaker"]
        if speaker not in EMODB_GENDERS:
            raise SerlibError(f"{path}: speaker {speaker} is not an EmoDB speaker "
                              f"({', '.join(EMODB_GENDERS)}; scheme {EMODB.description})")
        return _emotion_row("emodb", match, utterance_id=path.stem, speaker=speaker,
                            gender=EMODB_GENDERS[speaker])

    return build_table(root, scan, row, corpus="emodb", progress=progress)


def load_emovo(root: str | os.PathLike, *, progress: bool = False) -> pd.DataFrame:
    """EMOVO (Italian): ``f1/dis-f1-b1.wav`` (Costantini et al. 2014).

    Parameters
    ----------
    root : path
        The unpacked folder (one folder per speaker) or any folder below it.
    progress : bool

    Returns
    -------
    pandas.DataFrame
        The corpus table; speakers ``f1``-``f3`` (female) and ``m1``-``m3`` (male).
    """
    root, scan = scan_corpus(root, EMOVO)

    def row(path: Path, match: re.Match) -> dict:
        speaker = match["speaker"].lower()
        return _emotion_row("emovo", match, utterance_id=path.stem, speaker=speaker,
                            gender=speaker[0].upper())

    return build_table(root, scan, row, corpus="emovo", progress=progress)


#: The public corpora's loaders by name (``serlib select --corpus NAME``).
CORPORA: dict[str, Callable[..., pd.DataFrame]] = {
    "ravdess": load_ravdess,
    "crema-d": load_crema_d,
    "tess": load_tess,
    "savee": load_savee,
    "emodb": load_emodb,
    "emovo": load_emovo,
}
#: Every name :func:`load_corpus` accepts: IEMOCAP and the public corpora.
CORPUS_NAMES = ("iemocap", *CORPORA)
ALIASES = {"cremad": "crema-d", "crema_d": "crema-d"}


def canonical_name(name: str) -> str:
    """A corpus name as :data:`CORPUS_NAMES` spells it (lower case, ``cremad`` -> ``crema-d``)."""
    name = str(name).strip().lower()
    return ALIASES.get(name, name)


def load_corpus(name: str, root: str | os.PathLike, *, keep_calm: bool | None = None,
                progress: bool = False) -> pd.DataFrame:
    """Any corpus by name: ``iemocap`` or one of :data:`CORPORA`.

    Parameters
    ----------
    name : str
        One of :data:`CORPUS_NAMES` (``cremad`` is accepted for ``crema-d``).
    root : path
        The corpus folder (see each loader).
    keep_calm : bool, optional
        RAVDESS only: keep the calm clips (default: dropped).
    progress : bool

    Returns
    -------
    pandas.DataFrame
        The corpus table (:data:`serlib.corpora.COLUMNS`).
    """
    key = canonical_name(name)
    if key not in CORPUS_NAMES:
        raise SerlibError(f"corpus={name!r} is not known (known: {', '.join(CORPUS_NAMES)})")
    if keep_calm is not None and key != "ravdess":
        raise SerlibError(f"keep_calm={keep_calm!r} applies to RAVDESS only, not {key!r}")
    if key == "iemocap":
        from serlib.corpora.iemocap import load_iemocap

        return load_iemocap(root, progress=progress)
    if key == "ravdess":
        return load_ravdess(root, keep_calm=bool(keep_calm), progress=progress)
    return CORPORA[key](root, progress=progress)
