"""Fusion as a named model of the book: the profile's ``fusion:`` key, the fused run folders
written after the grid, and the results and verdicts that pair them like any run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serlib.book import Profile, write_profile_fusions
from serlib.errors import SerlibError
from serlib.report import recipe_comparison
from serlib.results import beside_label, beside_runs, fusion_sources, load_run
from serlib.stats import compare_runs, run_seed
from serlib.verdicts import verdict_table
from tests.stats_runs import assign_folds, predict, utterances, write_run

PROFILE = ("grid:\n  - {feature: mfcc, loss: focal}\n"
           "  - {feature: spectrogram, loss: focal, recipe: strong}\n"
           "training: {epochs: 1, seed: 0}\nseeds: [0, 1]\n")


def _profile(tmp_path, text: str) -> Profile:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return Profile.load(path)


@pytest.mark.parametrize("name", ["smoke", "real", "paper", "tiny"])
def test_shipped_profiles_fuse_the_strong_recipe_with_the_logistic_regression(name):
    profile = Profile.load(name)
    seeds = profile.seeds or (0,)
    fused = profile.fusion_runs()
    assert len(fused) == len(seeds)
    out, deep, base = fused[0]
    assert (out, deep, base) == ("fusion_spectrogram_focal_strong_logreg",
                                 "spectrogram_focal_strong", "baseline_logreg")
    trained = {run for run, _ in profile.runs()}
    assert {d for _, d, _ in fused} <= trained


def test_fusion_key_names_one_run_per_seed(tmp_path):
    profile = _profile(tmp_path, PROFILE + "baselines: [logreg]\n"
                       "fusion: [{of: spectrogram_focal_strong, with: logreg}]\n")
    assert profile.fusion_runs() == [
        ("fusion_spectrogram_focal_strong_logreg", "spectrogram_focal_strong",
         "baseline_logreg"),
        ("fusion_spectrogram_focal_strong_logreg_seed1", "spectrogram_focal_strong_seed1",
         "baseline_logreg_seed1")]
    assert _profile(tmp_path, PROFILE).fusion_runs() == []


@pytest.mark.parametrize(("text", "match"), [
    ("baselines: [logreg]\nfusion: [{of: mfcc_softmax, with: logreg}]\n",
     r"of='mfcc_softmax' is not a grid entry .*mfcc_focal, spectrogram_focal_strong"),
    ("fusion: [{of: mfcc_focal, with: logreg}]\n",
     r"with='logreg' is not among the profile's baselines \(none\)"),
    ("baselines: [logreg]\nfusion: [{of: mfcc_focal, with: svm}]\n",
     r"fusion.0.with: 'svm' is not one of"),
    ("baselines: [logreg]\nfusion: [{of: mfcc_focal}]\n",
     r"fusion.0: 'with' is a required property"),
])
def test_bad_fusion_entries_are_named(tmp_path, text, match):
    with pytest.raises(SerlibError, match=match) as error:
        _profile(tmp_path, PROFILE + text)
    assert "mine.yaml" in str(error.value)


def _runs(runs_dir, *, seeds=(0, 1)):
    """The paper recipe's MFCC runs, the strong recipe's and the baseline's, over seeds, on
    the same folds (the fused run needs only the last two)."""
    table = utterances(n_per_speaker=30, seed=0)
    for seed in seeds:
        suffix = f"_seed{seed}" if seed else ""
        folds = assign_folds(table, protocol="stratified", seed=seed)
        for i, (name, loss, accuracy) in enumerate((
                ("mfcc_softmax", "softmax", 0.5), ("mfcc_focal", "focal", 0.55),
                ("spectrogram_focal_strong", "focal", 0.7), ("baseline_logreg", "focal", 0.65))):
            folder = write_run(runs_dir / f"{name}{suffix}", table, folds,
                               predict(table, accuracy=accuracy, seed=10 * seed + i),
                               protocol="stratified", seed=seed, loss=loss)
            if name.startswith("baseline"):
                (folder / "config.json").write_text(json.dumps(
                    {"baseline": {"model": "logreg", "seed": seed}}))
    return runs_dir


def test_fused_run_folders_are_written_and_paired_like_any_run(tmp_path):
    runs_dir = _runs(tmp_path / "runs")
    profile = _profile(tmp_path, PROFILE + "baselines: [logreg]\n"
                       "fusion: [{of: spectrogram_focal_strong, with: logreg}]\n")
    written = write_profile_fusions(profile, runs_dir)
    assert [p.name for p in written] == ["fusion_spectrogram_focal_strong_logreg",
                                         "fusion_spectrogram_focal_strong_logreg_seed1"]
    fused = load_run(written[1])
    record = fused.summary["fusion"]
    assert record["selection"] == ["other-folds"]           # never the test fold
    assert run_seed(fused) == 1
    # the fused probabilities are the weighted mean of the two runs' of the same seed
    deep, base = (load_run(runs_dir / n) for n in ("spectrogram_focal_strong_seed1",
                                                   "baseline_logreg_seed1"))
    w = fused.predictions["fold"].map({int(k): v for k, v in record["weights"].items()})
    p = [c for c in fused.predictions if c.startswith("p_")]
    expected = (w.to_numpy()[:, None] * deep.predictions[p].to_numpy()
                + (1 - w.to_numpy()[:, None]) * base.predictions[p].to_numpy())
    assert np.allclose(fused.predictions[p].to_numpy(), expected)
    # the results see it beside the ResNet rows, and the statistics pair it seed by seed
    beside = beside_runs(runs_dir, seeds=True)
    assert list(beside) == ["spectrogram_focal_strong", "fusion_spectrogram_focal_strong_logreg",
                            "baseline_logreg"]
    name = "fusion_spectrogram_focal_strong_logreg"
    assert fusion_sources(beside[name]) == ("spectrogram_focal_strong", "baseline_logreg")
    assert beside_label(name, beside[name]).startswith("Fusion (late, measured): the strong")
    comparison = compare_runs(beside["spectrogram_focal_strong"], beside[name], n_resamples=20)
    assert comparison.n == 2 * 5 and comparison.seeds == (0, 1)
    labels = {n: beside_label(n, rs) for n, rs in beside.items()}
    table, sentences = recipe_comparison(beside["spectrogram_focal_strong"], beside,
                                         n_resamples=20, labels=labels)
    assert labels[name] in table.index
    against = [s for s in sentences if f"{labels[name]} against" in s]
    assert len(against) == 2                                 # the strong recipe, the baseline
    # rebuilt from the runs every time: a changed source changes the fused run
    before = load_run(written[0]).predictions
    write_profile_fusions(profile, runs_dir)
    assert load_run(written[0]).predictions.equals(before)


def test_a_missing_source_run_is_named(tmp_path):
    runs_dir = _runs(tmp_path / "runs", seeds=(0,))
    profile = _profile(tmp_path, PROFILE + "baselines: [logreg]\n"
                       "fusion: [{of: spectrogram_focal_strong, with: logreg}]\n")
    with pytest.raises(SerlibError, match="spectrogram_focal_strong_seed1 is not finished"):
        write_profile_fusions(profile, runs_dir)


def test_verdicts_test_the_fusion_against_both_runs_it_fuses(tmp_path):
    runs_dir = _runs(tmp_path / "runs", seeds=(0, 1, 2))
    table = utterances(n_per_speaker=30, seed=0)
    for seed in (0, 1, 2):        # the grid's other paper configurations
        suffix = f"_seed{seed}" if seed else ""
        folds = assign_folds(table, protocol="stratified", seed=seed)
        for i, (feature, loss) in enumerate((("spectrogram", "softmax"),
                                             ("spectrogram", "focal"))):
            write_run(runs_dir / f"{feature}_{loss}{suffix}", table, folds,
                      predict(table, accuracy=0.5, seed=100 + 10 * seed + i),
                      protocol="stratified", seed=seed, feature=feature, loss=loss)
    profile = _profile(tmp_path, PROFILE.replace("seeds: [0, 1]", "seeds: [0, 1, 2]")
                       + "baselines: [logreg]\n"
                       "fusion: [{of: spectrogram_focal_strong, with: logreg},\n"
                       "         {of: mfcc_focal, with: logreg}]\n")
    write_profile_fusions(profile, runs_dir)
    verdicts = verdict_table(runs_dir, studies={}, training={"seed": 0}, seeds=[0, 1, 2],
                             n_resamples=20)
    fusion = verdicts[verdicts["claim"].str.startswith("Fusion (the strong recipe + logistic")]
    assert list(fusion["claim"].str.split(" beats ").str[-1]) == [
        "the strong recipe", "logistic regression on MFCC mean and std"]
    assert (fusion["metric"] == "UA").all() and (fusion["p (one-sided)"] != "").all()
    assert fusion["note"].str.contains("never on the test fold").all()
    assert fusion["note"].str.contains("chosen by UA on").all()
    # a fused run of another grid entry is paired with that entry's runs too
    other = verdicts[verdicts["claim"] == "Fusion (mfcc_focal + logistic regression on MFCC "
                     "mean and std) beats mfcc_focal"]
    assert len(other) == 1 and other["p (one-sided)"].iloc[0] != ""
    # the strong recipe's own rows are not confused with the fusion's
    strong = verdicts[verdicts["claim"].str.startswith("The strong recipe beats")]
    assert len(strong) == 2
    # a fused run whose weights were chosen by log-loss says so
    from serlib.fusion import fuse_runs, write_fused_run

    for seed in (0, 1, 2):
        suffix = f"_seed{seed}" if seed else ""
        write_fused_run(fuse_runs(runs_dir / f"spectrogram_focal_strong{suffix}",
                                  runs_dir / f"baseline_logreg{suffix}",
                                  source="other-folds", criterion="log-loss"),
                        runs_dir / f"fusion_spectrogram_focal_strong_logreg{suffix}")
    verdicts = verdict_table(runs_dir, studies={}, training={"seed": 0}, seeds=[0, 1, 2],
                             n_resamples=20)
    fusion = verdicts[verdicts["claim"].str.startswith("Fusion (the strong recipe + logistic")]
    assert len(fusion) == 2 and fusion["note"].str.contains("chosen by log-loss on").all()
    # no fused run: no fusion row
    import shutil

    for folder in runs_dir.glob("fusion_*"):
        shutil.rmtree(folder)
    verdicts = verdict_table(runs_dir, studies={}, training={"seed": 0}, seeds=[0, 1, 2],
                             n_resamples=20)
    assert not verdicts["claim"].str.startswith("Fusion").any()
