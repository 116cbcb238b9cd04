"""Manifest corpora: any ``path,label,speaker`` CSV becomes the corpus table."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from serlib.corpora import load_manifest, select_utterances
from serlib.errors import SerlibError


def make_manifest(tmp_path, text):
    for name in ("a", "b", "c"):
        sf.write(tmp_path / f"{name}.wav", np.zeros(8000, dtype=np.int16), 16000)
    path = tmp_path / "corpus.csv"
    path.write_text(text)
    return path


def test_manifest_table(tmp_path):
    path = make_manifest(tmp_path, "path,label,speaker,session\na.wav,Anger,s1,1\n"
                                   "b.wav,neutral,s2,2\nc.wav,boredom,s2,2\n")
    table = load_manifest(path)
    assert list(table["utterance_id"]) == ["a", "b", "c"]
    assert list(table["label"]) == ["anger", "neutral", "boredom"]
    assert table["duration_s"].tolist() == [0.5, 0.5, 0.5]
    assert table["session"].tolist() == [1, 2, 2]
    assert table["corpus"].iloc[0] == f"manifest:{tmp_path.name}"
    assert str(tmp_path / "a.wav") == table["path"].iloc[0]
    assert list(select_utterances(table)["utterance_id"]) == ["a", "b"]


def test_missing_column(tmp_path):
    path = make_manifest(tmp_path, "path,label\na.wav,anger\n")
    with pytest.raises(SerlibError, match=r"corpus\.csv: missing column\(s\) speaker"):
        load_manifest(path)


def test_missing_audio_names_line(tmp_path):
    path = make_manifest(tmp_path, "path,label,speaker\na.wav,anger,s1\nzz.wav,anger,s1\n")
    with pytest.raises(SerlibError, match=r"corpus\.csv, line 3: cannot read audio file .*zz"):
        load_manifest(path)


def test_bad_session_or_gender(tmp_path):
    path = make_manifest(tmp_path, "path,label,speaker,session\na.wav,anger,s1,one\n")
    with pytest.raises(SerlibError, match=r"corpus\.csv, line 2: session must be an integer"):
        load_manifest(path)
    path = make_manifest(tmp_path, "path,label,speaker,gender\na.wav,anger,s1,f\n"
                                   "b.wav,anger,s1,female\n")
    with pytest.raises(SerlibError, match=r"corpus\.csv, line 3: gender must be F, M or empty"):
        load_manifest(path)


def test_missing_csv_and_empty_rows(tmp_path):
    with pytest.raises(SerlibError, match=r"nope\.csv: manifest CSV does not exist"):
        load_manifest(tmp_path / "nope.csv")
    path = make_manifest(tmp_path, "path,label,speaker\n")
    with pytest.raises(SerlibError, match=r"corpus\.csv: the manifest has no rows"):
        load_manifest(path)
    path = make_manifest(tmp_path, "path,label,speaker\na.wav,,s1\n")
    with pytest.raises(SerlibError, match=r"corpus\.csv, line 2: empty 'label'"):
        load_manifest(path)


def test_repeated_file_names(tmp_path):
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "sub" / "a.wav", np.zeros(800, dtype=np.int16), 16000)
    path = make_manifest(tmp_path, "path,label,speaker\na.wav,anger,s1\nsub/a.wav,anger,s2\n")
    with pytest.raises(SerlibError, match=r"corpus\.csv: file names must be unique.*repeated: a"):
        load_manifest(path)


def test_emodb(emodb_manifest):
    table = load_manifest(emodb_manifest)
    assert len(table) == 535
    assert table["speaker"].nunique() == 10
    assert set(table["gender"]) == {"F", "M"}
    assert table["speaker"].str.fullmatch(r"\d\d").all()  # "03" stays "03"
    selected = select_utterances(table)
    assert selected["label"].value_counts().to_dict() == {
        "anger": 127, "neutral": 79, "happiness": 71, "sadness": 62}
