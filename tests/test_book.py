"""The book runner: profiles, staging, papermill errors, and (slow) a whole build."""

from __future__ import annotations

import json

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from serlib.book import PAPER_GRID, Profile, chapter_plan, execute_chapter, stage_sources
from serlib.cli import main
from serlib.errors import SerlibError

PAGES = ["01_introduction", "02_data_selection", "03_features", "04_model_and_focal_loss",
         "05_training_overview", "06_results", "06b_verdicts", "07_speaker_leakage", "08_imbalance",
         "09_using_the_model", "10_api"] + [
    f"05_training_{f}_{loss}" for f, loss in PAPER_GRID] + ["05_training_spectrogram_focal_strong"]


@pytest.mark.parametrize("name", ["smoke", "paper", "tiny"])
def test_shipped_profiles_are_valid(name):
    profile = Profile.load(name)
    # the paper's four keep their folder names; the strong recipe is one more row
    names = [run for run, _ in profile.runs()]
    seeds = profile.seeds or (0,)
    first_seed = names[::len(seeds)]
    assert first_seed == [f"{f}_{loss}" for f, loss in PAPER_GRID] + ["spectrogram_focal_strong"]
    assert profile.requires_data_root == (name == "paper")
    # every profile trains both studies and the logistic-regression baseline
    assert set(profile.studies) == {"leakage", "imbalance", "controlled_imbalance"}
    assert "logreg" in profile.baselines
    study = [run for run, _ in profile.all_runs() if run.startswith("session/")]
    assert any("class_weights-inverse" in run for run in study)


def test_real_profile_is_speaker_independent():
    profile = Profile.load("real")
    assert profile.requires_data_root
    assert [(g["feature"], g["loss"]) for g in profile.grid[:4]] == list(PAPER_GRID)
    # Tables 1-4 under the paper's protocol; the leakage study trains the same grid
    # speaker-independently
    assert (profile.training["protocol"], profile.training["folds"]) == ("stratified", 5)
    session = [run for run, config in profile.all_runs() if config.protocol == "session"]
    assert {f"session/{f}_{loss}" for f, loss in PAPER_GRID} <= set(session)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"corpus": "esd", "data_root": "/d"}, "corpus='esd' is not known"),
    ({"corpus": "emodb"}, "corpus='emodb' needs data_root"),
    ({"corpus": "emodb", "data_root": "/d", "manifest": "/m.csv"}, "and no manifest"),
])
def test_book_corpus_is_checked_first(tmp_path, kwargs, match):
    from serlib.book import build_book

    with pytest.raises(SerlibError, match=match):
        build_book(profile="tiny", out_dir=tmp_path / "out", quiet=True, **kwargs)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_paper_profile_uses_paper_network():
    assert Profile.load("paper").training["width"] == 64
    assert Profile.load("smoke").corpus_size == "small"


@pytest.mark.parametrize(("text", "match"), [
    ("training: {epochs: 0}", r"TrainConfig\.epochs=0"),
    ("training: {epoch: 3}", r"training: .*'epoch' was unexpected"),
    ("corpus: {size: huge}", "corpus.size='huge'"),
    ("colour: red", r"\(top level\): .*'colour' was unexpected"),
    ("selection: {min_agreement: 2}", r"selection: .*'min_agreement' was unexpected"),
    # issue 10, finding 7: types checked before anything runs, errors name the key
    ("corpus: 5", r"corpus: 5 is not of type 'object'"),
    ("grid: [{feature: mfcc}]", r"grid.0: 'loss' is a required property"),
    ("grid: mfcc", r"grid: 'mfcc' is not of type 'array'"),
    ("training: {seed: abc}", r"training.seed: 'abc' is not of type 'integer'"),
    ("training: [1, 2]", r"training: \[1, 2\] is not of type 'object'"),
    ('requires_data_root: "no"', r"requires_data_root: 'no' is not of type 'boolean'"),
    ("selection: {min_agree: two}", r"selection.min_agree: 'two' is not of type 'integer'"),
    ("seeds: [0, x]", r"seeds.1: 'x' is not of type 'integer'"),
    ("engine: {name: spark}", r"engine.name: 'spark' is not one of"),
    ("engine: {batched: sometimes}", r"engine.batched: 'sometimes' is not of type"),
])
def test_bad_profile_is_named(tmp_path, text, match):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(SerlibError, match=match) as error:
        Profile.load(path)
    assert "mine.yaml" in str(error.value)


