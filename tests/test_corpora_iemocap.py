"""The IEMOCAP parser on lines in the release's formats, and its errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

from serlib.corpora import (
    load_iemocap,
    parse_utterance_id,
    select_utterances,
    selection_steps,
)
from serlib.corpora.iemocap import parse_evaluation_file
from serlib.errors import SerlibError
from tests.fixtures_iemocap import build_real_count_tree

BLOCKS = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[140.2250 - 145.6000]\tSes01F_impro05_F019\tang\t[1.5000, 4.0000, 4.5000]
C-E1:\tAnger;\t()
C-E2:\tAnger; Frustration;\t()
C-E4:\tFrustration;\t()
C-F1:\tAnger;\t(shouting)
A-E3:\tval 2; act 4; dom  4;\t()
A-F1:\tval 1; act 5; dom  5;\t()

[146.1000 - 149.0000]\tSes01F_impro05_M020\tneu\t[3.0000, 2.0000, 2.5000]
C-E1:\tNeutral state;\t()
C-E2:\tNeutral;\t()
C-E3:\tOther:bored;\t(flat)
C-M1:\tSadness;\t()
"""


def write_tree(root, text=BLOCKS, dialog="Ses01F_impro05", wavs=("F019", "M020")):
    folder = root / "Session1" / "dialog" / "EmoEvaluation"
    folder.mkdir(parents=True)
    (folder / f"{dialog}.txt").write_text(text)
    for suffix in wavs:
        wav = root / "Session1" / "sentences" / "wav" / dialog / f"{dialog}_{suffix}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, np.zeros(16000 * 2, dtype=np.int16), 16000, subtype="PCM_16")
    return root


@pytest.mark.parametrize(
    ("uid", "dialog", "speaker", "improvised"),
    [
        ("Ses01F_impro05_F019", "Ses01F_impro05", "Ses01F", True),
        ("Ses01F_impro04_M011", "Ses01F_impro04", "Ses01M", True),  # last letter decides
        ("Ses03M_impro05a_M012", "Ses03M_impro05a", "Ses03M", True),
        ("Ses03M_impro05b_F003", "Ses03M_impro05b", "Ses03F", True),
        ("Ses05M_script01_1b_F003", "Ses05M_script01_1b", "Ses05F", False),
        ("Ses02F_script02_2_M044", "Ses02F_script02_2", "Ses02M", False),
    ],
)
def test_utterance_id_forms(uid, dialog, speaker, improvised):
    parts = parse_utterance_id(uid)
    assert (parts.dialog, parts.speaker, parts.improvised) == (dialog, speaker, improvised)
    assert parts.session == int(uid[3:5])


@pytest.mark.parametrize("bad", ["Ses06F_impro01_F000", "Ses01F_impro01_F00", "Ses01X_x_F000"])
def test_bad_utterance_id(bad):
    with pytest.raises(SerlibError, match="not an IEMOCAP utterance id"):
        parse_utterance_id(bad)


def test_parse_evaluation_file_votes_and_agreement(tmp_path):
    path = tmp_path / "Ses01F_impro05.txt"
    path.write_text(BLOCKS)
    parsed = parse_evaluation_file(path)
    first, second = parsed.rows
    assert first["utterance_id"] == "Ses01F_impro05_F019"
    assert (first["start_s"], first["end_s"], first["raw_label"]) == (140.225, 145.6, "ang")
    # E1 and E2 voted anger (E2 with a second emotion); E4 did not; C-F1 is the actor
    assert first["n_agree"] == 2
    # "Neutral state" and "Neutral" both count; "Other:bored" is a vote for oth
    assert second["n_agree"] == 2
    assert not parsed.unknown_votes


def test_load_tree(tmp_path):
    table = load_iemocap(write_tree(tmp_path / "anyname"))
    assert list(table["utterance_id"]) == ["Ses01F_impro05_F019", "Ses01F_impro05_M020"]
    assert list(table["speaker"]) == ["Ses01F", "Ses01M"]
    assert list(table["gender"]) == ["F", "M"]
    assert list(table["label"]) == ["anger", "neutral"]
    assert table["duration_s"].tolist() == [2.0, 2.0]
    assert (table["corpus"] == "iemocap").all()
    assert table["improvised"].all()
    assert table["session"].tolist() == [1, 1]


def test_parent_of_release_is_accepted(tmp_path):
    write_tree(tmp_path / "IEMOCAP_full_release")
    assert len(load_iemocap(tmp_path)) == 2


def test_missing_root(tmp_path):
    with pytest.raises(SerlibError, match="does not exist") as error:
        load_iemocap(tmp_path / "nowhere")
    assert "nowhere" in str(error.value)


