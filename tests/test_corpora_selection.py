"""The paper's selection, its step counts, and the selection table on disk."""

from __future__ import annotations

import pandas as pd
import pytest

from serlib.corpora import read_selection, select_utterances, selection_steps, write_selection
from serlib.corpora.iemocap import as_corpus_table
from serlib.errors import SerlibError


def corpus(rows):
    frame = pd.DataFrame(rows, columns=["utterance_id", "label", "raw_label", "improvised",
                                        "n_agree", "duration_s"])
    frame["path"] = "/x/" + frame["utterance_id"] + ".wav"
    frame["speaker"] = "Ses01F"
    frame["session"] = 1
    frame["corpus"] = "iemocap"
    return as_corpus_table(frame)


TABLE = corpus([
    ("a", "neutral", "neu", True, 3, 2.0),
    ("b", "happiness", "hap", True, 2, 7.5),   # long: kept, marked
    ("c", "sadness", "sad", False, 3, 3.0),    # scripted
    ("d", "anger", "ang", True, 1, 3.0),       # too little agreement
    ("e", "exc", "exc", True, 3, 3.0),         # excited: not merged by default
    ("f", "fru", "fru", True, 2, 3.0),         # other class
    ("g", "xxx", "xxx", True, 1, 3.0),         # no majority
])


def test_defaults_follow_the_paper():
    selected = select_utterances(TABLE)
    assert list(selected["utterance_id"]) == ["a", "b"]
    assert list(selected["longer_than_max"]) == [False, True]  # kept, cut later


def test_options():
    assert "e" in set(select_utterances(TABLE, merge_excited=True)["utterance_id"])
    assert select_utterances(TABLE, merge_excited=True).set_index("utterance_id").loc[
        "e", "label"] == "happiness"
    assert "c" in set(select_utterances(TABLE, improvised_only=False)["utterance_id"])
    assert "d" in set(select_utterances(TABLE, min_agree=1)["utterance_id"])
    assert not select_utterances(TABLE, max_seconds=10)["longer_than_max"].any()
    assert list(select_utterances(TABLE, classes=("neutral",))["utterance_id"]) == ["a"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"min_agree": -1}, "min_agree=-1"),
    ({"max_seconds": 0}, "max_seconds=0"),
    ({"classes": ()}, "classes=()"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(SerlibError, match=match):
        select_utterances(TABLE, **kwargs)


def test_selection_steps_counts():
    steps = selection_steps(TABLE)
    assert steps["n_utterances"].tolist() == [7, 6, 3, 2, 1]
    assert steps.iloc[-1]["happiness"] == 1
    assert steps.iloc[3][["neutral", "happiness", "sadness", "anger"]].tolist() == [1, 1, 0, 0]


def test_write_read_roundtrip(tmp_path):
    selected = select_utterances(TABLE)
    path = write_selection(selected, tmp_path / "sel.csv")
    back = read_selection(path)
    pd.testing.assert_frame_equal(back, selected, check_dtype=False)
    assert back["session"].dtype == "Int64"
    assert back["longer_than_max"].dtype == bool


def test_read_selection_errors(tmp_path):
    with pytest.raises(SerlibError, match=r"nope\.csv: selection CSV does not exist"):
        read_selection(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("utterance_id,path\nx,/x.wav\n")
    with pytest.raises(SerlibError, match=r"bad\.csv: not a selection table: missing column"):
        read_selection(bad)
