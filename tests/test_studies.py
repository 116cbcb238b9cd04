"""serlib.studies: expanding a profile's studies into the runs to train, and their rows."""

from __future__ import annotations

import pytest

from serlib.errors import SerlibError
from serlib.studies import expand_studies, run_name, study_rows

BASE = {"gamma": 2.0, "protocol": "stratified", "folds": 5, "epochs": 12, "width": 8,
        "seed": 0}
PAPER_FOUR = [{"feature": f, "loss": loss} for f in ("spectrogram", "mfcc")
              for loss in ("softmax", "focal")]
STUDIES = {
    "leakage": {"shared": {"protocol": ["stratified", "session"]}, "runs": PAPER_FOUR,
                "reference": {"protocol": "stratified"}},
    "imbalance": {
        "shared": {"feature": "mfcc", "protocol": "session"},
        "runs": [{"loss": "softmax"}, {"loss": "softmax", "class_weights": "inverse"},
                 {"loss": "softmax", "sampler": "balanced"},
                 {"loss": "focal", "gamma": [0.5, 1, 2, 5]},
                 {"loss": "focal", "gamma": 2, "class_weights": "inverse"}],
        "reference": {"loss": "softmax"},
        "posthoc": [{"method": "logit_adjustment", "of": {"loss": "softmax"}, "tau": 1.0}]},
}


def test_paper_four_keep_todays_names_and_shared_configs_train_once():
    runs = expand_studies(STUDIES, base_training=BASE, seeds=[0])
    names = [n for n, _ in runs]
    assert names[:8] == ["spectrogram_softmax", "session/spectrogram_softmax",
                         "spectrogram_focal", "session/spectrogram_focal",
                         "mfcc_softmax", "session/mfcc_softmax",
                         "mfcc_focal", "session/mfcc_focal"]
    # imbalance: its softmax and focal gamma 2 are leakage's session MFCC runs: not repeated
    assert len(names) == len(set(names)) == 8 + 6
    assert "session/mfcc_focal_g0.5" in names and "session/mfcc_focal_g5" in names
    assert "session/mfcc_softmax_class_weights-inverse" in names
    assert "session/mfcc_softmax_sampler-balanced" in names
    assert "session/mfcc_focal_class_weights-inverse" in names
    overrides = dict(runs)["session/mfcc_focal_g0.5"]
    assert overrides == {"feature": "mfcc", "loss": "focal", "gamma": 0.5,
                         "protocol": "session", "seed": 0}


def test_seeds_repeat_every_run_with_a_suffix():
    runs = expand_studies({"leakage": STUDIES["leakage"]}, base_training=BASE, seeds=[0, 1, 2])
    names = [n for n, _ in runs]
    assert len(names) == 8 * 3
    assert "mfcc_focal" in names and "mfcc_focal_seed1" in names
    assert dict(runs)["session/mfcc_focal_seed2"]["seed"] == 2
    # a study's own seeds win over the profile's
    own = {"x": {"runs": [{"feature": "mfcc", "loss": "softmax"}], "seeds": [3]}}
    assert expand_studies(own, base_training=BASE, seeds=[0]) == [
        ("mfcc_softmax_seed3", {"feature": "mfcc", "loss": "softmax",
                                "protocol": "stratified", "seed": 3})]


def test_names_are_stable_and_dedupe_ignores_how_a_field_was_given():
    a = {"feature": "mfcc", "loss": "focal", "protocol": "session", "seed": 0}
    b = {**a, "gamma": 2.0}                 # the base gamma spelled out
    assert run_name(a | {"gamma": 2.0}, base_training=BASE) == run_name(b, base_training=BASE)
    runs = expand_studies({"one": {"runs": [a]}, "two": {"runs": [b]}}, base_training=BASE)
    assert [n for n, _ in runs] == ["session/mfcc_focal"]


def test_alpha_list_is_one_value_and_list_of_lists_sweeps():
    one = {"s": {"runs": [{"feature": "mfcc", "loss": "focal", "alpha": [1, 2, 1, 2]}]}}
    assert len(expand_studies(one, base_training=BASE)) == 1
    two = {"s": {"runs": [{"feature": "mfcc", "loss": "focal",
                           "alpha": [[1, 2, 1, 2], [1, 1, 1, 1]]}]}}
    names = [n for n, _ in expand_studies(two, base_training=BASE)]
    assert names == ["mfcc_focal_alpha-1-2-1-2", "mfcc_focal_alpha-1-1-1-1"]


def test_rows_name_the_reference_and_the_posthoc_source():
    rows = study_rows(STUDIES, "imbalance", base_training=BASE, seeds=[0, 1])
    labels = [r.label for r in rows]
    assert labels[0] == "softmax" and rows[0].reference
    assert sum(r.reference for r in rows) == 1
    assert all(r.compare_with == "softmax" for r in rows[1:])
    assert "focal, gamma 0.5" in labels
    assert "softmax, inverse class weights" in labels
    posthoc = rows[-1]
    assert posthoc.kind == "posthoc" and posthoc.posthoc["tau"] == 1.0
    assert posthoc.runs == ("session/mfcc_softmax", "session/mfcc_softmax_seed1")
    trained = {n for n, _ in expand_studies(STUDIES, base_training=BASE, seeds=[0, 1])}
    assert all(set(r.runs) <= trained for r in rows)
    leak = study_rows(STUDIES, "leakage", base_training=BASE)
    assert [r.label for r in leak[:2]] == ["spectrogram, softmax, stratified",
                                           "spectrogram, softmax, session"]
    assert [r.reference for r in leak] == [True, False] * 4
    assert leak[3].compare_with == "spectrogram, focal, stratified"


def test_bad_studies_are_refused_with_the_place_named():
    with pytest.raises(SerlibError, match=r"studies.x: unknown key\(s\) grid"):
        expand_studies({"x": {"runs": [{}], "grid": []}}, base_training=BASE)
    with pytest.raises(SerlibError, match="studies.x.runs"):
        expand_studies({"x": {"runs": []}}, base_training=BASE)
    with pytest.raises(SerlibError, match="matches no configuration"):
        study_rows({"x": {"runs": [{"loss": ["softmax", "focal"]}],
                          "reference": {"feature": "spectrogram"},
                          "shared": {"feature": "mfcc"}}}, "x", base_training=BASE)
    with pytest.raises(SerlibError, match="no study 'y'"):
        study_rows(STUDIES, "y", base_training=BASE)