def test_grid_entries_override_any_field_and_seeds_repeat_them(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("grid:\n  - {feature: mfcc, loss: focal}\n"
                    "  - {feature: mfcc, loss: focal, gamma: 0.5, protocol: session}\n"
                    "  - {name: weighted, feature: mfcc, loss: focal, alpha: [1, 2, 1, 2]}\n"
                    "training: {gamma: 2.0, epochs: 1}\nseeds: [0, 1]\n"
                    "engine: {name: local, jobs: 2}\n")
    profile = Profile.load(path)
    runs = dict(profile.runs())
    assert list(runs) == ["mfcc_focal", "mfcc_focal_seed1",
                          "session/mfcc_focal_g0.5", "session/mfcc_focal_g0.5_seed1",
                          "weighted", "weighted_seed1"]
    assert runs["session/mfcc_focal_g0.5_seed1"].seed == 1
    assert runs["session/mfcc_focal_g0.5"].protocol == "session"
    # one naming rule: a grid entry and the same study configuration share their folder
    from serlib.studies import expand_studies
    study = dict(expand_studies({"s": {"runs": [{"feature": "mfcc", "loss": "focal",
                                                  "gamma": 0.5, "protocol": "session"}]}},
                                base_training=profile.training, seeds=[0, 1]))
    assert set(study) == {"session/mfcc_focal_g0.5", "session/mfcc_focal_g0.5_seed1"}
    assert runs["weighted"].alpha == (1.0, 2.0, 1.0, 2.0) and runs["weighted"].epochs == 1
    assert profile.engine == {"name": "local", "jobs": 2}
    plan = chapter_plan(profile, {"data_root": "/d", "manifest": "", "selection": "/s.csv",
                                  "cache": "/c", "runs": "/r"})
    weighted = next(p for _, page, p in plan if page == "05_training_weighted")
    assert weighted["overrides"] == {"alpha": [1.0, 2.0, 1.0, 2.0]}
    assert weighted["run_dir"] == "/r/weighted"


def test_unknown_profile():
    with pytest.raises(SerlibError, match="no such profile.*known: paper, real, smoke, tiny"):
        Profile.load("fast")


def test_paper_profile_needs_data_root(tmp_path, capsys):
    assert main(["book", "--profile", "paper", "--out", str(tmp_path)]) == 2
    assert "needs --data-root" in capsys.readouterr().err


def test_staging_expands_training_pages(tmp_path):
    profile = Profile.load("tiny")
    stage_sources(tmp_path / "staging", profile, build_info="built here\n")
    toc = yaml.safe_load((tmp_path / "staging" / "_toc.yml").read_text())
    training = [c for part in toc["parts"] for c in part["chapters"]
                if c["file"] == "book/05_training_overview"][0]
    assert [s["file"] for s in training["sections"]] == [
        f"book/05_training_{f}_{loss}" for f, loss in PAPER_GRID] + [
        "book/05_training_spectrogram_focal_strong"]
    assert (tmp_path / "staging" / "book" / "build_info.md").read_text() == "built here\n"
    assert not (tmp_path / "staging" / "book" / "profiles").exists()

    plan = chapter_plan(profile, {"data_root": "/d", "manifest": "", "selection": "/s.csv",
                                  "cache": "/c", "runs": "/r"})
    pages = [page for _, page, _ in plan]
    assert plan[0][2]["corpus"] == "iemocap"  # the data chapter's default
    emodb = chapter_plan(profile, {"data_root": "/d", "manifest": "", "corpus": "emodb",
                                   "selection": "/s.csv", "cache": "/c", "runs": "/r"})
    assert emodb[0][2]["corpus"] == "emodb" and emodb[0][2]["data_root"] == "/d"
    assert pages[0] == "02_data_selection"
    assert pages[-7:] == ["06_results", "06b_verdicts", "07_speaker_leakage", "08_imbalance",
                          "08b_calibration", "08c_controlled_imbalance", "09_using_the_model"]
    assert plan[-2][2]["selection_path"] == "/s.csv"        # which profiles the corpus can give
    study = plan[-4][2]
    assert study["studies"] == profile.studies and study["runs_dir"] == "/r"
    assert plan[-1][2]["run_name"] == "mfcc_focal" and plan[-1][2]["data_root"] == "/d"
    mfcc_focal = next(p for _, page, p in plan if page == "05_training_mfcc_focal")
    assert mfcc_focal["run_dir"] == "/r/mfcc_focal" and mfcc_focal["epochs"] == 1


def test_failing_cell_names_chapter_and_cell(tmp_path):
    nb = new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("1 / 0  # boom")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    source = tmp_path / "broken.ipynb"
    nbformat.write(nb, source)
    with pytest.raises(SerlibError) as error:
        execute_chapter(source, tmp_path / "out.ipynb", parameters={}, cwd=tmp_path,
                        chapter="99_broken")
    message = str(error.value)
    assert "chapter 99_broken failed in cell 2" in message
    assert "ZeroDivisionError" in message and "1 / 0  # boom" in message
    assert (tmp_path / "out.ipynb").exists()  # the executed notebook is kept


def test_model_chapter_executes(tmp_path):
    import papermill

    from serlib.book import BOOK_DIR

    out = tmp_path / "04.ipynb"
    papermill.execute_notebook(str(BOOK_DIR / "04_model_and_focal_loss.ipynb"), str(out),
                               parameters={"width": 8}, kernel_name="python3",
                               progress_bar=False, cwd=str(tmp_path))
    text = json.dumps(nbformat.read(out, as_version=4).cells)
    assert "11,172,292 parameters" in text and "96 % lower" in text


def _execute(name, tmp_path, **parameters):
    import papermill

    from serlib.book import BOOK_DIR

    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(str(BOOK_DIR / f"{name}.ipynb"), str(out), parameters=parameters,
                               kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    return json.dumps(nbformat.read(out, as_version=4).cells)


def test_chapters_chain_through_files(synthetic_root, tmp_path):
    """Data -> features -> one training run -> results, each chapter executed by papermill
    with tiny parameters and reading only the files the previous one wrote."""
    selection, cache, runs = tmp_path / "selection.csv", tmp_path / "cache", tmp_path / "runs"
    text = _execute("02_data_selection", tmp_path, data_root=str(synthetic_root),
                    selection_path=str(selection))
    assert selection.is_file() and "generated IEMOCAP-shaped corpus" in text
    assert "nothing to check" in text  # the IEMOCAP count check only runs on real IEMOCAP
    text = _execute("03_features", tmp_path, selection_path=str(selection), cache_dir=str(cache))
    assert "max |difference|" in text
    text = _execute("05_training", tmp_path, selection_path=str(selection), cache_dir=str(cache),
                    run_dir=str(runs / "mfcc_focal"), feature="mfcc", loss="focal", folds=2,
                    epochs=1, width=4, batch_size=16, patience=0, device="cpu")
    assert (runs / "mfcc_focal" / "summary.json").is_file() and "image/png" in text
    text = _execute("06_results", tmp_path, runs_dir=str(runs), profile="tiny")
    assert "Ours: MFCC + focal loss" in text and "no MFCC + softmax run in this build" in text


@pytest.mark.slow
def test_whole_book_builds(built_book):
    for page in PAGES:
        assert (built_book / "book" / f"{page}.html").is_file(), page
    results = (built_book / "book" / "06_results.html").read_text()
    assert "Table 1" in results and "Satt et al. (2017)" in results
    assert (built_book / "_static" / "mathjax" / "tex-chtml.js").is_file()  # offline math


def test_training_pages_are_titled_by_recipe_and_seed():
    from serlib.book import run_recipe, training_title

    profile = Profile.load("tiny")
    runs = dict(profile.runs())
    assert run_recipe(profile, "spectrogram_focal_strong") == "strong"
    assert run_recipe(profile, "mfcc_focal") == "paper"
    titles = {name: training_title(profile, name, config) for name, config in runs.items()}
    assert titles["mfcc_focal"] == "Training: mfcc + focal loss"
    assert titles["spectrogram_focal_strong"] == \
        "Training: spectrogram + focal loss, the strong recipe"
    assert len(set(titles.values())) == len(titles)       # no two pages share a title
    plan = chapter_plan(profile, {"data_root": "/d", "manifest": "", "selection": "/s.csv",
                                  "cache": "/c", "runs": "/r"})
    parameters = {page: p for _, page, p in plan}
    assert parameters["05_training_spectrogram_focal_strong"]["recipe"] == "strong"
    assert parameters["05_training_mfcc_focal"]["recipe"] == "paper"
    # the model chapter describes the network the build trains, not a fixed 64
    assert parameters["04_model_and_focal_loss"] == {"width": 4}
    assert parameters["09_using_the_model"]["selection_path"] == "/s.csv"


def test_introduction_box_states_each_tables_protocol():
    from serlib.book import protocol_lines

    profile = Profile.load("real")
    lines = protocol_lines(profile, sessions=False)
    assert lines[0].startswith("Tables 1-4 and the training pages: 5 stratified folds")
    leakage = next(line for line in lines if "leakage" in line)
    imbalance = next(line for line in lines if "imbalance" in line)
    assert "both protocols" in leakage and "speaker folds" in leakage
    assert "speaker folds" in imbalance and "stratified" not in imbalance
    assert "session" not in " ".join(lines)              # EmoDB has no sessions
    assert "leave-one-session-out" in protocol_lines(profile, sessions=True)[-1]
    assert "speaker-independent" not in profile.description.split("(")[0]


def test_chapters_get_relative_paths_and_notebooks_are_relativised(tmp_path):
    from serlib.book import REPO_ROOT, path_prefixes, relative_paths, relativise_notebook

    out = tmp_path / "build"
    book = out / "staging" / "book"
    data = tmp_path / "corpora" / "emodb"
    paths = {"data_root": str(data), "manifest": "", "corpus": "emodb",
             "selection": str(out / "selection.csv"), "cache": str(out / "cache"),
             "runs": str(out / "runs")}
    relative = relative_paths(paths, root=out, start=book)
    assert relative["selection"] == "../../selection.csv" and relative["runs"] == "../../runs"
    assert relative["data_root"] == str(data)            # outside the build: kept
    prefixes = path_prefixes(paths, root=out, start=book)
    assert prefixes[str(out.resolve())] == "../.."
    assert prefixes[str(data.resolve())] == "<data root>"
    assert prefixes[str(REPO_ROOT)] == "<serlib>"

    nb = new_notebook(cells=[new_code_cell(f'runs_dir = "{out}/runs"')])
    nb.cells[0].outputs = [nbformat.v4.new_output(
        "stream", name="stderr", text=f"{REPO_ROOT}/serlib/x.py:1: warning in {data}/a.wav\n")]
    nb.metadata["papermill"] = {"input_path": f"{book}/02.source.ipynb"}
    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, path)
    assert relativise_notebook(path, prefixes) == 3
    text = path.read_text()
    assert str(tmp_path) not in text and str(REPO_ROOT) not in text
    assert 'runs_dir = \\"../../runs\\"' in text
    assert "<serlib>/serlib/x.py" in text and "<data root>/a.wav" in text
    nbformat.read(path, as_version=4)                     # still a valid notebook


@pytest.mark.slow
def test_executed_notebooks_carry_no_absolute_paths(built_book):
    from serlib.book import REPO_ROOT

    build = built_book.parent.resolve()
    executed = sorted((build / "staging" / "book").glob("*.ipynb"))
    assert len(executed) >= 8
    for notebook in executed:
        text = notebook.read_text()
        assert str(build) not in text, notebook.name
        assert str(REPO_ROOT) not in text, notebook.name


def _anger_corpus(folder):
    """A manifest corpus whose largest class is anger, upsampled from 16 kHz and cut at 2 s,
    with no sessions: 4 speakers, anger 4 / neutral 2 / sadness 2 / happiness 1 clips each."""
    import librosa
    import numpy as np
    import soundfile

    from serlib.corpora.speech import synthesize_speech

    counts = {"anger": 4, "neutral": 2, "sadness": 2, "happiness": 1}
    rows = []
    for s, speaker in enumerate(["s1", "s2", "s3", "s4"]):
        for label, n in counts.items():
            for k in range(n):
                y = synthesize_speech(duration_s=2.5, sample_rate=16000, emotion=label,
                                      speaker="Ses01F" if s % 2 else "Ses01M", seed=100 * s + k)
                y = librosa.resample(y, orig_sr=16000, target_sr=22050)[: 2 * 22050]
                name = f"{speaker}_{label}_{k}.wav"
                soundfile.write(folder / name, y.astype(np.float32), 22050, subtype="PCM_16")
                rows.append(f"{name},{label},{speaker},{'F' if s % 2 else 'M'}")
    (folder / "manifest.csv").write_text("path,label,speaker,gender\n" + "\n".join(rows) + "\n")
    return folder / "manifest.csv"


@pytest.mark.slow
def test_data_chapter_reads_the_builds_selection_and_knows_its_corpus(tmp_path):
    """The data chapter on a corpus unlike IEMOCAP (anger the largest class, no sessions,
    16-kHz audio upsampled and cut at 2 s): it reads the selection the build made, refuses
    one that does not match, and every class- or corpus-dependent sentence is measured."""
    import papermill

    from serlib.corpora import load_manifest, select_utterances, write_selection

    (tmp_path / "corpus").mkdir()
    manifest = _anger_corpus(tmp_path / "corpus")
    selection = tmp_path / "selection.csv"
    write_selection(select_utterances(load_manifest(manifest)), selection)
    stamp = selection.stat().st_mtime_ns
    cells = json.loads(_execute("02_data_selection", tmp_path, manifest=str(manifest),
                                selection_path=str(selection)))
    text = json.dumps([cell.get("outputs", []) for cell in cells])   # what the page says
    assert selection.stat().st_mtime_ns == stamp         # read, not selected again
    assert "reads the build's selection table" in text
    assert "largest class is **anger** (16 utterances" in text
    assert "smallest **happiness** (4," in text
    assert "speaker folds" in text and "IEMOCAP has five sessions" not in text
    assert "nothing above 8,000 Hz" in text and "16,000 Hz" in text
    assert "The duration histogram above is one spike" in text

    write_selection(select_utterances(load_manifest(manifest), max_seconds=1.0), selection)
    with pytest.raises(papermill.PapermillExecutionError, match="is not what these options"):
        _execute("02_data_selection", tmp_path, manifest=str(manifest),
                 selection_path=str(selection))
