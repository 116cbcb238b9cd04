"""Selection/manifest CSVs keep strings; empty selections say why; umask; 0-byte files."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serlib._io import atomic_path, atomic_write_text, read_text_csv
from serlib.corpora import load_manifest, read_selection, select_utterances, write_selection
from serlib.corpora.selection import selection_max_seconds
from serlib.errors import SerlibError


def write_manifest(folder, rows):
    rng = np.random.default_rng(0)
    for name, *_ in rows:
        sf.write(folder / name, (0.1 * rng.standard_normal(4000)).astype(np.float32), 16000)
    csv = folder / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "label", "speaker"]).to_csv(csv, index=False)
    return csv


def test_names_pandas_reads_as_missing_survive(tmp_path):
    csv = write_manifest(tmp_path, [("null.wav", "anger", "NA"), ("nan.wav", "neutral", "None"),
                                    ("NA.wav", "sadness", "nan")])
    table = load_manifest(csv)
    assert table["utterance_id"].tolist() == ["null", "nan", "NA"]
    assert table["speaker"].tolist() == ["NA", "None", "nan"]
    selected = select_utterances(table)
    back = read_selection(write_selection(selected, tmp_path / "sel.csv"))
    assert back["utterance_id"].tolist() == ["null", "nan", "NA"]
    assert back["speaker"].tolist() == ["NA", "None", "nan"]
    assert back["path"].map(os.path.basename).tolist() == ["null.wav", "nan.wav", "NA.wav"]
    assert back["session"].isna().all() and back["n_agree"].isna().all()
    assert back["improvised"].dtype == bool and back["improvised"].all()
    assert back["gender"].isna().all()


def test_boolean_column_is_read_not_cast(tmp_path):
    csv = write_manifest(tmp_path, [("a.wav", "anger", "s1"), ("b.wav", "anger", "s1")])
    sel = select_utterances(load_manifest(csv), max_seconds=0.1)
    path = write_selection(sel, tmp_path / "sel.csv")
    assert read_selection(path)["longer_than_max"].tolist() == [True, True]
    sel = select_utterances(load_manifest(csv), max_seconds=6)
    path = write_selection(sel, tmp_path / "sel.csv")
    # "False" is not truthy (astype(bool) of the string would say True)
    assert read_selection(path)["longer_than_max"].tolist() == [False, False]
    text = path.read_text().replace("False", "maybe", 1)
    path.write_text(text)
    with pytest.raises(SerlibError, match=r"sel\.csv, line 2: longer_than_max='maybe'"):
        read_selection(path)


def test_selection_records_max_seconds(tmp_path):
    csv = write_manifest(tmp_path, [("a.wav", "anger", "s1")])
    path = write_selection(select_utterances(load_manifest(csv), max_seconds=2), tmp_path / "s.csv")
    assert selection_max_seconds(path) == 2.0
    assert selection_max_seconds(read_selection(path).drop(columns="max_seconds")) == 6.0
    mixed = pd.concat([read_selection(path), select_utterances(load_manifest(csv))])
    with pytest.raises(SerlibError, match="max_seconds"):
        selection_max_seconds(mixed)


def test_only_unknown_labels_says_why(tmp_path):
    csv = write_manifest(tmp_path, [("a.wav", "calm", "s1"), ("b.wav", "calm", "s1"),
                                    ("c.wav", "surprise", "s2")])
    with pytest.raises(SerlibError) as info:
        select_utterances(load_manifest(csv))
    message = str(info.value)
    assert "empty" in message and "calm 2" in message and "surprise 1" in message
    assert "neutral, happiness, sadness, anger" in message


def test_zero_byte_manifest_and_selection(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(SerlibError, match=r"empty\.csv: the manifest CSV is empty"):
        load_manifest(empty)
    with pytest.raises(SerlibError, match=r"empty\.csv: the selection CSV is empty"):
        read_selection(empty)


def test_read_text_csv_numbers(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,n\nnull,1.5\nNA,\n")
    frame = read_text_csv(csv, what="table", numeric=("n",))
    assert frame["a"].tolist() == ["null", "NA"]
    assert frame["n"].iloc[0] == 1.5 and np.isnan(frame["n"].iloc[1])
    csv.write_text("a,n\nx,one\n")
    with pytest.raises(SerlibError, match=r"t\.csv, line 2: n='one' is not a number"):
        read_text_csv(csv, what="table", numeric=("n",))


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_files_honour_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = atomic_write_text(tmp_path / "x.txt", "hello")
        with atomic_path(tmp_path / "y.bin") as tmp:
            tmp.write_bytes(b"1")
    finally:
        os.umask(old)
    for p in (path, tmp_path / "y.bin"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
