"""Studies: named grids of configurations in a profile, expanded into the runs to train.

The YAML shape, under a profile's ``studies:`` key (every key but ``runs`` optional)::

    studies:
      leakage:                      # the paper's four configurations under both protocols
        shared: {protocol: [stratified, session]}
        runs:
          - {feature: spectrogram, loss: softmax}
          - {feature: spectrogram, loss: focal}
          - {feature: mfcc, loss: softmax}
          - {feature: mfcc, loss: focal}
        reference: {protocol: stratified}
      imbalance:                    # is it the focal loss, or any imbalance remedy?
        shared: {feature: mfcc, protocol: session}
        runs:
          - {loss: softmax}
          - {loss: softmax, class_weights: inverse}
          - {loss: softmax, sampler: balanced}
          - {loss: focal, gamma: [0.5, 1, 2, 5]}
          - {loss: focal, gamma: 2, class_weights: inverse}
        reference: {loss: softmax}
        posthoc:                    # computed from a trained run, not trained
          - {method: logit_adjustment, of: {loss: softmax}, tau: 1.0}
        seeds: [0, 1, 2]            # optional: else the profile's seeds

- ``shared`` and each entry of ``runs`` hold :class:`serlib.training.TrainConfig` field values;
  an entry is ``base_training`` (the profile's ``training:``), then ``shared``, then the entry.
  A **list value sweeps** (the cartesian product of every list), except ``alpha``, whose list of
  numbers is one value (give a list of lists to sweep it).
- ``reference`` picks the row(s) the others are compared with: the rows whose fields match it
  and have no field beyond those every row has (so ``{loss: softmax}`` is plain softmax, not
  softmax with class weights). With several (``leakage``: each stratified configuration), a
  row is compared with the one that equals it in every other field.
- ``posthoc`` rows are computed from each trained row that ``of`` matches (by the same rule;
  for every seed; one posthoc row per match, e.g. per swept ``imbalance`` profile):
  ``logit_adjustment`` is :func:`serlib.posthoc.logit_adjust` with ``tau``.

Run names are stable, readable slugs of the resolved configuration: ``<feature>_<loss>``, with
``<protocol>/`` in front unless it is ``base_training``'s (``stratified`` by default; so the
paper's four keep their names ``spectrogram_softmax`` ... ), ``_g<gamma>`` for a focal loss
whose gamma differs from ``base_training``'s, ``_<field>-<value>`` for every other field that
differs from ``base_training`` (or from the TrainConfig default), and ``_seed<k>`` for every
seed but the base one: ``session/mfcc_focal_g0.5``,
``session/mfcc_softmax_class_weights-inverse_seed1``.
A configuration that appears in two studies resolves to the same fields and is trained once.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from serlib.errors import SerlibError

STUDY_KEYS = ("description", "shared", "runs", "reference", "posthoc", "seeds")
POSTHOC_METHODS = ("logit_adjustment",)
VECTOR_FIELDS = ("alpha",)          # a list of numbers is one value, not a sweep


#: The two studies of the book (the module docstring's YAML), for profiles that name none.
DEFAULT_STUDIES: dict = {
    "leakage": {
        "description": "the paper's four configurations under both protocols",
        "shared": {"protocol": ["stratified", "session"]},
        "runs": [{"feature": f, "loss": loss} for f in ("spectrogram", "mfcc")
                 for loss in ("softmax", "focal")],
        "reference": {"protocol": "stratified"},
    },
    "imbalance": {
        "description": "focal loss against other imbalance remedies (MFCC, session protocol)",
        "shared": {"feature": "mfcc", "protocol": "session"},
        "runs": [{"loss": "softmax"}, {"loss": "softmax", "class_weights": "inverse"},
                 {"loss": "softmax", "sampler": "balanced"},
                 {"loss": "focal", "gamma": [0.5, 1.0, 2.0, 5.0]},
                 {"loss": "focal", "gamma": 2.0, "class_weights": "inverse"}],
        "reference": {"loss": "softmax"},
        "posthoc": [{"method": "logit_adjustment", "of": {"loss": "softmax"}, "tau": 1.0}],
    },
}


@dataclass(frozen=True)
class StudyRow:
    """One configuration of a study (all its seeds): what a chapter tables as one row.

    Attributes
    ----------
    label : str
        Readable label of what varies in the study (``"focal, gamma 0.5"``).
    config : dict
        The fields that define it (without ``seed``).
    runs : tuple of str
        Run names, one per seed (for a posthoc row: its source's).
    kind : str
        ``"trained"`` or ``"posthoc"``.
    reference : bool
        True for a row others are compared with (``reference`` of the study matches it and
        it has no field beyond those every row has).
    compare_with : str or None
        Label of this row's reference row: the only one, or, where several rows are
        references (one per group, as in ``leakage``), the one equal to it in every field
        but the reference's own; None for reference rows and studies without a reference.
    posthoc : dict
        For a posthoc row: ``method`` and its parameters (``tau``); else empty.
    """

    label: str
    config: dict
    runs: tuple[str, ...]
    kind: str = "trained"
    reference: bool = False
    compare_with: str | None = None
    posthoc: dict = field(default_factory=dict)


def _train_defaults() -> dict:
    from serlib.training import TrainConfig

    return {f.name: f.default for f in dataclasses.fields(TrainConfig)
            if f.default is not dataclasses.MISSING}


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def _sweep(entry: dict, where: str) -> list[dict]:
    if not isinstance(entry, dict):
        raise SerlibError(f"{where}: expected a mapping of TrainConfig fields, got {entry!r}")
    keys, choices = [], []
    for key, value in entry.items():
        is_sweep = isinstance(value, list) and (
            key not in VECTOR_FIELDS or any(isinstance(v, list) for v in value))
        if is_sweep and not value:
            raise SerlibError(f"{where}: {key}: an empty list sweeps nothing")
        keys.append(key)
        choices.append(value if is_sweep else [value])
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*choices)]


def _check_study(name: str, study) -> None:
    if not isinstance(study, dict):
        raise SerlibError(f"studies.{name}: expected a mapping, got {type(study).__name__}")
    unknown = set(study) - set(STUDY_KEYS)
    if unknown:
        raise SerlibError(f"studies.{name}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(STUDY_KEYS)}")
    if not isinstance(study.get("runs"), list) or not study["runs"]:
        raise SerlibError(f"studies.{name}.runs: a non-empty list of configurations is needed")
    for i, ph in enumerate(study.get("posthoc") or []):
        if not isinstance(ph, dict) or ph.get("method") not in POSTHOC_METHODS:
            raise SerlibError(f"studies.{name}.posthoc[{i}]: method must be one of "
                              f"{', '.join(POSTHOC_METHODS)}, got {ph!r}")
        if not isinstance(ph.get("of"), dict):
            raise SerlibError(f"studies.{name}.posthoc[{i}]: 'of' must name the trained row's "
                              "fields, e.g. {loss: softmax}")


def _seeds(study: dict, seeds, name: str) -> list[int]:
    seeds = study.get("seeds", seeds)
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise SerlibError(f"studies.{name}: seeds={seeds!r} must be integers >= 0")
    return seeds


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_fmt(v) for v in value)
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def seed_suffix(seed: int, *, base_seed: int = 0) -> str:
    """``"_seed<k>"`` for every seed but the base one, else ``""``: how every run folder of a
    configuration is named per seed (grid entries, named entries, studies, baselines)."""
    return f"_seed{seed}" if int(seed) != int(base_seed) else ""


def run_name(resolved: dict, *, base_training: dict) -> str:
    """The run name (slug) of a resolved configuration; see the module docstring.

    The one naming rule of the project: the grid's entries (:meth:`serlib.book.Profile.runs`),
    the studies, and the readers (:func:`serlib.results.seed_runs`) all go through it and
    :func:`seed_suffix`.
    """
    defaults = {**_train_defaults(), **base_training}
    protocol = resolved.get("protocol", "stratified")
    name = f"{resolved['feature']}_{resolved['loss']}"
    if resolved["loss"] == "focal" and resolved.get("gamma") != defaults.get("gamma"):
        name += f"_g{_fmt(resolved['gamma'])}"
    for key in sorted(resolved):
        if key in ("feature", "loss", "gamma", "protocol", "seed"):
            continue
        if key in defaults and _freeze(resolved[key]) == _freeze(defaults[key]):
            continue
        name += f"_{key}-{_fmt(resolved[key])}"
    name += seed_suffix(resolved.get("seed", defaults.get("seed", 0)),
                        base_seed=defaults.get("seed", 0))
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", name)
    # a group folder for every protocol but the profile's own (so the paper's four keep
    # ``<feature>_<loss>`` under the profile's shared settings)
    return name if protocol == defaults.get("protocol", "stratified") else f"{protocol}/{name}"


def resolve(entry: dict, *, base_training: dict) -> dict:
    """The overrides of one configuration: the fields given, plus feature, loss, protocol
    (and gamma for focal) from ``base_training`` / the defaults when not given; the fields
    equal to the TrainConfig default and not in ``base_training`` are dropped."""
    defaults = _train_defaults()
    merged = {**base_training, **entry}
    for key in ("feature", "loss", "protocol"):
        merged.setdefault(key, defaults[key])
    if merged["loss"] == "focal":
        merged.setdefault("gamma", defaults["gamma"])
    keep = set(entry) | {"feature", "loss", "protocol", "seed"} | (
        {"gamma"} if merged["loss"] == "focal" else set())
    return {k: merged[k] for k in sorted(merged) if k in keep and not (
        k not in base_training and k in defaults and k not in ("feature", "loss", "protocol",
                                                               "gamma", "seed")
        and _freeze(merged[k]) == _freeze(defaults[k]))}


def _identity(overrides: dict, *, base_training: dict) -> tuple:
    defaults = _train_defaults()
    full = {**defaults, **base_training, **overrides}
    if full.get("loss") == "softmax":
        full.pop("gamma", None)       # unused by softmax
    return tuple(sorted((k, _freeze(v)) for k, v in full.items()))


def _configs(name: str, study: dict) -> list[dict]:
    shared = _sweep(study.get("shared") or {}, f"studies.{name}.shared")
    out = []
    for i, entry in enumerate(study["runs"]):
        for run in _sweep(entry, f"studies.{name}.runs[{i}]"):
            for common in shared:
                out.append({**common, **run})
    return out


def expand_studies(studies: dict, *, base_training: dict, seeds: Sequence[int] | int = (0,)
                   ) -> list[tuple[str, dict]]:
    """Every run the studies need, each once: ``[(run_name, overrides), ...]``.

    Parameters
    ----------
    studies : dict
        The profile's ``studies:`` mapping (shape in the module docstring).
    base_training : dict
        The profile's ``training:`` fields (what every run starts from).
    seeds : int or sequence of int
        The profile's seeds (a study's own ``seeds`` wins).

    Returns
    -------
    list of (str, dict)
        Run name (a slug, see :func:`run_name`; the folder below the runs folder) and the
        TrainConfig fields to set over ``base_training`` (always feature, loss, protocol and
        seed; gamma for focal). A configuration in two studies appears once, in first-seen
        order. Posthoc rows are not in it (they are not trained).
    """
    if not isinstance(studies, dict) or not studies:
        raise SerlibError(f"studies must be a non-empty mapping of study names, got {studies!r}")
    seen: dict[tuple, str] = {}
    names: dict[str, tuple] = {}
    out = []
    for name, study in studies.items():
        _check_study(name, study)
        for config in _configs(name, study):
            for seed in _seeds(study, seeds, name):
                overrides = resolve({**config, "seed": seed}, base_training=base_training)
                key = _identity(overrides, base_training=base_training)
                if key in seen:
                    continue
                slug = run_name(overrides, base_training=base_training)
                if slug in names:
                    raise SerlibError(f"studies.{name}: two configurations resolve to the "
                                      f"same run name {slug!r}")
                seen[key], names[slug] = slug, key
                out.append((slug, overrides))
    return out


def _matches(config: dict, fields: dict) -> bool:
    return all(_freeze(config.get(k)) == _freeze(v) for k, v in fields.items())


def _label(config: dict, varying: list[str]) -> str:
    parts = []
    for key in varying:
        value = config.get(key)
        if key == "gamma":
            if config.get("loss") == "focal":
                parts.append(f"gamma {_fmt(value)}")
        elif key in ("feature", "loss", "protocol"):
            parts.append(str(value))
        elif key == "class_weights":
            if value not in (None, "none"):
                parts.append(f"{value} class weights")
        elif key == "sampler":
            if value not in (None, "shuffle"):
                parts.append(f"{value} sampler")
        elif key == "imbalance":
            parts.append(f"{value} shares" if value != "none" else "corpus shares")
        elif value is not None:
            parts.append(f"{key} {_fmt(value)}")
    return ", ".join(parts) if parts else "reference"


def study_rows(studies: dict, name: str, *, base_training: dict,
               seeds: Sequence[int] | int = (0,)) -> list[StudyRow]:
    """The rows of one study for a chapter: which run folders, which row is the reference.

    Returns
    -------
    list of StudyRow
        Trained rows in the order of the study, then posthoc rows (``runs`` = the run names
        of the trained row they adjust), each with the label of the row it is compared with.
    """
    if name not in (studies or {}):
        raise SerlibError(f"no study {name!r} in the profile; it has: "
                          f"{', '.join(studies or {}) or 'none'}")
    study = studies[name]
    _check_study(name, study)
    study_seeds = _seeds(study, seeds, name)
    configs = []
    for config in _configs(name, study):
        resolved = resolve(config, base_training=base_training)
        resolved.pop("seed", None)
        if resolved not in configs:
            configs.append(resolved)
    keys = sorted({k for c in configs for k in c})
    focal = [c for c in configs if c["loss"] == "focal"]

    def varies(k: str) -> bool:         # gamma: only among the focal rows
        among = focal if k == "gamma" else configs
        return len({_freeze(c.get(k)) for c in among}) > 1

    varying = [k for k in ("feature", "loss", "gamma", "protocol") + tuple(keys)
               if k in keys and varies(k)]
    varying = list(dict.fromkeys(varying))
    reference = study.get("reference") or {}
    common = set.intersection(*(set(c) for c in configs)) | {"gamma"}
    refs = [c for c in configs
            if reference and _matches(c, reference) and set(c) <= common | set(reference)]
    if reference and not refs:
        raise SerlibError(f"studies.{name}.reference {reference!r} matches no configuration")
    labels = [_label(c, varying) for c in configs]

    def reference_of(c: dict) -> str | None:
        if not refs or c in refs:
            return None
        if len(refs) == 1:
            return labels[configs.index(refs[0])]
        # several references (one per group): the one that agrees on every field all rows
        # have, but the reference's own
        # gamma belongs to the loss: a reference that names the loss ignores it too
        skip = set(reference) | ({"gamma"} if "loss" in reference else set())
        twins = [r for r in refs if all(_freeze(r.get(k)) == _freeze(c.get(k))
                                        for k in (set(r) | set(c)) & common
                                        if k not in skip)]
        if len(twins) != 1:
            raise SerlibError(f"studies.{name}: {len(twins)} reference rows fit "
                              f"{labels[configs.index(c)]!r}; it must be exactly one")
        return labels[configs.index(twins[0])]

    rows = []
    for c, label in zip(configs, labels, strict=True):
        runs = tuple(run_name(resolve({**c, "seed": s}, base_training=base_training),
                              base_training=base_training) for s in study_seeds)
        rows.append(StudyRow(label=label, config=c, runs=runs, reference=c in refs,
                             compare_with=reference_of(c)))
    for i, ph in enumerate(study.get("posthoc") or []):
        sources = [r for r in rows if _matches(r.config, ph["of"])
                   and set(r.config) <= common | set(ph["of"])]
        if not sources:
            raise SerlibError(f"studies.{name}.posthoc[{i}].of {ph['of']!r} matches "
                              "no trained row; it must match at least one")
        params = {k: v for k, v in ph.items() if k != "of"}
        tau = float(params.setdefault("tau", 1.0))
        # one posthoc row per trained row it matches (e.g. one per swept imbalance profile)
        for source in sources:
            rows.append(StudyRow(label=f"{source.label} + logit adjustment (tau {tau:g})",
                                 config=source.config, runs=source.runs, kind="posthoc",
                                 posthoc=dict(params),
                                 compare_with=source.compare_with or source.label))
    return rows


__all__ = ["DEFAULT_STUDIES", "StudyRow", "expand_studies", "resolve", "run_name", "seed_suffix",
           "study_rows"]
