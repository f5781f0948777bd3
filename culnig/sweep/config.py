"""A sweep's configuration (YAML): models, the neuron sets of each, and one :class:`EvalSettings`.

Checkpoints per model, in order: ``orig``, ``general``, ``random_seed<k>``, ``specific_<country>``.
The keys are documented in docs/sweeps-and-reports.md; examples in harness_configs/sweep-*.yaml.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attribution.selection import parse_seeds
from culnig.errors import CulnigError
from culnig.models import resolve_model_ref
from culnig.settings import DEFAULT_ISOLATION, ISOLATIONS, EvalSettings, choice_text
from culnig_tasks.countries import PAPER_COUNTRIES, canonical

KINDS = ("orig", "general", "random", "specific")
_RUN_KEYS = {"run_dir", "models", "batch_size", "isolation", "delete_masked", "checkpoint_dir"}
_TOP_KEYS = _RUN_KEYS | EvalSettings.keys()
_MODEL_KEYS = {"name", "model", "original", "general", "random", "specific"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Checkpoint:
    model: str           # model name in the run dir
    name: str            # orig, general, random_seed3, specific_south_korea
    kind: str            # orig | general | random | specific
    set_path: Path | None = None
    seed: int | None = None
    country: str | None = None

    @property
    def label(self) -> str:
        return f"{self.model}/{self.name}"


@dataclass
class ModelSpec:
    name: str
    ref: str
    path: Path
    checkpoints: list[Checkpoint] = field(default_factory=list)
    random_like: tuple[Path, list[int]] | None = None  # (general set, seeds) to draw


@dataclass
class SweepConfig:
    source: Path
    run_dir: Path
    checkpoint_dir: Path
    models: list[ModelSpec]
    settings: EvalSettings
    batch_size: str = "auto"
    isolation: str = DEFAULT_ISOLATION
    delete_masked: bool = False


def _path(value: Any, what: str, source: Path) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise CulnigError(f"{source}: {what} must be a path, got {value!r}")
    return Path(os.path.expandvars(os.path.expanduser(str(value))))


def _seeds(value: Any, source: Path) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return list(value)
    if isinstance(value, str):
        return parse_seeds(value, f"{source}: seeds")
    raise CulnigError(f"{source}: seeds must be a list of integers or a range like 0-9, got {value!r}")


def _slug(country: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", country.lower()).strip("_")


def _resolve_model(ref: str) -> Path:
    path = Path(os.path.expandvars(os.path.expanduser(resolve_model_ref(ref))))
    if not (path / "config.json").is_file():
        raise CulnigError(f"model {ref!r}: no such checkpoint folder (no config.json); sweeps need "
                          "a local safetensors checkpoint, or demo/smollm2 after `culnig models`")
    return path.resolve()


def _model_spec(entry: Any, i: int, source: Path) -> ModelSpec:
    if isinstance(entry, str):
        entry = {"model": entry}
    if not isinstance(entry, dict) or "model" not in entry:
        raise CulnigError(f"{source}: models[{i}] needs at least 'model' (a path or demo/smollm2)")
    unknown = set(entry) - _MODEL_KEYS
    if unknown:
        raise CulnigError(f"{source}: models[{i}]: unknown key {sorted(unknown)[0]!r}; known: "
                          f"{', '.join(sorted(_MODEL_KEYS))}")
    ref = str(entry["model"])
    path = _resolve_model(ref)
    name = str(entry.get("name") or (ref if ref in ("demo", "smollm2") else path.name))
    if not _NAME.match(name):
        raise CulnigError(f"{source}: model name {name!r} must be letters, digits, '.', '_', '-'")
    spec = ModelSpec(name=name, ref=ref, path=path)
    cps = spec.checkpoints
    if entry.get("original", True):
        cps.append(Checkpoint(name, "orig", "orig"))
    general = entry.get("general")
    general_path = _path(general, f"models[{i}].general", source) if general else None
    if general_path is not None:
        cps.append(Checkpoint(name, "general", "general", set_path=general_path))

    random = entry.get("random")
    if random is not None:
        if not isinstance(random, dict):
            raise CulnigError(f"{source}: models[{i}].random must be a mapping: {{like: general, "
                              "seeds: 0-9}, {files: 'dir/random_seed{seed}.json', seeds: 0-9} or "
                              "{files: [a.json, b.json]}")
        bad = set(random) - {"like", "seeds", "files"}
        if bad:
            raise CulnigError(f"{source}: models[{i}].random: unknown key {sorted(bad)[0]!r}")
        if "like" in random:
            if random["like"] != "general" or general_path is None:
                raise CulnigError(f"{source}: models[{i}].random.like must be 'general' and the model "
                                  "needs a general set")
            seeds = _seeds(random.get("seeds", "0-9"), source)
            spec.random_like = (general_path, seeds)
            for s in seeds:  # set paths are filled in by plan() (under RUN_DIR/sets)
                cps.append(Checkpoint(name, f"random_seed{s}", "random", seed=s))
        elif "files" in random:
            files = random["files"]
            if isinstance(files, str) and "{seed}" in files:
                for s in _seeds(random.get("seeds", "0-9"), source):
                    set_path = _path(files.replace("{seed}", str(s)), "random file", source)
                    cps.append(Checkpoint(name, f"random_seed{s}", "random", set_path=set_path, seed=s))
            else:
                if isinstance(files, str):
                    matched = sorted(glob.glob(os.path.expandvars(os.path.expanduser(files))))
                    if not matched:
                        raise CulnigError(f"{source}: models[{i}].random.files {files!r} matches no file")
                    files = matched
                for f in files:
                    p = _path(f, "random file", source)
                    m = re.search(r"seed(\d+)", p.stem)
                    seed = int(m.group(1)) if m else None
                    cp_name = f"random_seed{seed}" if seed is not None else f"random_{p.stem}"
                    cps.append(Checkpoint(name, cp_name, "random", set_path=p, seed=seed))
        else:
            raise CulnigError(f"{source}: models[{i}].random needs 'like' or 'files'")

    specific = entry.get("specific")
    if specific is not None:
        if isinstance(specific, dict) and "path" in specific:
            bad = set(specific) - {"path", "countries"}
            if bad:
                raise CulnigError(f"{source}: models[{i}].specific: unknown key {sorted(bad)[0]!r}")
            pattern = str(specific["path"])
            countries = specific.get("countries", list(PAPER_COUNTRIES))
            pairs = [(c, pattern.replace("{country}", c).replace("{slug}", _slug(c)))
                     for c in (canonical(str(x)) for x in countries)]
        elif isinstance(specific, dict):
            pairs = [(canonical(str(c)), p) for c, p in specific.items()]
        else:
            raise CulnigError(f"{source}: models[{i}].specific must map countries to set files, or "
                              "be {path: 'sets/specific_{slug}.json', countries: [...]}")
        for country, p in pairs:
            cps.append(Checkpoint(name, f"specific_{_slug(country)}", "specific",
                                  set_path=_path(p, f"specific set of {country}", source),
                                  country=country))
    names = [c.name for c in cps]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise CulnigError(f"{source}: models[{i}] has two checkpoints named {sorted(dup)[0]!r}")
    if not cps:
        raise CulnigError(f"{source}: models[{i}] names no checkpoint to evaluate")
    return spec


def load_config(path: str | Path, *, run_dir: str | Path | None = None) -> SweepConfig:
    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text())
    except FileNotFoundError:
        raise CulnigError(f"{source}: no such sweep config") from None
    except yaml.YAMLError as exc:
        raise CulnigError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CulnigError(f"{source}: a sweep config is a YAML mapping (run_dir, models, tasks, ...)")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise CulnigError(f"{source}: unknown key {sorted(unknown)[0]!r}; known: "
                          f"{', '.join(sorted(_TOP_KEYS))}")
    if not data.get("models"):
        raise CulnigError(f"{source}: 'models' is required")
    if run_dir is None and not data.get("run_dir"):
        raise CulnigError(f"{source}: 'run_dir' is required (or pass --run-dir)")
    settings = EvalSettings.from_mapping(data, where=str(source))
    isolation = str(data.get("isolation", DEFAULT_ISOLATION))
    if isolation not in ISOLATIONS:
        raise CulnigError(f"{source}: isolation {isolation!r}: use {choice_text(ISOLATIONS)}")
    rd = _path(run_dir if run_dir is not None else data["run_dir"], "run_dir", source)
    cdir = data.get("checkpoint_dir")
    models = data["models"]
    if not isinstance(models, list):
        raise CulnigError(f"{source}: 'models' must be a list")
    specs = [_model_spec(m, i, source) for i, m in enumerate(models)]
    names = [m.name for m in specs]
    if len(set(names)) != len(names):
        raise CulnigError(f"{source}: two models are named {next(n for n in names if names.count(n) > 1)!r}; "
                          "give them distinct 'name's")
    return SweepConfig(source=source, run_dir=rd,
                       checkpoint_dir=_path(cdir, "checkpoint_dir", source) if cdir else rd / "checkpoints",
                       models=specs, settings=settings, batch_size=str(data.get("batch_size", "auto")),
                       isolation=isolation, delete_masked=bool(data.get("delete_masked", False)))

