"""The public corpora by file name: RAVDESS, CREMA-D, TESS, SAVEE, EmoDB, EMOVO.

Each test writes a small tree in the corpus's naming scheme (short generated tones and noise,
a few files per speaker and emotion) with the odd cases the real downloads hold.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serlib.cli import main
from serlib.corpora import (
    COLUMNS,
    CORPORA,
    class_mapping,
    label_counts,
    load_corpus,
    load_crema_d,
    load_emodb,
    load_emovo,
    load_ravdess,
    load_savee,
    load_tess,
    read_selection,
    select_utterances,
)
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES
from serlib.splits import make_folds
from tests.conftest import EMODB

SR = 8000


def wav(path: Path, *, seconds: float = 0.1, seed: int = 0) -> Path:
    """A short tone plus noise (mono, 16-bit)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    signal = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.01 * rng.normal(size=t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, signal, SR, subtype="PCM_16")
    return path


def junk(folder: Path, audio_name: str) -> None:
    """What unpacked downloads hold beside the audio: 2 hidden files, 2 non-audio files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"._{audio_name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / ".DS_Store").write_bytes(b"\x00")
    (folder / "readme.txt").write_text("about this corpus\n")
    (folder / "notes.csv").write_text("a,b\n")


def counts(table, column="label") -> dict:
    return table[column].value_counts().to_dict()


def check_table(table, corpus: str) -> None:
    assert list(table.columns) == list(COLUMNS)
    assert (table["corpus"] == corpus).all()
    assert table["session"].isna().all()
    assert table["utterance_id"].is_unique
    assert table["duration_s"].gt(0).all()
    assert all(Path(p).is_file() for p in table["path"])


# --- RAVDESS ----------------------------------------------------------------------------------

def ravdess_tree(base: Path) -> Path:
    """Actors 01 (male) and 02 (female): 8 emotions x 2 repetitions, plus the odd cases."""
    root = base / "Audio_Speech_Actors_01-24"
    seed = 0
    for actor in (1, 2):
        folder = root / f"Actor_{actor:02d}"
        for emotion in range(1, 9):
            for repetition in (1, 2):
                seed += 1
                wav(folder / f"03-01-{emotion:02d}-01-01-{repetition:02d}-{actor:02d}.wav",
                    seed=seed)
    odd = root / "Actor_01"
    wav(odd / "03-02-03-01-01-01-01.wav")           # song channel
    wav(odd / "01-01-03-01-01-01-01.wav")           # audio-video modality, as wav
    (odd / "02-01-03-01-01-01-01.mp4").write_bytes(b"video")  # not audio
    junk(odd, "03-01-01-01-01-01-01.wav")
    (base / "__MACOSX" / "Actor_01").mkdir(parents=True)
    (base / "__MACOSX" / "Actor_01" / "._03-01-01-01-01-01-01.wav").write_bytes(b"\x00")
    return root


def test_ravdess(tmp_path):
    root = ravdess_tree(tmp_path / "ravdess")
    table = load_ravdess(root)
    check_table(table, "ravdess")
    assert len(table) == 2 * 7 * 2  # calm dropped
    assert table.groupby("speaker")["gender"].first().to_dict() == {"01": "M", "02": "F"}
    assert counts(table) == {label: 4 for label in (
        "neutral", "happiness", "sadness", "anger", "fear", "disgust", "surprise")}
    one = table.set_index("utterance_id").loc["03-01-05-01-01-02-02"]
    assert (one["label"], one["raw_label"], one["speaker"]) == ("anger", "05", "02")
    assert table.attrs["skipped"] == {
        "hidden or AppleDouble files": 2, "files that are not .wav audio": 3,
        "song channel (vocal channel 02)": 1, "other modality (not 03, audio-only)": 1,
        "calm (dropped; keep_calm=True keeps it)": 4}

    kept = load_ravdess(root, keep_calm=True)
    assert len(kept) == 32 and counts(kept)["calm"] == 4
    assert "calm" not in set(select_utterances(kept)["label"])  # kept, not merged, left out
    assert "calm (dropped; keep_calm=True keeps it)" not in kept.attrs["skipped"]
    # the data root may be any folder above or below the unpacked one
    above = load_ravdess(tmp_path)
    assert len(above) == 28
    assert above.attrs["skipped"]["hidden or AppleDouble files"] == 3  # and __MACOSX/
    assert set(load_ravdess(root / "Actor_02")["speaker"]) == {"02"}


@pytest.mark.parametrize(("name", "match"), [
    ("03-01-09-01-01-01-01.wav", "do not fit the ravdess naming scheme"),  # emotion 09
    ("03-01-01-01-01-01.wav", "do not fit the ravdess naming scheme"),     # a part missing
    ("03-01-01-01-01-01-25.wav", "actor 25 outside 01-24"),
])
def test_ravdess_misnamed(tmp_path, name, match):
    root = ravdess_tree(tmp_path)
    bad = wav(root / "Actor_01" / name)
    with pytest.raises(SerlibError, match=match) as error:
        load_ravdess(root)
    assert str(bad) in str(error.value) and "MM-CC-EE-II-SS-RR-AA.wav" in str(error.value)


# --- CREMA-D ----------------------------------------------------------------------------------

CREMA_EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")


def crema_tree(base: Path, *, demographics: bool = True) -> Path:
    """Actors 1001 (male) and 1002 (female), 6 emotions x 2 sentences, in a folder whose
    name holds underscores (a whole-path split would break on it)."""
    root = base / "my_corpora_2024" / "CREMA-D"
    seed = 0
    for actor in ("1001", "1002"):
        for emotion in CREMA_EMOTIONS:
            for sentence, level in (("DFA", "XX"), ("IEO", "HI")):
                seed += 1
                name = f"{actor}_{sentence}_{emotion}_{level}"
                wav(root / "AudioWAV" / f"{name}.wav", seed=seed)
                (root / "AudioMP3").mkdir(exist_ok=True)
                (root / "AudioMP3" / f"{name}.mp3").write_bytes(b"mp3")
    if demographics:
        (root / "VideoDemographics.csv").write_text(
            '"ActorID","Age","Sex","Race","Ethnicity"\n1001,51,"Male","Caucasian","Not Hispanic"\n'
            "1002,21,Female,Caucasian,Not Hispanic\n")
    return root


def test_crema_d(tmp_path):
    root = crema_tree(tmp_path)
    table = load_crema_d(root)
    check_table(table, "crema-d")
    assert len(table) == 24
    assert table.groupby("speaker")["gender"].first().to_dict() == {"1001": "M", "1002": "F"}
    assert counts(table) == {label: 4 for label in (
        "neutral", "happiness", "sadness", "anger", "fear", "disgust")}
    assert table.attrs["skipped"] == {"files that are not .wav audio": 25}  # 24 mp3 + csv
    # AudioWAV itself: the demographics file one folder up is found
    below = load_crema_d(root / "AudioWAV")
    assert below["gender"].tolist() == table["gender"].tolist()
    assert load_corpus("cremad", root)["utterance_id"].tolist() == table["utterance_id"].tolist()


def test_crema_d_without_demographics(tmp_path):
    table = load_crema_d(crema_tree(tmp_path, demographics=False))
    assert len(table) == 24 and table["gender"].isna().all()


def test_crema_d_errors(tmp_path):
    root = crema_tree(tmp_path)
    (root / "VideoDemographics.csv").write_text("ActorID,Sex\n1001,Male\n")
    with pytest.raises(SerlibError, match="VideoDemographics.csv: no row for actor 1002"):
        load_crema_d(root)
    bad = wav(root / "AudioWAV" / "1001_DFA_ANGRY_XX.wav")
    with pytest.raises(SerlibError, match="crema-d naming scheme AAAA_SSS_EEE_LL.wav") as error:
        load_crema_d(root)
    assert str(bad) in str(error.value)


# --- TESS -------------------------------------------------------------------------------------

TESS_FOLDERS = {"angry": "angry", "disgust": "disgust", "fear": "Fear", "happy": "happy",
                "neutral": "neutral", "ps": "pleasant_surprised", "sad": "sad"}


def tess_tree(base: Path) -> Path:
    root = base / "TESS Toronto emotional speech set data"
    seed = 0
    for speaker in ("OAF", "YAF"):
        for emotion, folder in TESS_FOLDERS.items():
            for word in ("back", "bar"):
                seed += 1
                wav(root / f"{speaker}_{folder}" / f"{speaker}_{word}_{emotion}.wav", seed=seed)
    junk(root / "OAF_angry", "OAF_back_angry.wav")
    return root


def test_tess(tmp_path):
    root = tess_tree(tmp_path)
    table = load_tess(root)
    check_table(table, "tess")
    assert len(table) == 28 and set(table["gender"]) == {"F"}
    assert counts(table, "speaker") == {"OAF": 14, "YAF": 14}
    assert counts(table)["surprise"] == 4
    assert table.set_index("utterance_id").loc["YAF_bar_ps", "raw_label"] == "ps"
    assert table.attrs["skipped"] == {"hidden or AppleDouble files": 2,
                                      "files that are not .wav audio": 2}


def test_tess_refused_by_speaker_folds(tmp_path):
    selection = select_utterances(load_tess(tess_tree(tmp_path)))
    with pytest.raises(SerlibError, match="corpus 'tess' has 2 speaker") as error:
        make_folds(selection, protocol="session", n_folds=5, seed=0)
    assert "refused" in str(error.value) and "n_folds <= 2" in str(error.value)
    folds = make_folds(selection, protocol="session", n_folds=2, seed=0)
    assert [set(selection["speaker"].iloc[test]) for _, test in folds] in (
        [{"OAF"}, {"YAF"}], [{"YAF"}, {"OAF"}])


# --- SAVEE ------------------------------------------------------------------------------------

SAVEE_CODES = ("a01", "d01", "f01", "h01", "n01", "n02", "sa01", "su01")


def savee_tree(base: Path, *, layout: str) -> Path:
    seed = 0
    for speaker in ("DC", "JE", "JK", "KL"):
        for code in SAVEE_CODES:
            seed += 1
            if layout == "folders":
                wav(base / "AudioData" / speaker / f"{code}.wav", seed=seed)
            else:
                wav(base / "ALL" / f"{speaker}_{code}.wav", seed=seed)
    return base


@pytest.mark.parametrize("layout", ["folders", "flat"])
def test_savee_layouts(tmp_path, layout):
    root = savee_tree(tmp_path, layout=layout)
    (root / "Info.txt").write_text("SAVEE\n")
    table = load_savee(root)
    check_table(table, "savee")
    assert len(table) == 32 and set(table["gender"]) == {"M"}
    assert counts(table, "speaker") == {s: 8 for s in ("DC", "JE", "JK", "KL")}
    assert counts(table) == {"neutral": 8, "happiness": 4, "sadness": 4, "anger": 4, "fear": 4,
                             "disgust": 4, "surprise": 4}
    row = table.set_index("utterance_id").loc["JK_sa01"]
    assert (row["label"], row["raw_label"], row["speaker"]) == ("sadness", "sa", "JK")
    assert table.attrs["skipped"] == {"files that are not .wav audio": 1}


def test_savee_layouts_agree_and_errors(tmp_path):
    folders = load_savee(savee_tree(tmp_path / "a", layout="folders"))
    flat = load_savee(savee_tree(tmp_path / "b", layout="flat"))
    columns = ["utterance_id", "speaker", "label", "raw_label"]
    assert folders[columns].equals(flat[columns])
    with pytest.raises(SerlibError, match="a second file for DC_a01 .*two copies of savee"):
        load_savee(tmp_path)
    bad = wav(tmp_path / "c" / "AudioData" / "XY" / "a01.wav")
    with pytest.raises(SerlibError, match="no SAVEE speaker") as error:
        load_savee(tmp_path / "c")
    assert str(bad) in str(error.value)


# --- EmoDB ------------------------------------------------------------------------------------

def emodb_tree(base: Path) -> Path:
    root = base / "download" / "wav"
    seed = 0
    for speaker in ("03", "08"):
        for emotion in "WLEAFTN":
            for text in ("a01", "b02"):
                seed += 1
                wav(root / f"{speaker}{text}{emotion}a.wav", seed=seed)
    (base / "download" / "lablaut").mkdir()
    (base / "download" / "lablaut" / "03a01Wa.lab").write_text("labels\n")
    (base / "download" / "erklaerung.txt").write_text("Erklaerung\n")
    return root


def test_emodb(tmp_path):
    root = emodb_tree(tmp_path)
    table = load_emodb(root)
    check_table(table, "emodb")
    assert len(table) == 28
    assert table.groupby("speaker")["gender"].first().to_dict() == {"03": "M", "08": "F"}
    assert counts(table) == {label: 4 for label in (
        "neutral", "happiness", "sadness", "anger", "fear", "disgust", "boredom")}
    assert table.attrs["skipped"] == {}
    above = load_emodb(tmp_path / "download")  # the unpacked download: lablaut/ and docs too
    assert above["utterance_id"].tolist() == table["utterance_id"].tolist()
    assert above.attrs["skipped"] == {"files that are not .wav audio": 2}
    # the selection keeps the four classes; the others stay in the table, counted
    selected = select_utterances(table)
    assert counts(selected) == {c: 4 for c in PAPER_CLASSES}
    left = label_counts(table)
    assert left.index.tolist()[:4] == list(PAPER_CLASSES)
    assert left.loc[~left["selected"], "n_utterances"].to_dict() == {
        "fear": 4, "disgust": 4, "boredom": 4}


@pytest.mark.parametrize(("name", "match"), [
    ("03a01Xa.wav", "do not fit the emodb naming scheme SSTTTEV.wav"),
    ("05a01Wa.wav", "speaker 05 is not an EmoDB speaker"),
])
def test_emodb_misnamed(tmp_path, name, match):
    root = emodb_tree(tmp_path)
    bad = wav(root / name)
    with pytest.raises(SerlibError, match=match) as error:
        load_emodb(root)
    assert str(bad) in str(error.value)


# --- EMOVO ------------------------------------------------------------------------------------

def emovo_tree(base: Path) -> Path:
    root = base / "EMOVO"
    seed = 0
    for speaker in ("f1", "m2"):
        for emotion in ("dis", "gio", "neu", "pau", "rab", "sor", "tri"):
            for sentence in ("b1", "n5"):
                seed += 1
                wav(root / speaker / f"{emotion}-{speaker}-{sentence}.wav", seed=seed)
    junk(root / "f1", "dis-f1-b1.wav")
    return root


def test_emovo(tmp_path):
    root = emovo_tree(tmp_path)
    table = load_emovo(root)
    check_table(table, "emovo")
    assert len(table) == 28
    assert table.groupby("speaker")["gender"].first().to_dict() == {"f1": "F", "m2": "M"}
    assert counts(table) == {label: 4 for label in (
        "neutral", "happiness", "sadness", "anger", "fear", "disgust", "surprise")}
    assert table.set_index("utterance_id").loc["gio-m2-n5", "label"] == "happiness"
    assert table.attrs["skipped"] == {"hidden or AppleDouble files": 2,
                                      "files that are not .wav audio": 2}
    bad = wav(root / "f1" / "dis-x1-b1.wav")
    with pytest.raises(SerlibError, match="emovo naming scheme EEE-SS-TT.wav") as error:
        load_emovo(root)
    assert str(bad) in str(error.value)


# --- all corpora ------------------------------------------------------------------------------

@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_class_mapping_maps_each_paper_class_once(corpus):
    mapping = class_mapping(corpus)
    assert list(mapping.columns) == ["code", "emotion", "label", "paper class"]
    kept = mapping[mapping["paper class"] != "(left out)"]
    assert sorted(kept["paper class"]) == sorted(PAPER_CLASSES)
    assert (kept["label"] == kept["paper class"]).all()
    assert mapping["code"].is_unique and mapping["label"].is_unique


def test_common_errors(tmp_path):
    with pytest.raises(SerlibError, match="emodb data root does not exist"):
        load_emodb(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    wav(tmp_path / ".hidden.wav")
    with pytest.raises(SerlibError, match=r"no tess audio files .* \(found 1 hidden or "
                                          r"AppleDouble files, 1 files that are not"):
        load_tess(tmp_path)
    with pytest.raises(SerlibError, match="corpus='esd' is not known"):
        load_corpus("esd", tmp_path)
    with pytest.raises(SerlibError, match="keep_calm=True applies to RAVDESS only"):
        load_corpus("emodb", tmp_path, keep_calm=True)
    with pytest.raises(SerlibError, match="corpus='iemocap' has no class mapping"):
        class_mapping("iemocap")


def test_empty_audio_is_skipped_and_two_copies_refused(tmp_path):
    root = emodb_tree(tmp_path)
    sf.write(root / "03a02Wa.wav", np.zeros(0), SR)
    table = load_emodb(root)
    assert len(table) == 28 and table.attrs["skipped"] == {"empty audio files (no samples)": 1}
    shutil.copytree(root, tmp_path / "copy")
    with pytest.raises(SerlibError, match="a second file for 03a01aa.wav.*two copies"):
        load_emodb(tmp_path)


# --- the command line -------------------------------------------------------------------------

def test_select_corpus_command(tmp_path, capsys):
    root = ravdess_tree(tmp_path / "r")
    out = tmp_path / "selection.csv"
    assert main(["select", "--corpus", "ravdess", "--data-root", str(root), "--out", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "16 of 28 utterances (ravdess)" in printed
    assert "1 song channel (vocal channel 02)" in printed and "2 hidden or AppleDouble" in printed
    assert "left out (other labels): disgust 4, fear 4, surprise 4" in printed
    assert "2 speakers: 1 F, 1 M" in printed
    assert counts(read_selection(out)) == {c: 4 for c in PAPER_CLASSES}
    assert main(["select", "--corpus", "ravdess", "--keep-calm", "--data-root", str(root),
                 "--out", str(out), "--quiet"]) == 0
    assert "16 of 32 utterances" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "match"), [
    (["--corpus", "emodb", "--keep-calm"], "keep_calm=True applies to RAVDESS only"),
    (["--corpus", "esd"], "corpus='esd' is not known"),
])
def test_select_corpus_command_errors(tmp_path, capsys, argv, match):
    root = emodb_tree(tmp_path)
    assert main(["select", "--data-root", str(root), *argv, "--out",
                 str(tmp_path / "s.csv")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()
    assert main(["select", "--iemocap", str(root), "--corpus", "emodb", "--out",
                 str(tmp_path / "s.csv")]) == 2
    assert "--iemocap reads IEMOCAP, not --corpus emodb" in capsys.readouterr().err


def test_select_real_emodb(tmp_path, capsys):
    """The real EmoDB copy beside the project (file names as distributed)."""
    if not (EMODB / "wav").is_dir():
        pytest.skip("../shared/data/emodb is absent")
    out = tmp_path / "emodb.csv"
    assert main(["select", "--corpus", "emodb", "--data-root", str(EMODB / "wav"),
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "339 of 535 utterances (emodb)" in printed
    assert "left out (other labels): boredom 81, fear 69, disgust 46" in printed
    selection = read_selection(out)
    assert counts(selection) == {"neutral": 79, "happiness": 71, "sadness": 62, "anger": 127}
    genders = selection.groupby("speaker")["gender"].first()
    assert len(genders) == 10 and (genders == "F").sum() == 5
    # the genders from the corpus documentation agree with the copy's own manifest
    import pandas as pd

    manifest = pd.read_csv(EMODB / "manifest.csv", dtype=str)
    assert manifest.groupby("speaker")["gender"].first().to_dict() == genders.to_dict()