def test_not_iemocap_shaped(tmp_path):
    (tmp_path / "Session1").mkdir()
    with pytest.raises(SerlibError, match=r"expected Session<N>/dialog/EmoEvaluation"):
        load_iemocap(tmp_path)


def test_malformed_summary_line_names_file_and_line(tmp_path):
    text = BLOCKS.replace("[146.1000 - 149.0000]", "[146.1000 -- 149.0000]")
    write_tree(tmp_path, text=text)
    with pytest.raises(SerlibError, match=r"Ses01F_impro05\.txt, line 11: malformed summary"):
        load_iemocap(tmp_path)


def test_unknown_label_code(tmp_path):
    write_tree(tmp_path, text=BLOCKS.replace("\tneu\t", "\tzzz\t"))
    with pytest.raises(SerlibError, match="line 11: unknown label 'zzz'"):
        load_iemocap(tmp_path)


def test_missing_wav_is_listed_not_fatal(tmp_path):
    write_tree(tmp_path, wavs=("F019",))
    with pytest.warns(UserWarning, match=r"(?s)1 utterances have no readable wav.*M020\.wav"):
        table = load_iemocap(tmp_path)
    assert list(table["utterance_id"]) == ["Ses01F_impro05_F019"]


def test_all_wavs_missing_is_fatal(tmp_path):
    write_tree(tmp_path, wavs=())
    with pytest.raises(SerlibError, match="none of the 2 utterances has its wav"):
        load_iemocap(tmp_path)


def test_unknown_vote_words_are_counted(tmp_path):
    text = BLOCKS.replace("C-E4:\tFrustration;", "C-E4:\tGrumpy; Grumpy;")
    write_tree(tmp_path, text=text)
    with pytest.warns(UserWarning, match=r"(?s)2 unknown vote words.*'Grumpy' x2 \(first in "
                                         r".*Ses01F_impro05\.txt, line 6\)"):
        table = load_iemocap(tmp_path)
    assert table["n_agree"].tolist() == [2, 2]  # not fatal, not counted as votes


def test_bad_utterance_id_names_file_and_line(tmp_path):
    write_tree(tmp_path, text=BLOCKS.replace("Ses01F_impro05_M020", "Ses01F_impro05_X020"))
    with pytest.raises(SerlibError, match=r"Ses01F_impro05\.txt, line 11: not an IEMOCAP "
                                          r"utterance id: 'Ses01F_impro05_X020'"):
        load_iemocap(tmp_path)


def test_votes_with_comments_and_several_evaluators(tmp_path):
    text = """[1.0000 - 2.5000]\tSes02M_script01_1_F000\tsad\t[2.0000, 2.0000, 2.0000]
C-E1:\tSadness; Frustration;\t(tired)
C-E2:\tNeutral state;\t()
C-E5:\tSadness;\tno parentheses here
C-E6:\tsadness;\t()
C-F1:\tSadness;\t()
A-E1:\tval 2; act 2; dom  2;\t()
"""
    path = tmp_path / "Ses02M_script01_1.txt"
    path.write_text(text)
    (row,) = parse_evaluation_file(path).rows
    assert row["n_agree"] == 3  # E1, E5, E6 (case-insensitive); not E2, not the actor F1


def test_real_counts_give_guide_numbers(tmp_path):
    """On a tree with the real counts the defaults give exactly GUIDE.md section 2."""
    root = build_real_count_tree(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real formats parse without complaint
        table = load_iemocap(root)
    ids = set(table["utterance_id"])
    assert any(i.startswith("Ses03M_impro05a_") for i in ids)
    assert any(i.startswith("Ses05M_script01_1b_") for i in ids)
    assert any(i.startswith("Ses01F_impro04_M") for i in ids)  # cross-gender dialog

    selected = select_utterances(table)
    assert len(selected) == 2280
    assert selected["label"].value_counts().to_dict() == {
        "neutral": 1099, "sadness": 608, "anger": 289, "happiness": 284}
    assert selected.groupby("session").size().tolist() == [422, 393, 538, 370, 557]
    assert selected.groupby("speaker").size().to_dict() == {
        "Ses01F": 217, "Ses01M": 205, "Ses02F": 185, "Ses02M": 208, "Ses03F": 264,
        "Ses03M": 274, "Ses04F": 149, "Ses04M": 221, "Ses05F": 298, "Ses05M": 259,
    }
    steps = selection_steps(table).set_index("step")
    assert steps.loc[">= 2 evaluators agree", "n_utterances"] == 2280
    assert steps.loc["all utterances", "n_utterances"] == len(table) == 2280 + 10 * 8
    # merging excited adds the improvised exc utterances (one per speaker) to happiness
    merged = select_utterances(table, merge_excited=True)
    assert (merged["label"] == "happiness").sum() == 284 + 10
