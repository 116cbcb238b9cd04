"""Build the reproduction book: corpus -> selection -> every chapter through papermill -> HTML.

``build_book(profile=..., out_dir=...)`` (and ``serlib book``):

1. loads a profile (``book/profiles/<name>.yaml`` or a path): the corpus, the selection
   options and the training grid;
2. generates the built-in corpus under ``<out>/data`` unless a data root is given;
3. stages the book sources under ``<out>/staging`` (``_toc.yml`` gets one training page per
   configuration of the grid);
4. executes every chapter with papermill (the training chapter once per configuration), in
   order, each with the profile's parameters; executed notebooks stay in the staging folder;
5. renders HTML with Jupyter Book 1.x, execution off, warnings as errors, into ``<out>/html``.

Chapters hand results to each other only through files: ``<out>/selection.csv``,
``<out>/cache`` (feature store) and ``<out>/runs/<feature>_<loss>/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from serlib.errors import SerlibError

REPO_ROOT = Path(__file__).resolve().parent.parent
BOOK_DIR = REPO_ROOT / "book"
PROFILES_DIR = BOOK_DIR / "profiles"

#: The paper's grid of configurations (feature, loss), in Table 4's order.
PAPER_GRID = (("spectrogram", "softmax"), ("spectrogram", "focal"), ("mfcc", "softmax"),
              ("mfcc", "focal"))


@dataclass(frozen=True)
class Profile:
    """How a build runs: which corpus, how the chapters are parameterised."""

    name: str
    description: str = ""
    corpus_size: str = "small"           # generated corpus size when no data root is given
    corpus_seed: int = 0
    selection: dict = field(default_factory=dict)   # select_utterances keyword arguments
    grid: tuple[tuple[str, str], ...] = PAPER_GRID  # (feature, loss) pairs to train
    training: dict = field(default_factory=dict)    # TrainConfig fields shared by the grid
    requires_data_root: bool = False

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> Profile:
        """A profile by name (``smoke``, ``paper``, ``tiny``) or from a YAML file."""
        path = Path(name_or_path)
        if not path.suffix:
            path = PROFILES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
            raise SerlibError(f"{path}: no such profile (known: {known})")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise SerlibError(f"{path}: not valid YAML: {error}") from error
        allowed = {"name", "description", "corpus", "selection", "grid", "training",
                   "requires_data_root"}
        unknown = set(data) - allowed
        if unknown:
            raise SerlibError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
        corpus = data.get("corpus", {}) or {}
        grid = tuple((g["feature"], g["loss"]) for g in data.get("grid", [])) or PAPER_GRID
        profile = cls(
            name=str(data.get("name", path.stem)),
            description=str(data.get("description", "")).strip(),
            corpus_size=str(corpus.get("size", "small")),
            corpus_seed=int(corpus.get("seed", 0)),
            selection=dict(data.get("selection", {}) or {}),
            grid=grid,
            training=dict(data.get("training", {}) or {}),
            requires_data_root=bool(data.get("requires_data_root", False)),
        )
        profile.validate(path)
        return profile

    def validate(self, where: Path | str = "profile") -> None:
        from serlib.corpora.synthetic import SIZES
        from serlib.training import TrainConfig

        if self.corpus_size not in SIZES:
            raise SerlibError(f"{where}: corpus.size={self.corpus_size!r} must be one of "
                              f"{', '.join(SIZES)}")
        for feature, loss in self.grid:
            # building each TrainConfig validates every field, with the field named
            try:
                TrainConfig(**{**self.training, "feature": feature, "loss": loss})
            except TypeError as error:
                raise SerlibError(f"{where}: training: {error}") from None
            except SerlibError as error:
                raise SerlibError(f"{where}: {error}") from None
        allowed = {"merge_excited", "min_agree", "max_seconds", "improvised_only"}
        unknown = set(self.selection) - allowed
        if unknown:
            raise SerlibError(f"{where}: selection: unknown key(s) {', '.join(sorted(unknown))}")


def training_page(feature: str, loss: str) -> str:
    return f"05_training_{feature}_{loss}"


def stage_sources(staging: Path, profile: Profile, *, build_info: str) -> None:
    """Copy the book sources into ``staging`` and write its ``_toc.yml`` for the grid."""
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(BOOK_DIR, staging / "book", ignore=shutil.ignore_patterns(
        "profiles", ".ipynb_checkpoints", "__pycache__"))
    shutil.copy(REPO_ROOT / "_config.yml", staging / "_config.yml")
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    for part in toc["parts"]:
        chapters = []
        for chapter in part["chapters"]:
            if chapter["file"] == "book/05_training_overview":
                sections = [{"file": f"book/{training_page(f, loss)}"} for f, loss in profile.grid]
                chapters.append({"file": chapter["file"], "sections": sections})
            else:
                chapters.append(chapter)
        part["chapters"] = chapters
    (staging / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    (staging / "book" / "build_info.md").write_text(build_info)


def execute_chapter(source: Path, target: Path, *, parameters: dict, cwd: Path,
                    chapter: str, title: str | None = None) -> None:
    """Run one notebook with papermill; a failing cell becomes a SerlibError naming it."""
    import nbformat
    import papermill

    if title is not None:
        # one source notebook, one page per configuration: give each page its own title
        notebook = nbformat.read(source, as_version=4)
        first = notebook.cells[0]
        first.source = "\n".join([f"# {title}", *first.source.splitlines()[1:]])
        source = target.with_suffix(".source.ipynb")
        nbformat.write(notebook, source)
    try:
        papermill.execute_notebook(
            str(source), str(target), parameters=parameters, kernel_name="python3",
            cwd=str(cwd), progress_bar=False, log_output=False,
            # the kernel's own log: errors only (not its warning about local TCP sockets)
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except papermill.PapermillExecutionError as error:
        head = (error.source or "").strip().splitlines()
        raise SerlibError(
            f"chapter {chapter} failed in cell {error.exec_count} "
            f"({head[0] if head else 'empty cell'!r}...): {error.ename}: {error.evalue}\n"
            f"executed notebook kept at {target}"
        ) from None
    finally:
        if title is not None:
            source.unlink(missing_ok=True)


def chapter_plan(profile: Profile, paths: dict) -> list[tuple[str, str, dict]]:
    """(source notebook stem, executed page stem, papermill parameters) in execution order."""
    plan = [
        ("02_data_selection", "02_data_selection", {
            "data_root": paths["data_root"], "manifest": paths["manifest"],
            "corpus": paths.get("corpus", "iemocap"),
            "selection_path": paths["selection"], **profile.selection}),
        ("03_features", "03_features", {
            "selection_path": paths["selection"], "cache_dir": paths["cache"]}),
        ("04_model_and_focal_loss", "04_model_and_focal_loss", {}),
    ]
    for feature, loss in profile.grid:
        plan.append(("05_training", training_page(feature, loss), {
            "selection_path": paths["selection"],
            "cache_dir": paths["cache"],
            "run_dir": str(Path(paths["runs"]) / f"{feature}_{loss}"),
            "feature": feature, "loss": loss, **profile.training}))
    plan.append(("06_results", "06_results", {"runs_dir": paths["runs"],
                                              "profile": profile.name}))
    return plan


def build_book(*, profile: str | Profile = "smoke", out_dir: str | os.PathLike = "_build",
               data_root: str | os.PathLike | None = None,
               manifest: str | os.PathLike | None = None,
               corpus: str = "iemocap", quiet: bool = False) -> Path:
    """Execute every chapter and render the book; returns ``<out_dir>/html``.

    Parameters
    ----------
    profile : str or Profile
        ``smoke`` (generated corpus, CPU, 2 to 6 minutes on 2 cores), ``paper`` (real IEMOCAP,
        width 64, one GPU), ``tiny`` (tests) or a YAML path.
    out_dir : path
        Build folder: data, selection, feature cache, runs, staging and ``html``.
    data_root : path, optional
        The corpus folder: an IEMOCAP release (real or generated) by default, else the corpus
        named by ``corpus``; default: generate the built-in corpus.
    manifest : path, optional
        A manifest CSV instead of a corpus folder.
    corpus : str
        Which corpus ``data_root`` holds: ``iemocap`` or a public corpus
        (:data:`serlib.corpora.CORPUS_NAMES`); the data chapter reads it by name.
    quiet : bool
        No progress lines.
    """
    from serlib.corpora.public import CORPUS_NAMES, canonical_name
    from serlib.provenance import commit_hash

    corpus = canonical_name(corpus)
    if corpus not in CORPUS_NAMES:
        raise SerlibError(f"corpus={corpus!r} is not known (known: {', '.join(CORPUS_NAMES)})")
    if corpus != "iemocap" and (data_root is None or manifest is not None):
        raise SerlibError(f"corpus={corpus!r} needs data_root (--data-root), the folder "
                          "holding its audio, and no manifest")
    if not isinstance(profile, Profile):
        profile = Profile.load(profile)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    generated = data_root is None and manifest is None
    if generated:
        if profile.requires_data_root:
            raise SerlibError(f"profile {profile.name!r} needs --data-root (a real corpus: "
                              "IEMOCAP, or a public one with --corpus NAME); the smoke "
                              "profile runs on the built-in corpus")
        from serlib.corpora.synthetic import generate_corpus

        say(f"[corpus] generating the built-in corpus ({profile.corpus_size}) under {out}/data")
        data_root = generate_corpus(out / "data", seed=profile.corpus_seed,
                                    size=profile.corpus_size, progress=not quiet)
    paths = {
        "data_root": "" if data_root is None else str(Path(data_root).resolve()),
        "manifest": "" if manifest is None else str(Path(manifest).resolve()),
        "corpus": corpus,
        "selection": str(out / "selection.csv"),
        "cache": str(out / "cache"),
        "runs": str(out / "runs"),
    }
    staging = out / "staging"
    source = paths["data_root"] or paths["manifest"]
    kind = "manifest" if manifest is not None else "generated" if generated else corpus
    build_info = (
        "```{admonition} This build\n"
        f"- profile: **{profile.name}**: {profile.description}\n"
        f"- corpus: {kind} `{source}`\n"
        f"- commit: `{commit_hash()}`, built {time.strftime('%Y-%m-%d %H:%M %Z')}\n"
        "```\n"
    )
    stage_sources(staging, profile, build_info=build_info)
    plan = chapter_plan(profile, paths)
    book = staging / "book"
    for number, (source, page, parameters) in enumerate(plan, start=1):
        started = time.perf_counter()
        say(f"[{number}/{len(plan)}] executing {page} ...")
        title = None
        if source == "05_training":
            title = f"Training: {parameters['feature']} + {parameters['loss']} loss"
        execute_chapter(book / f"{source}.ipynb", book / f"{page}.ipynb",
                        parameters=parameters, cwd=book, chapter=page, title=title)
        say(f"[{number}/{len(plan)}] {page} done in {time.perf_counter() - started:.0f} s")
    say("[html] rendering with Jupyter Book ...")
    render_html(staging, out / "html", quiet=quiet)
    say(f"[html] {out / 'html' / 'index.html'}")
    return out / "html"


def render_html(staging: Path, target: Path, *, quiet: bool = True) -> None:
    """``jupyter-book build`` (execution off, warnings as errors), then move the HTML."""
    work = staging.parent / "jupyter-book"
    executable = Path(sys.executable).with_name("jupyter-book")
    if not executable.exists():
        found = shutil.which("jupyter-book")
        if found is None:
            raise SerlibError("jupyter-book is not installed: pip install -e '.[book]'")
        executable = Path(found)
    command = [str(executable), "build", str(staging), "--path-output", str(work),
               "--builder", "html", "-W", "--keep-going"]
    if quiet:
        command.append("--quiet")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        log = (result.stdout + result.stderr)[-4000:]
        raise SerlibError(f"jupyter-book build of {staging} failed:\n{log}")
    html = work / "_build" / "html"
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(html), str(target))
