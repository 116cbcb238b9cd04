"""Build the reproduction book: corpus -> selection -> every chapter through papermill -> HTML.

``build_book(profile=..., out_dir=...)`` (and ``serlib book``):

1. loads a profile (``book/profiles/<name>.yaml`` or a path): the corpus, the selection
   options and the training grid;
2. generates the built-in corpus under ``<out>/data`` unless a data root is given, makes the
   selection and trains every run of the profile with :func:`serlib.grid.run_grid` (in
   parallel: local process pool or Ray), so that the training pages only read finished runs;
   then writes the profile's fused runs (``fusion:``, :func:`write_profile_fusions`);
3. stages the book sources under ``<out>/staging`` (``_toc.yml`` gets one training page per
   configuration of the grid);
4. executes every chapter with papermill (the training chapter once per configuration), in
   order, each with the profile's parameters; executed notebooks stay in the staging folder;
5. renders HTML with Jupyter Book 1.x, execution off, warnings as errors, into ``<out>/html``.

Chapters hand results to each other only through files: ``<out>/selection.csv``,
``<out>/cache`` (feature store) and ``<out>/runs/<run>/`` (``<feature>_<loss>`` for the paper's
four configurations).
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


#: Largest profile file read, and most YAML aliases (``*name``) in it: a profile is a few
#: kilobytes; a file of nested aliases ("billion laughs") would expand without bound.
MAX_PROFILE_BYTES = 1_000_000
MAX_PROFILE_ALIASES = 100
MAX_PROFILE_NODES = 100_000
#: Top-level keys of which a profile must hold at least one: what it trains.
PROFILE_REQUIRED = ("grid", "training", "studies")


def _json_type(annotation) -> dict:
    """The JSON-schema type of a TrainConfig field annotation (``float``, ``int``, ``str``,
    ``bool``, ``tuple[float, ...] | None``)."""
    import types
    import typing

    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = _json_type(options[0]) if len(options) == 1 else {}
        kind = inner.get("type", [])
        return {**inner, "type": [*([kind] if isinstance(kind, str) else kind), "null"]}
    if typing.get_origin(annotation) in (tuple, list):
        item = next((a for a in typing.get_args(annotation) if a is not Ellipsis), float)
        return {"type": "array", "items": _json_type(item)}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if annotation not in simple:
        raise TypeError(f"no JSON type for the TrainConfig annotation {annotation!r}")
    return {"type": simple[annotation]}


def train_config_schema() -> dict:
    """JSON-schema property types of every :class:`serlib.config.TrainConfig` field, from
    the dataclass's own annotations (one source of truth: a new field is typed here as it is
    declared there)."""
    import dataclasses
    import typing

    from serlib.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    return {f.name: _json_type(hints[f.name]) for f in dataclasses.fields(TrainConfig)}


def _profile_schema() -> dict:
    """JSON schema of a profile YAML: every key and its type (validated before anything runs)."""
    number = {"type": "number"}
    fields = train_config_schema()
    training = {"type": "object", "properties": fields, "additionalProperties": False}
    from serlib.baselines import BASELINES
    from serlib.config import RECIPES

    entry = {"type": "object", "required": ["feature", "loss"],
             "properties": {**fields, "name": {"type": "string"},
                            "recipe": {"enum": list(RECIPES)}},
             "additionalProperties": False}
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "requires_data_root": {"type": "boolean"},
            "corpus": {"type": "object", "additionalProperties": False,
                       "properties": {"size": {"type": "string"}, "seed": {"type": "integer"}}},
            "selection": {"type": "object", "additionalProperties": False, "properties": {
                "merge_excited": {"type": "boolean"}, "min_agree": {"type": "integer"},
                "max_seconds": number, "improvised_only": {"type": "boolean"}}},
            "grid": {"type": "array", "items": entry, "minItems": 1},
            "training": training,
            "seeds": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
            # serlib.studies (shape in its docstring; checked by expand_studies)
            "studies": {"type": "object"},
            # serlib.baselines models trained on the same folds as the runs
            "baselines": {"type": "array", "items": {"enum": list(BASELINES)}},
            # serlib.fusion: a grid entry's runs fused with a baseline's, after the grid
            "fusion": {"type": "array", "items": {
                "type": "object", "required": ["of", "with"], "additionalProperties": False,
                "properties": {"of": {"type": "string"},
                               "with": {"enum": list(BASELINES)}}}},
            "engine": {"type": "object", "additionalProperties": False, "properties": {
                "name": {"enum": ["local", "ray"]},
                "jobs": {"type": ["integer", "null"], "minimum": 1},
                "jobs_per_gpu": {"type": ["integer", "null"], "minimum": 1},
                "address": {"type": ["string", "null"]},
                # serlib.batched: folds as one grouped network (null: on CUDA only)
                "batched": {"type": ["boolean", "null"]}}},
        },
    }


def _schema_errors(data, where) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(_profile_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        shown = []
        for error in errors[:5]:
            key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
            # the message holds the value's repr: cut it short
            message = error.message if len(error.message) <= 300 else \
                f"{error.message[:300]}... (a {type(error.instance).__name__} that is not " \
                f"allowed here: {error.validator} {error.validator_value!r:.100})"
            shown.append(f"{key}: {message}")
        raise SerlibError(f"{where}: invalid profile: {'; '.join(shown)}")


class _LimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses more than :data:`MAX_PROFILE_ALIASES` aliases."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen = getattr(self, "aliases_seen", 0) + 1
            if self.aliases_seen > MAX_PROFILE_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_PROFILE_ALIASES} aliases (*name): a "
                                     "profile needs none of that size")
        return super().compose_node(parent, index)


def _expanded_size(node, seen: dict) -> int:
    """Number of values ``node`` stands for with every alias expanded (memoised per node, so
    that a "billion laughs" file is measured without being expanded)."""
    key = id(node)
    if key not in seen:
        seen[key] = 1   # a recursive alias counts once
        if isinstance(node, yaml.SequenceNode):
            seen[key] = 1 + sum(_expanded_size(child, seen) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            seen[key] = 1 + sum(_expanded_size(k, seen) + _expanded_size(v, seen)
                                for k, v in node.value)
    return seen[key]


def _read_profile_yaml(path: Path) -> dict:
    """A profile file as a mapping: UTF-8, at most :data:`MAX_PROFILE_BYTES`, a bounded
    number of YAML aliases; an empty file or a non-mapping is an error naming it."""
    try:
        size = path.stat().st_size
        if size > MAX_PROFILE_BYTES:
            raise SerlibError(f"{path}: {size} bytes is too large for a profile (at most "
                              f"{MAX_PROFILE_BYTES})")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise SerlibError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); "
                          "save the profile as UTF-8") from None
    except OSError as error:
        raise SerlibError(f"{path}: cannot read the profile ({error.strerror})") from None
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_PROFILE_NODES:
            raise SerlibError(f"{path}: its aliases expand to more than {MAX_PROFILE_NODES} "
                              "values; a profile is a few dozen settings")
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as error:
        raise SerlibError(f"{path}: not valid YAML: {str(error)[:500]}") from None
    finally:
        loader.dispose()
    if data is None:
        raise SerlibError(f"{path}: the profile is empty; it needs at least one of "
                          f"{', '.join(PROFILE_REQUIRED)} (see book/profiles/smoke.yaml)")
    if not isinstance(data, dict):
        raise SerlibError(f"{path}: a profile is a mapping of keys (name, grid, training, "
                          f"...), not a {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Profile:
    """How a build runs: which corpus, how the chapters are parameterised, which runs."""

    name: str
    description: str = ""
    corpus_size: str = "small"           # generated corpus size when no data root is given
    corpus_seed: int = 0
    selection: dict = field(default_factory=dict)   # select_utterances keyword arguments
    # grid entries: TrainConfig overrides ({feature, loss, ...}) plus an optional name
    grid: tuple[dict, ...] = tuple({"feature": f, "loss": loss} for f, loss in PAPER_GRID)
    training: dict = field(default_factory=dict)    # TrainConfig fields shared by the grid
    seeds: tuple[int, ...] | None = None            # one run per (entry, seed); None: training's
    engine: dict = field(default_factory=dict)      # name, jobs, jobs_per_gpu, address
    requires_data_root: bool = False
    studies: dict = field(default_factory=dict)     # serlib.studies: leakage, imbalance
    baselines: tuple[str, ...] = ()                 # serlib.baselines models, same folds
    fusion: tuple[dict, ...] = ()                   # {of: grid run, with: baseline}: fused

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> Profile:
        """A profile by name (``smoke``, ``paper``, ``tiny``) or from a YAML file.

        The YAML is validated against a schema (keys and types) first; errors name the key.
        """
        path = Path(name_or_path)
        if not path.suffix:
            path = PROFILES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
            raise SerlibError(f"{path}: no such profile (known: {known})")
        data = _read_profile_yaml(path)
        _schema_errors(data, path)
        corpus = data.get("corpus", {}) or {}
        grid = tuple(dict(g) for g in data.get("grid", [])) or cls.grid
        profile = cls(
            name=str(data.get("name", path.stem)),
            description=str(data.get("description", "")).strip(),
            corpus_size=str(corpus.get("size", "small")),
            corpus_seed=int(corpus.get("seed", 0)),
            selection=dict(data.get("selection", {}) or {}),
            grid=grid,
            training=dict(data.get("training", {}) or {}),
            seeds=tuple(data["seeds"]) if data.get("seeds") else None,
            engine=dict(data.get("engine", {}) or {}),
            requires_data_root=data.get("requires_data_root", False),
            studies=dict(data.get("studies", {}) or {}),
            baselines=tuple(data.get("baselines", []) or []),
            fusion=tuple(dict(f) for f in data.get("fusion", []) or []),
        )
        profile.validate(path)
        if not any(key in data for key in PROFILE_REQUIRED):
            raise SerlibError(f"{path}: the profile says nothing to train; it needs at least "
                              f"one of {', '.join(PROFILE_REQUIRED)} (see "
                              "book/profiles/smoke.yaml)")
        return profile

    def runs(self) -> list[tuple[str, object]]:
        """(run name, TrainConfig) for every grid entry and seed, in order.

        The paper's four configurations under the shared settings and seed 0 keep the folder
        names ``<feature>_<loss>``; others get :func:`serlib.grid.run_name` slugs.
        """
        return [(name, config) for _, name, config in self._grid_runs()]

    def _grid_runs(self) -> list[tuple[str, str, object]]:
        """(entry's base name, run name, TrainConfig) for every grid entry and seed; the base
        name is the entry's run name at the base seed (``training.seed``), without
        ``_seed<k>``."""
        from serlib.config import RECIPES, TrainConfig
        from serlib.grid import run_name
        from serlib.studies import seed_suffix

        base_seed = int(self.training.get("seed", 0))
        seeds = self.seeds or (base_seed,)
        out = []
        for entry in self.grid:
            overrides = {k: v for k, v in entry.items() if k not in ("name", "recipe")}
            # a named recipe sits between the shared settings and the entry's own fields
            recipe = RECIPES.get(entry.get("recipe", "paper"), {})
            if "recipe" in entry and "name" not in entry:
                entry = {**entry, "name": f"{entry['feature']}_{entry['loss']}_"
                                          f"{entry['recipe']}"}
            base = entry["name"] if "name" in entry else run_name(
                overrides, seed=base_seed, base_training=self.training)
            for seed in seeds:
                fields = {**self.training, **recipe, **overrides, "seed": seed}
                if fields.get("alpha") is not None:
                    fields["alpha"] = tuple(float(a) for a in fields["alpha"])
                config = TrainConfig(**fields)
                if "name" in entry:
                    name = entry["name"] + seed_suffix(seed, base_seed=base_seed)
                else:
                    name = run_name(overrides, seed=seed, base_training=self.training)
                out.append((base, name, config))
        return out

    def fusion_runs(self) -> list[tuple[str, str, str]]:
        """(fused run, deep run, baseline run) folder names of the profile's ``fusion:``
        entries, one per seed: grid entry ``of``'s run of each seed fused with the
        ``baseline_<with>`` run of the same seed into ``fusion_<of>_<with>`` (plus
        ``_seed<k>`` as every run of that seed); empty without ``fusion:``."""
        from serlib.studies import seed_suffix

        base_seed = int(self.training.get("seed", 0))
        by_base: dict[str, list] = {}
        for base, name, config in self._grid_runs():
            by_base.setdefault(base, []).append((name, config.seed))
        out = []
        for entry in self.fusion:
            of, model = entry["of"], entry["with"]
            if of not in by_base:
                raise SerlibError(f"fusion: of={of!r} is not a grid entry of this profile "
                                  f"(its grid runs: {', '.join(by_base)})")
            if model not in self.baselines:
                raise SerlibError(f"fusion: with={model!r} is not among the profile's "
                                  f"baselines ({', '.join(self.baselines) or 'none'}); add it "
                                  "to baselines:")
            for name, seed in by_base[of]:
                suffix = seed_suffix(seed, base_seed=base_seed)
                out.append((f"fusion_{of.replace('/', '-')}_{model}{suffix}", name,
                            f"baseline_{model}{suffix}"))
        return out

    def study_runs(self) -> list[tuple[str, object]]:
        """(run name, TrainConfig) of every run the profile's studies train
        (:func:`serlib.studies.expand_studies`), in order; empty without studies."""
        from serlib.config import TrainConfig
        from serlib.studies import expand_studies

        if not self.studies:
            return []
        seeds = self.seeds or (int(self.training.get("seed", 0)),)
        out = []
        for name, overrides in expand_studies(self.studies, base_training=self.training,
                                              seeds=seeds):
            fields = {**self.training, **overrides}
            if fields.get("alpha") is not None:
                fields["alpha"] = tuple(float(a) for a in fields["alpha"])
            out.append((name, TrainConfig(**fields)))
        return out

    def all_runs(self) -> list[tuple[str, object]]:
        """The grid's runs, then the studies' runs that the grid does not already train (a
        run of the same name must be the same configuration)."""
        runs = dict(self.runs())
        out = list(runs.items())
        for name, config in self.study_runs():
            if name in runs:
                if runs[name] != config:
                    raise SerlibError(f"run {name!r} is both a grid entry and a study run "
                                      "with different settings; rename the grid entry")
                continue
            runs[name] = config
            out.append((name, config))
        return out

    def validate(self, where: Path | str = "profile") -> None:
        from serlib.corpora.synthetic import SIZES

        if self.corpus_size not in SIZES:
            raise SerlibError(f"{where}: corpus.size={self.corpus_size!r} must be one of "
                              f"{', '.join(SIZES)}")
        try:
            runs = self.runs()   # building each TrainConfig validates every field, named
            self.all_runs()      # and the studies' runs
            self.fusion_runs()   # and what the fusion entries name
        except TypeError as error:
            raise SerlibError(f"{where}: training: {error}") from None
        except SerlibError as error:
            raise SerlibError(f"{where}: {error}") from None
        names = [name for name, _ in runs]
        if len(set(names)) != len(names):
            raise SerlibError(f"{where}: grid: two entries give the same run name "
                              f"({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                              "give one a name")


def page_runs(profile: Profile) -> list[tuple[str, object]]:
    """The runs that get a training page: every grid entry at the profile's first seed (the
    other seeds' runs are trained by the grid and pooled by the results and verdicts)."""
    seeds = profile.seeds or (int(profile.training.get("seed", 0)),)
    return [(name, config) for name, config in profile.runs() if config.seed == seeds[0]]


def training_page(run: str) -> str:
    """The executed training page of run ``run`` (``05_training_mfcc_focal``; a group folder
    ``session/`` becomes ``session-``)."""
    return f"05_training_{run.replace('/', '-')}"


def run_recipe(profile: Profile, run: str) -> str:
    """The named recipe (:data:`serlib.config.RECIPES`) of grid run ``run``: ``"paper"``
    unless its grid entry names another."""
    for entry in profile.grid:
        if "recipe" not in entry:
            continue
        base = entry.get("name") or f"{entry['feature']}_{entry['loss']}_{entry['recipe']}"
        if run == base or run.startswith(f"{base}_seed"):
            return str(entry["recipe"])
    return "paper"


def training_title(profile: Profile, run: str, config) -> str:
    """The page title of one training page: its feature and loss, and what sets it apart
    from the paper's four configurations (the recipe, the seed, else the run's name)."""
    recipe = run_recipe(profile, run)
    title = f"Training: {config.feature} + {config.loss} loss"
    if recipe != "paper":
        title += f", the {recipe} recipe"
    if config.seed:
        title += f", seed {config.seed}"
    plain = f"{config.feature}_{config.loss}"
    known = {plain, f"{plain}_{recipe}", f"{plain}_seed{config.seed}",
             f"{plain}_{recipe}_seed{config.seed}"}
    if run not in known:
        title += f" ({run})"
    return title


#: TrainConfig fields that the training chapter takes as papermill parameters by name; any
#: other field of a run reaches it in its ``overrides`` parameter.
CHAPTER_FIELDS = ("feature", "loss", "gamma", "protocol", "folds", "epochs", "width",
                  "batch_size", "lr", "weight_decay", "patience", "seed", "device", "amp")


def training_parameters(config) -> dict:
    """Papermill parameters of the training chapter for one run's TrainConfig."""
    from serlib.config import TrainConfig

    data, defaults = config.to_dict(), TrainConfig().to_dict()
    named = {k: data[k] for k in CHAPTER_FIELDS}
    overrides = {k: v for k, v in data.items() if k not in CHAPTER_FIELDS and v != defaults[k]}
    return {**named, "overrides": overrides}


def stage_sources(staging: Path, profile: Profile, *, build_info: str) -> None:
    """Copy the book sources into ``staging`` and write its ``_toc.yml`` for the grid."""
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(BOOK_DIR, staging / "book", ignore=shutil.ignore_patterns(
        "profiles", "_static", ".ipynb_checkpoints", "__pycache__"))
    # Jupyter Book includes every CSS file of <root>/_static (code wraps within the page)
    shutil.copytree(BOOK_DIR / "_static", staging / "_static")
    shutil.copy(REPO_ROOT / "_config.yml", staging / "_config.yml")
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    for part in toc["parts"]:
        chapters = []
        for chapter in part["chapters"]:
            if chapter["file"] == "book/05_training_overview":
                sections = [{"file": f"book/{training_page(name)}"}
                            for name, _ in page_runs(profile)]
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
    hide_plumbing_cells(target)


#: Cells kept in the executed notebook but left off the rendered page: papermill's parameter
#: cells (the defaults, then the injected values, would otherwise both show).
HIDDEN_CELL_TAGS = ("parameters", "injected-parameters")


def hide_plumbing_cells(notebook_path: Path) -> None:
    """Tag the parameter cells of an executed notebook ``remove-cell`` (Jupyter Book then
    leaves them off the page; the executed notebook still holds them)."""
    import nbformat

    notebook = nbformat.read(notebook_path, as_version=4)
    for cell in notebook.cells:
        tags = cell.metadata.setdefault("tags", [])
        if any(tag in tags for tag in HIDDEN_CELL_TAGS) and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(notebook, notebook_path)


STUDY_TITLES = {"leakage": "the speaker-leakage study (chapter 7)",
                "imbalance": "the imbalance study (chapter 8)"}


def protocol_lines(profile: Profile, *, sessions: bool) -> list[str]:
    """Which protocol each table of the build uses, one Markdown line each (for the
    introduction's build box). ``sessions``: the corpus has sessions (IEMOCAP, the generated
    corpus), so the speaker-independent protocol leaves one session out; else it groups
    whole speakers into speaker folds."""
    folds = int(profile.training.get("folds", 5))

    def described(protocol: str) -> str:
        if protocol == "stratified":
            return "stratified folds (the paper's; every speaker in training and test)"
        return ("leave-one-session-out folds (speaker-independent)" if sessions
                else "speaker folds (speaker-independent: whole speakers per fold)")

    main = profile.training.get("protocol", "stratified")
    lines = [f"Tables 1-4 and the training pages: {folds} {described(main)}"]
    for name, study in profile.studies.items():
        found = []
        for spec in (study.get("shared", {}) or {}, *(study.get("runs", []) or [])):
            value = spec.get("protocol")
            for protocol in value if isinstance(value, list) else [value] if value else []:
                if protocol not in found:
                    found.append(protocol)
        found = found or [main]
        what = " and ".join(described(p) for p in found)
        lines.append(f"{STUDY_TITLES.get(name, f'the {name} study')}: "
                     + ("both protocols, " if len(found) > 1 else "") + what)
    return lines


def chapter_plan(profile: Profile, paths: dict) -> list[tuple[str, str, dict]]:
    """(source notebook stem, executed page stem, papermill parameters) in execution order."""
    from serlib.config import TrainConfig

    plan = [
        ("02_data_selection", "02_data_selection", {
            "data_root": paths["data_root"], "manifest": paths["manifest"],
            "corpus": paths.get("corpus", "iemocap"),
            "selection_path": paths["selection"], **profile.selection}),
        ("03_features", "03_features", {
            "selection_path": paths["selection"], "cache_dir": paths["cache"]}),
        ("04_model_and_focal_loss", "04_model_and_focal_loss", {
            "width": int(profile.training.get("width", TrainConfig().width))}),
    ]
    for name, config in page_runs(profile):
        plan.append(("05_training", training_page(name), {
            "selection_path": paths["selection"],
            "cache_dir": paths["cache"],
            "run_dir": str(Path(paths["runs"]) / name),
            "recipe": run_recipe(profile, name),
            **training_parameters(config)}))
    plan.append(("06_results", "06_results", {"runs_dir": paths["runs"],
                                              "profile": profile.name}))
    study = {"runs_dir": paths["runs"], "profile": profile.name, "studies": profile.studies,
             "training": profile.training,
             "seeds": list(profile.seeds or (int(profile.training.get("seed", 0)),)),
             "alpha": 0.05, "n_resamples": 1000}
    plan.append(("06b_verdicts", "06b_verdicts", {**study, "n_resamples": 200}))
    plan.append(("07_speaker_leakage", "07_speaker_leakage", study))
    plan.append(("08_imbalance", "08_imbalance", study))
    plan.append(("08b_calibration", "08b_calibration", {**study, "n_bins": 15}))
    plan.append(("08c_controlled_imbalance", "08c_controlled_imbalance", {
        **study, "n_bins": 15, "selection_path": paths["selection"]}))
    names = [name for name, _ in profile.runs()]
    plan.append(("09_using_the_model", "09_using_the_model", {
        "runs_dir": paths["runs"],
        "run_name": "mfcc_focal" if "mfcc_focal" in names else names[0],
        "data_root": paths["data_root"] or None,
        "selection_path": paths["selection"]}))
    return plan


def relative_paths(paths: dict, *, root: Path, start: Path) -> dict:
    """``paths`` (from :func:`book_paths`) that lie inside ``root`` (the build folder) made
    relative to ``start`` (the folder the chapters run in); others (a corpus elsewhere) stay
    as they are."""
    def relative(value: str) -> str:
        inside = Path(value).resolve().is_relative_to(Path(root).resolve())
        return os.path.relpath(value, start) if inside else value

    return {key: relative(value) if key != "corpus" and value else value
            for key, value in paths.items()}


def path_prefixes(paths: dict, *, root: Path, start: Path) -> dict[str, str]:
    """What :func:`relativise_notebook` replaces after execution: the build folder by its
    path relative to ``start``; a corpus folder outside it by ``<data root>`` (or
    ``<manifest folder>``); serlib's own folder by ``<serlib>``."""
    root = Path(root).resolve()
    prefixes = {str(root): os.path.relpath(root, start)}
    outside = {"data_root": "<data root>",
               "manifest": "<manifest folder>"}
    for key, placeholder in outside.items():
        value = paths.get(key)
        if not value:
            continue
        folder = Path(value).resolve() if key == "data_root" else Path(value).resolve().parent
        if not folder.is_relative_to(root):
            prefixes[str(folder)] = placeholder
    prefixes.setdefault(str(REPO_ROOT), "<serlib>")   # longer prefixes are replaced first
    return prefixes


def relativise_notebook(notebook_path: Path, prefixes: dict[str, str]) -> int:
    """Replace each absolute path prefix (key) by its relative form (value) in every string
    of an executed notebook (sources, outputs, metadata); returns the number of strings
    changed. Longer prefixes are replaced first."""
    import json

    ordered = sorted(((k, v) for k, v in prefixes.items() if k), key=lambda kv: -len(kv[0]))
    changed = 0

    def fix(value):
        nonlocal changed
        if isinstance(value, str):
            new = value
            for prefix, relative in ordered:
                new = new.replace(prefix, relative)
            changed += new != value
            return new
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    data = json.loads(Path(notebook_path).read_text())
    Path(notebook_path).write_text(json.dumps(fix(data), indent=1, ensure_ascii=False) + "\n")
    return changed


def book_paths(out: Path, *, data_root, manifest, corpus: str = "iemocap") -> dict:
    """Where a build's files go (every chapter and the grid use the same ones)."""
    return {
        "data_root": "" if data_root is None else str(Path(data_root).resolve()),
        "manifest": "" if manifest is None else str(Path(manifest).resolve()),
        "corpus": corpus,
        "selection": str(out / "selection.csv"),
        "cache": str(out / "cache"),
        "runs": str(out / "runs"),
    }


def corpus_for(profile: Profile, out: Path, *, data_root=None, manifest=None,
               quiet: bool = False):
    """``data_root``, or the built-in corpus generated under ``out/data`` when neither a data
    root nor a manifest is given."""
    if data_root is not None or manifest is not None:
        return data_root
    if profile.requires_data_root:
        raise SerlibError(f"profile {profile.name!r} needs --data-root (a real corpus: "
                          "IEMOCAP, or a public one with --corpus NAME); the smoke "
                          "profile runs on the built-in corpus")
    from serlib.corpora.synthetic import generate_corpus

    if not quiet:
        print(f"[corpus] generating the built-in corpus ({profile.corpus_size}) under "
              f"{out}/data", flush=True)
    return generate_corpus(out / "data", seed=profile.corpus_seed, size=profile.corpus_size,
                           progress=not quiet)


def run_profile_grid(profile: str | Profile, *, out_dir: str | os.PathLike = "_build",
                     data_root: str | os.PathLike | None = None,
                     manifest: str | os.PathLike | None = None, corpus: str = "iemocap",
                     engine: str | None = None, jobs: int | None = None,
                     jobs_per_gpu: int | None = None, address: str | None = None,
                     studies: list[str] | None = None, quiet: bool = False,
                     batched: bool | None = None):
    """Select (as the data chapter does), then train the profile's grid, its studies' runs
    and its baselines into ``out/runs``.

    Engine settings come from the profile's ``engine:`` block, each overridable here
    (``batched``: :func:`serlib.grid.run_grid`'s; None: the profile's, else on CUDA only).
    ``studies``: train only these studies of the profile (no grid entries, no baselines).
    Returns the :class:`serlib.grid.GridResult`.
    """
    import dataclasses

    from serlib.engines import make_engine
    from serlib.grid import check_grid_runs
    from serlib.locking import exclusive_lock

    if not isinstance(profile, Profile):
        profile = Profile.load(profile)
    if studies:
        unknown = sorted(set(studies) - set(profile.studies))
        if unknown:
            raise SerlibError(f"profile {profile.name!r} has no study {', '.join(unknown)} "
                              f"(it has: {', '.join(profile.studies) or 'none'})")
        profile = dataclasses.replace(profile, grid=(), baselines=(), fusion=(),
                                      studies={k: profile.studies[k] for k in studies})
    settings = profile.engine
    # checked before anything is written: run names, engine and its settings
    all_runs = check_grid_runs(profile.all_runs())
    make_engine(engine or settings.get("name", "local"),
                jobs=jobs if jobs is not None else settings.get("jobs"),
                jobs_per_gpu=jobs_per_gpu if jobs_per_gpu is not None
                else settings.get("jobs_per_gpu"),
                address=address if address is not None else settings.get("address"))
    out = Path(out_dir).resolve()
    # one grid at a time on an output folder: a second one is refused (naming the first)
    # before it writes anything, so the selection the first one checked stays on disk
    with exclusive_lock(out, what="grid output folder"):
        return _select_and_train(profile, all_runs, out, data_root=data_root,
                                 manifest=manifest, corpus=corpus, engine=engine, jobs=jobs,
                                 jobs_per_gpu=jobs_per_gpu, address=address, quiet=quiet,
                                 batched=batched if batched is not None
                                 else settings.get("batched"))


def _check_selection_against_runs(selection, runs, runs_dir: Path) -> None:
    """Every run folder already there must hold its run on this selection (read only):
    otherwise refused, naming the fields that differ, before ``selection.csv`` is written."""
    import warnings

    from serlib import runs as run_folders
    from serlib.training import prepare_run

    for name, config in runs:
        run_dir = runs_dir / name
        if not run_dir.is_dir():
            continue
        setup = prepare_run(selection, config=config)
        with warnings.catch_warnings():   # damage is reported by the grid, under the lock
            warnings.simplefilter("ignore", run_folders.RunFolderWarning)
            run_folders.check_config(run_dir, setup.resolved)


def _select_and_train(profile: Profile, all_runs, out: Path, *, data_root, manifest, corpus,
                      engine, jobs, jobs_per_gpu, address, quiet, batched):
    from serlib.corpora import load_corpus, load_manifest, select_utterances, write_selection
    from serlib.grid import run_grid

    data_root = corpus_for(profile, out, data_root=data_root, manifest=manifest, quiet=quiet)
    paths = book_paths(out, data_root=data_root, manifest=manifest, corpus=corpus)
    table = load_corpus(corpus, paths["data_root"]) if paths["data_root"] \
        else load_manifest(paths["manifest"])
    selection = select_utterances(table, **profile.selection)
    _check_selection_against_runs(selection, all_runs, Path(paths["runs"]))
    write_selection(selection, paths["selection"])
    settings = profile.engine
    protocol = profile.training.get("protocol", "stratified")
    folds = int(profile.training.get("folds", 5))
    from serlib.studies import seed_suffix

    base_seed = int(profile.training.get("seed", 0))
    for model in profile.baselines:
        # measured on the same selection and folds as the runs (serlib.baselines), once per
        # seed of the profile so that every seed of the grid pairs with one
        from serlib.baselines import run_baseline

        for seed in profile.seeds or (base_seed,):
            suffix = seed_suffix(seed, base_seed=base_seed)      # as every run is named
            run_baseline(paths["selection"], model=model, protocol=protocol, n_folds=folds,
                         out_dir=Path(paths["runs"]) / f"baseline_{model}{suffix}",
                         seed=seed, cache_dir=paths["cache"], progress=not quiet)
    from serlib.imbalance import feasible_runs

    # a controlled-imbalance run the corpus has too few clips for is named and skipped
    runs = feasible_runs(all_runs, selection, say=(lambda _: None) if quiet else print)
    result = run_grid(runs, selection=paths["selection"], cache_dir=paths["cache"],
                      runs_dir=paths["runs"], engine=engine or settings.get("name", "local"),
                      jobs=jobs if jobs is not None else settings.get("jobs"),
                      jobs_per_gpu=jobs_per_gpu if jobs_per_gpu is not None
                      else settings.get("jobs_per_gpu"),
                      address=address if address is not None else settings.get("address"),
                      batched=batched, progress=not quiet)
    if result.ok:
        write_profile_fusions(profile, Path(paths["runs"]), quiet=quiet)
    return result


def write_profile_fusions(profile: Profile, runs_dir: Path, *, quiet: bool = True
                          ) -> list[Path]:
    """Write the run folder of every fused run of the profile (:meth:`Profile.fusion_runs`)
    from its finished deep and baseline runs (:func:`serlib.fusion.fuse_runs`: each fold's
    weight chosen on the two runs' out-of-fold predictions of the other folds, never on its
    test part; a baseline keeps no validation predictions). Post-hoc and cheap: rewritten on
    every build, so it always matches the runs it fuses. Returns the folders written."""
    from serlib.fusion import fuse_runs, write_fused_run

    written = []
    for fused, deep, baseline in profile.fusion_runs():
        for name in (deep, baseline):
            if not (runs_dir / name / "summary.json").is_file():
                raise SerlibError(f"fusion {fused}: run {name} is not finished in {runs_dir}")
        run = fuse_runs(runs_dir / deep, runs_dir / baseline, source="other-folds")
        written.append(write_fused_run(run, runs_dir / fused))
        if not quiet:
            weights = " ".join(f"{w:g}" for w in run.summary["fusion"]["weights"].values())
            print(f"[fusion] {fused}: {deep} x w + {baseline} x (1 - w), w per fold "
                  f"{weights}; UA {100 * run.summary['ua_mean']:.1f} %", flush=True)
    return written


def build_book(*, profile: str | Profile = "smoke", out_dir: str | os.PathLike = "_build",
               data_root: str | os.PathLike | None = None,
               manifest: str | os.PathLike | None = None,
               corpus: str = "iemocap", quiet: bool = False, engine: str | None = None,
               jobs: int | None = None, jobs_per_gpu: int | None = None,
               address: str | None = None, batched: bool | None = None) -> Path:
    """Execute every chapter and render the book; returns ``<out_dir>/html``.

    Parameters
    ----------
    profile : str or Profile
        ``smoke`` (generated corpus, CPU, about 10 minutes on 2 cores), ``paper`` (real IEMOCAP,
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
    engine, jobs, jobs_per_gpu, address, batched
        How the grid trains (default: the profile's ``engine:`` settings); see
        :func:`run_profile_grid`. The training pages then only read the finished runs.
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
    data_root = corpus_for(profile, out, data_root=data_root, manifest=manifest, quiet=quiet)
    paths = book_paths(out, data_root=data_root, manifest=manifest, corpus=corpus)
    # the grid first (in parallel); the training pages then find finished runs
    started = time.perf_counter()
    say("[grid] training every run of the profile ...")
    grid = run_profile_grid(profile, out_dir=out, data_root=data_root, manifest=manifest,
                            corpus=corpus, engine=engine, jobs=jobs,
                            jobs_per_gpu=jobs_per_gpu, address=address, quiet=quiet,
                            batched=batched)
    if not grid.ok:
        raise SerlibError(f"the grid failed for {grid.describe_failures()} (tracebacks above); "
                          "rerun to retry only those folds")
    say(f"[grid] done in {time.perf_counter() - started:.0f} s")
    staging = out / "staging"
    # paths on the page are relative to the build folder: no machine's absolute paths
    source = os.path.relpath(paths["data_root"] or paths["manifest"], out)
    kind = "manifest" if manifest is not None else "generated" if generated else corpus
    build_info = (
        "```{admonition} This build\n"
        f"- profile: **{profile.name}**: {profile.description}\n"
        f"- corpus: {kind} `{source}`\n"
        + "".join(f"- protocol, {line}\n" for line in protocol_lines(
            profile, sessions=corpus == "iemocap" and manifest is None)) +
        f"- commit: `{commit_hash()}`, built {time.strftime('%Y-%m-%d %H:%M %Z')}\n"
        "```\n"
    )
    stage_sources(staging, profile, build_info=build_info)
    book = staging / "book"
    # chapters get paths relative to the folder they run in, and what an output still shows
    # of the build's (or the data's, or serlib's) absolute paths is made relative after
    # execution: the downloadable notebooks carry no machine's paths
    plan = chapter_plan(profile, relative_paths(paths, root=out, start=book))
    prefixes = path_prefixes(paths, root=out, start=book)
    titles = {training_page(name): training_title(profile, name, config)
              for name, config in profile.runs()}
    for number, (source, page, parameters) in enumerate(plan, start=1):
        started = time.perf_counter()
        say(f"[{number}/{len(plan)}] executing {page} ...")
        execute_chapter(book / f"{source}.ipynb", book / f"{page}.ipynb",
                        parameters=parameters, cwd=book, chapter=page, title=titles.get(page))
        relativise_notebook(book / f"{page}.ipynb", prefixes)
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
