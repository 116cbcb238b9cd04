"""serlib.corpus_facts: class- and corpus-dependent text from the build's own selection."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from serlib.corpus_facts import corpus_facts, run_facts
from serlib.errors import SerlibError
from serlib.results import load_run, provenance
from tests.stats_runs import assign_folds, predict, write_run

#: EmoDB's four classes as the book selects them: anger is the LARGEST class.
EMODB_COUNTS = {"anger": 127, "neutral": 79, "happiness": 71, "sadness": 62}


def anger_first_selection(*, with_sessions: bool = False) -> pd.DataFrame:
    rows = []
    for label, n in EMODB_COUNTS.items():
        for i in range(n):
            speaker = f"{3 + i % 10:02d}"
            rows.append({"utterance_id": f"{label[:3]}{i:03d}", "speaker": speaker,
                         "session": (1 + i % 5) if with_sessions else "", "label": label,
                         "corpus": "emodb"})
    return pd.DataFrame(rows)


def test_anger_is_the_majority_and_sadness_the_minority_on_an_emodb_like_corpus():
    facts = corpus_facts(anger_first_selection())
    assert facts.majority == "anger"
    assert facts.minority == ("sadness",)             # 62 < 127 / 2; happiness 71 is not
    assert facts.counts["anger"] == 127 and facts.n == 339
    assert facts.fold_unit == "speaker fold" and facts.fold_units == "speaker folds"
    assert not facts.is_iemocap and facts.name == "EmoDB"
    assert facts.class_summary().startswith("anger 127 (37.5 %)")
    box = facts.not_iemocap_warning()
    assert box.startswith("```{warning}") and "EmoDB" in box and "not IEMOCAP" in box
    assert "5 speaker folds" in facts.protocol_phrase("session", 5)
    assert "session" not in facts.protocol_phrase("session", 5)


def test_iemocap_shares_give_happiness_and_anger_and_sessions():
    counts = {"neutral": 1099, "happiness": 284, "sadness": 608, "anger": 289}
    table = pd.DataFrame([{"label": c, "session": 1 + i % 5, "corpus": "iemocap"}
                          for c, n in counts.items() for i in range(n)])
    facts = corpus_facts(table)
    assert facts.majority == "neutral" and facts.minority == ("happiness", "anger")
    assert facts.minority_phrase() == "happiness and anger"
    assert facts.minority_short() == "hap / ang"
    assert facts.fold_unit == "session" and facts.not_iemocap_warning() == ""
    assert "leave-one-session-out" in facts.protocol_phrase("session", 5)
    generated = corpus_facts(table.assign(corpus="generated"))
    assert "generated" in generated.not_iemocap_warning()


def test_no_class_below_half_the_majority_names_the_smallest():
    table = pd.DataFrame({"label": ["neutral"] * 10 + ["anger"] * 9 + ["sadness"] * 8})
    facts = corpus_facts(table, corpus="x")
    assert facts.minority == ("sadness",) and facts.majority == "neutral"
    with pytest.raises(SerlibError, match="not among"):
        corpus_facts(pd.DataFrame({"label": ["boredom"]}))


def test_a_run_on_an_emodb_like_corpus_says_speaker_folds(tmp_path):
    table = anger_first_selection()
    selection = tmp_path / "selection.csv"
    table.to_csv(selection, index=False)
    folds = (np.arange(len(table)) % 5) + 1
    folder = write_run(tmp_path / "run", table, folds,
                       predict(table, accuracy=0.6, seed=0), protocol="session")
    config = json.loads((folder / "config.json").read_text())
    config["selection"].update(path=str(selection), corpus="emodb")
    (folder / "config.json").write_text(json.dumps(config))
    summary = json.loads((folder / "summary.json").read_text())
    summary["corpus"] = "emodb"
    (folder / "summary.json").write_text(json.dumps(summary))
    run = load_run(folder)
    facts = run_facts(run)
    assert facts.majority == "anger" and facts.fold_unit == "speaker fold"
    text = provenance(run, profile="real")
    assert "5-fold session" not in text and "speaker folds" in text
    assert "corpus: EmoDB" in text
    # without a readable selection: the run's own predictions, same facts
    config["selection"]["path"] = str(tmp_path / "gone.csv")
    (folder / "config.json").write_text(json.dumps(config))
    again = run_facts(load_run(folder))
    assert again.majority == "anger" and again.fold_unit == "speaker fold"


def test_a_generated_run_keeps_sessions(tmp_path):
    from tests.stats_runs import utterances

    table = utterances(n_per_speaker=20)
    folder = write_run(tmp_path / "g", table, assign_folds(table, protocol="session"),
                       predict(table, accuracy=0.6, seed=0))
    text = provenance(load_run(folder))
    assert "leave-one-session-out" in text and "not IEMOCAP" in text
