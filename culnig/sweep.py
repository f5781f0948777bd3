"""``culnig sweep CONFIG.yaml``: neuron sets -> masked checkpoints -> lm-eval results, resumably.

For every model of the config the sweep evaluates, in this order: the original checkpoint
(``orig``), the culture-general mask (``general``), count-matched random masks (``random_seed<k>``)
and the culture-specific masks (``specific_<country>``). Each masked checkpoint is baked with
:func:`masking.bake.bake` (skipped when its manifest matches) and evaluated with ``culnig eval``
(:func:`culnig.evaluate.run_eval`), in its own process by default.

Run directory layout::

    RUN_DIR/
      sweep.json                       the resolved plan of the latest sweep (informational)
      sets/<model>/random_seed<k>.json random sets drawn by the sweep ("random: {like: general}")
      checkpoints/<model>/<checkpoint>/ masked checkpoints (hard links to the source's untouched
                                       shards; removed after evaluation with delete_masked: true)
      results/<model>/<checkpoint>/    results_<date>.json, samples_<task>_<date>.jsonl (lm-eval),
                                       eval.log (subprocess mode) and culnig_eval.json
      stale/<time>/<model>/<checkpoint>/ results set aside by --force

A result folder only ever appears complete: lm-eval writes into a temporary sibling, and
``culnig_eval.json`` (checkpoint key, settings, task versions, file hashes) is written before the
folder is renamed into place. A result is *complete* when ``culnig_eval.json`` is present, its
results file has the recorded hash, and checkpoint key, settings and task versions equal the
current request; complete results are skipped and never rewritten. A result made for anything
else stops the sweep with an error (``--force`` moves it to ``stale/`` and evaluates again).
"""

from __future__ import annotations

import contextlib
import gc
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml

from culnig import __version__, protocols
from culnig.atomic import atomic_write_text
from culnig.errors import CulnigError
from culnig.hashing import sha256_file

EVAL_RECORD = "culnig_eval.json"
EVAL_FORMAT = "culnig-eval/1"
PAPER_COUNTRIES = ("China", "Indonesia", "Iran", "Mexico", "South Korea", "Spain", "UK", "USA")
KINDS = ("orig", "general", "random", "specific")
LOCK = ".sweep.lock"

_TOP_KEYS = {"run_dir", "models", "tasks", "backend", "limit", "seed", "dtype", "batch_size",
             "chat_template", "max_model_len", "model_args", "lm_eval_args", "isolation", "scale",
             "delete_masked", "checkpoint_dir", "protocol", "task_metadata"}
_MODEL_KEYS = {"name", "model", "original", "general", "random", "specific"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSettings:
    """What decides an evaluation's numbers (batch size and isolation do not)."""

    tasks: tuple[str, ...]
    backend: str = "vllm"
    limit: float | None = None
    seed: int = 0
    dtype: str = "auto"
    chat_template: str = "auto"
    max_model_len: int = 2048
    model_args: str = ""
    lm_eval_args: tuple[str, ...] = ()
    scale: float = 0.0
    task_metadata: tuple[tuple[str, Any], ...] = ()  # lm-eval --metadata for the tasks (sorted)

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["tasks"] = list(self.tasks)
        out["lm_eval_args"] = list(self.lm_eval_args)
        if self.task_metadata:
            out["task_metadata"] = dict(self.task_metadata)
        else:
            out.pop("task_metadata")  # results written before this key existed stay valid
        if self.backend != "vllm":
            out.pop("max_model_len")  # only vLLM reads it
        return out


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
    isolation: str = "subprocess"
    delete_masked: bool = False


def _path(value: Any, what: str, source: Path) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise CulnigError(f"{source}: {what} must be a path, got {value!r}")
    return Path(os.path.expandvars(os.path.expanduser(str(value))))


def _seeds(value: Any, source: Path) -> list[int]:
    from attribution.select_cli import parse_seeds

    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return list(value)
    if isinstance(value, str):
        return parse_seeds(value)
    raise CulnigError(f"{source}: seeds must be a list of integers or a range like 0-9, got {value!r}")


def _slug(country: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", country.lower()).strip("_")


def _resolve_model(ref: str) -> Path:
    from culnig import models

    if ref in models.PACKAGED and not Path(ref).exists():
        path = models.default_path(ref)
        if not (path / models.MARKER).is_file():
            raise CulnigError(f"packaged model {ref!r} is not prepared yet; run `culnig models {ref}`")
        return path
    path = Path(os.path.expandvars(os.path.expanduser(ref)))
    if not (path / "config.json").is_file():
        raise CulnigError(f"model {ref!r}: no such checkpoint folder (no config.json); sweeps need "
                          "a local safetensors checkpoint, or demo/smollm2 after `culnig models`")
    return path.resolve()


def _model_spec(entry: Any, i: int, source: Path) -> ModelSpec:
    from culnig_tasks.countries import canonical

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
    for key in ("models", "tasks"):
        if not data.get(key):
            raise CulnigError(f"{source}: '{key}' is required")
    if run_dir is None and not data.get("run_dir"):
        raise CulnigError(f"{source}: 'run_dir' is required (or pass --run-dir)")
    tasks = data["tasks"]
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    protocol = str(data.get("protocol", "paper"))
    if protocol not in protocols.PROTOCOLS:
        raise CulnigError(f"{source}: protocol {protocol!r}: use {', '.join(protocols.PROTOCOLS)}")
    tasks = protocols.apply([str(t) for t in tasks], protocol)
    backend = str(data.get("backend", "vllm"))
    if backend not in ("vllm", "hf"):
        raise CulnigError(f"{source}: backend {backend!r}: use vllm or hf")
    chat = str(data.get("chat_template", "auto"))
    if chat not in ("auto", "on", "off"):
        raise CulnigError(f"{source}: chat_template {chat!r}: use auto, on or off")
    isolation = str(data.get("isolation", "subprocess"))
    if isolation not in ("subprocess", "inprocess"):
        raise CulnigError(f"{source}: isolation {isolation!r}: use subprocess or inprocess")
    limit = data.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise CulnigError(f"{source}: limit must be a positive number, got {limit!r}")
    extra = data.get("lm_eval_args") or []
    if isinstance(extra, str):
        extra = extra.split()
    settings = EvalSettings(
        tasks=tuple(str(t) for t in tasks), backend=backend,
        limit=None if limit is None else float(limit), seed=int(data.get("seed", 0)),
        dtype=str(data.get("dtype", "auto")), chat_template=chat,
        max_model_len=int(data.get("max_model_len", 2048)),
        model_args=str(data.get("model_args") or ""), lm_eval_args=tuple(str(a) for a in extra),
        scale=float(data.get("scale", 0.0)),
        task_metadata=_task_metadata(data.get("task_metadata"), source),
    )
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


def _task_metadata(value: Any, source: Path) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise CulnigError(f"{source}: task_metadata must be a mapping (e.g. culnig_max_docs: 50)")
    return tuple(sorted((str(k), _json_roundtrip(v)) for k, v in value.items()))


# --- tasks ------------------------------------------------------------------------------------
def version_str(v: Any) -> str:
    """lm-eval records leaf versions as numbers and group versions as strings: one spelling."""
    try:
        return repr(float(v))
    except (TypeError, ValueError):
        return str(v)


def resolve_tasks(names: tuple[str, ...], lm_eval_args: tuple[str, ...] = ()
                  ) -> tuple[list[str], dict[str, str]]:
    """Expand patterns; return the task/group names lm-eval will be given and the version of every
    group and leaf task they contain (what lm-eval will record in ``results["versions"]``).

    An ``--include_path DIR`` among the extra lm-eval arguments replaces culnig's task folder (lm-eval
    takes one include path): the tasks are then resolved in DIR, e.g. the perplexity tasks that
    ``culnig tasks ppl`` writes (:func:`culnig_tasks.ppl.resolve_ppl_tasks`)."""
    from culnig_tasks.ppl import include_path_of, resolve_ppl_tasks

    include = include_path_of(lm_eval_args)
    if include is not None:
        return resolve_ppl_tasks(tuple(names), include)
    from lm_eval.tasks import TaskManager

    from culnig.paths import tasks_dir

    def expand(tm) -> tuple[list[str], list[str]]:
        out, missing = [], []
        for n in names:
            if any(ch in n for ch in "*?["):
                matched = tm.match_tasks([n])
            else:
                matched = [n] if n in tm.task_index else []
            (out.extend(matched) if matched else missing.append(n))
        return out, missing

    tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    resolved, missing = expand(tm)
    if missing:
        tm = TaskManager(include_path=str(tasks_dir()))
        resolved, missing = expand(tm)
    if missing:
        raise CulnigError(f"unknown task {missing[0]!r}; culnig's groups: "
                          f"{', '.join(g for g in tm.all_groups if g.startswith('culnig_'))}")
    resolved = list(dict.fromkeys(resolved))
    versions: dict[str, str] = {}

    def visit(name: str, depth: int = 0) -> None:
        entry = tm.task_index.get(name)
        if entry is None or depth > 8:
            raise CulnigError(f"task {name!r} is not in lm-eval's task index")
        kind = entry.kind.name
        cfg = entry.cfg or {}
        if kind == "TAG":
            raise CulnigError(f"{name!r} is an lm-eval tag; name its groups or tasks instead")
        versions[name] = version_str((cfg.get("metadata") or {}).get("version", "0"))
        if kind == "GROUP":
            for child in cfg.get("task", []):
                visit(child if isinstance(child, str) else child.get("task", child.get("group")), depth + 1)

    for n in resolved:
        visit(n)
    return resolved, versions


# --- planning ---------------------------------------------------------------------------------
def _json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _draw_random_sets(cfg: SweepConfig, spec: ModelSpec) -> None:
    """Write RUN_DIR/sets/<model>/random_seed<k>.json like ``culnig select random`` (kept when an
    identical file exists; a different one, drawn from another general set, is an error)."""
    from attribution.selection import random_like
    from culnig.neuron_sets import ModelShape, NeuronSet, file_sha256

    general, seeds = spec.random_like
    ref = NeuronSet.load(general)
    shape = ModelShape.from_meta(ref.model, str(general))
    out_dir = cfg.run_dir / "sets" / spec.name
    by_seed = {c.seed: c for c in spec.checkpoints if c.kind == "random"}
    for seed in seeds:
        ns = NeuronSet(model=ref.model, method="random", neurons=random_like(shape, ref, seed),
                       params={"seed": seed, "like": ref.method,
                               "sampling": "uniform per module, all layers"},
                       sources={"like": file_sha256(general)})
        path = out_dir / f"random_seed{seed}.json"
        text = json.dumps(ns.to_json(), indent=1) + "\n"
        if path.exists():
            if path.read_text() != text:
                raise CulnigError(f"{path} was drawn from another general set than {general}; use a "
                                  "new run dir for a new general set")
        else:
            atomic_write_text(path, text)
        by_seed[seed].set_path = path


@dataclass
class PlannedCheckpoint:
    cp: Checkpoint
    model: ModelSpec
    key: dict[str, Any]
    set_info: dict[str, Any] | None
    result_dir: Path
    ckpt_dir: Path | None  # None for orig (evaluated in place)


def _orig_key(path: Path) -> dict[str, Any]:
    from masking.source import resolve_source

    from culnig.registry import layout_for

    src = resolve_source(str(path))
    layout = layout_for(json.loads((src.path / "config.json").read_text()))
    return {"source_path": str(src.path), "source_revision": src.revision,
            "weights_stamp": src.stamp(), "fingerprint": layout.fingerprint,
            "set_sha256": None, "scale": None}


def plan(cfg: SweepConfig) -> list[PlannedCheckpoint]:
    """Resolve every checkpoint's identity (source weights, set hash, scale) without writing
    anything but the random set files; every set is validated against its model up front."""
    from masking.bake import prepare_request

    out: list[PlannedCheckpoint] = []
    for spec in cfg.models:
        if spec.random_like is not None:
            _draw_random_sets(cfg, spec)
        orig_key = _orig_key(spec.path)
        for cp in spec.checkpoints:
            result_dir = cfg.run_dir / "results" / spec.name / cp.name
            if cp.kind == "orig":
                out.append(PlannedCheckpoint(cp, spec, orig_key, None, result_dir, None))
                continue
            req = prepare_request(str(spec.path), cp.set_path, cfg.settings.scale)
            ns = req.neuron_set
            set_info = {"file": str(Path(cp.set_path).resolve()), "sha256": req.key.set_sha256,
                        "method": ns.method, "params": ns.params, "counts": ns.counts(),
                        "per_layer": ns.per_layer_counts(req.layout.n_layers)}
            out.append(PlannedCheckpoint(cp, spec, _json_roundtrip(asdict(req.key)), set_info,
                                         result_dir, cfg.checkpoint_dir / spec.name / cp.name))
    return out


# --- completeness -----------------------------------------------------------------------------
def read_record(result_dir: Path) -> dict | None:
    try:
        data = json.loads((result_dir / EVAL_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == EVAL_FORMAT else None


def result_state(result_dir: Path, key: dict, settings: dict, versions: dict) -> tuple[str, str]:
    """``("complete", "")``, ``("absent", "")`` or ``("stale", why)`` for a result folder."""
    if not result_dir.exists():
        return "absent", ""
    rec = read_record(result_dir)
    if rec is None:
        return "stale", f"{result_dir} has no readable {EVAL_RECORD}"
    res = result_dir / str(rec.get("results_file", ""))
    if not res.is_file() or sha256_file(res) != rec.get("results_sha256"):
        return "stale", f"{res} is missing or was changed after the evaluation"
    for f in (rec.get("samples_files") or {}).values():
        if not (result_dir / f).is_file():
            return "stale", f"{result_dir / f} is missing"
    checks = (("checkpoint", rec.get("checkpoint_key"), key),
              ("settings", rec.get("settings"), settings),
              ("task versions", rec.get("versions"), versions))
    for what, have, want in checks:
        have, want = _json_roundtrip(have), _json_roundtrip(want)
        if have != want:
            diff = _first_difference(have, want)
            return "stale", f"{result_dir} was evaluated with other {what} ({diff})"
    return "complete", ""


def _first_difference(have: Any, want: Any) -> str:
    if isinstance(have, dict) and isinstance(want, dict):
        for k in sorted(set(have) | set(want)):
            if have.get(k) != want.get(k):
                return f"{k}: recorded {have.get(k)!r}, now {want.get(k)!r}"
    return f"recorded {have!r}, now {want!r}"


# --- evaluation -------------------------------------------------------------------------------
def evaluate_checkpoint(model_path: Path, out_dir: Path, settings: EvalSettings, tasks: list[str], *,
                        batch_size: str, isolation: str, log_path: Path) -> None:
    """Run lm-eval on one checkpoint, writing under ``out_dir`` (the sweep's evaluator)."""
    from culnig.evaluate import EvalRequest, run_eval

    req = EvalRequest(model=str(model_path), tasks=",".join(tasks), backend=settings.backend,
                      output=str(out_dir), dtype=settings.dtype, batch_size=batch_size,
                      limit=settings.limit, seed=settings.seed, chat_template=settings.chat_template,
                      max_model_len=settings.max_model_len, log_samples=True,
                      model_args=settings.model_args, extra=list(settings.lm_eval_args),
                      task_metadata=dict(settings.task_metadata))
    if isolation == "inprocess":
        with open(log_path, "w") as log, contextlib.redirect_stdout(log):  # lm-eval's tables
            run_eval(req)
        gc.collect()
        return
    argv = [sys.executable, "-m", "culnig.cli", "eval", "--model", req.model, "--tasks", req.tasks,
            "--backend", req.backend, "--output", req.output, "--dtype", req.dtype,
            "--batch-size", req.batch_size, "--seed", str(req.seed),
            "--chat-template", req.chat_template, "--max-model-len", str(req.max_model_len)]
    if req.limit is not None:
        argv += ["--limit", repr(req.limit) if req.limit < 1 else str(int(req.limit))]
    if req.model_args:
        argv += ["--model-args", req.model_args]
    if req.task_metadata:
        argv += ["--task-metadata", json.dumps(req.task_metadata, sort_keys=True)]
    if req.extra:
        argv += ["--", *req.extra]
    with open(log_path, "w") as log:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise CulnigError(f"evaluating {model_path} failed (exit {proc.returncode}); log: {log_path}\n"
                          + "\n".join("  " + t for t in tail))


def _collect_outputs(tmp: Path) -> tuple[str, dict[str, str], dict]:
    """Move lm-eval's results and samples from ``tmp/lm_eval/<model>/`` to ``tmp``."""
    results = sorted((tmp / "lm_eval").rglob("results_*.json"))
    if len(results) != 1:
        raise CulnigError(f"lm-eval wrote {len(results)} results files under {tmp / 'lm_eval'}, "
                          "expected 1")
    res = results[0]
    data = json.loads(res.read_text())
    res.rename(tmp / res.name)
    samples: dict[str, str] = {}
    for f in sorted(res.parent.glob("samples_*.jsonl")):
        stem = f.name[len("samples_"):]
        task = stem.rsplit("_", 1)[0]
        f.rename(tmp / f.name)
        samples[task] = f.name
    shutil.rmtree(tmp / "lm_eval")
    return res.name, samples, data


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            alive = False
            if pid > 0:
                try:
                    os.kill(pid, 0)
                    alive = True
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    alive = True
            if alive and pid != os.getpid():
                raise CulnigError(f"another sweep (pid {pid}) is running in {run_dir}; wait for it "
                                  f"or remove {lock} if it is gone") from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _clean_leftovers(folder: Path) -> None:
    """Remove temporary siblings an interrupted sweep (or bake) left behind."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@dataclass
class SweepSummary:
    run_dir: Path
    total: int
    skipped: int = 0
    evaluated: int = 0
    baked: int = 0
    stale_moved: int = 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_sweep(cfg: SweepConfig, *, force: bool = False, dry_run: bool = False,
              progress: bool = True) -> SweepSummary:
    from tqdm import tqdm

    from masking.bake import bake

    tasks, versions = resolve_tasks(cfg.settings.tasks, cfg.settings.lm_eval_args)
    settings = cfg.settings.record()
    settings["tasks"] = tasks
    with _run_lock(cfg.run_dir):
        planned = plan(cfg)
        states = [result_state(p.result_dir, p.key, settings, versions) for p in planned]
        stale = [(p, why) for p, (s, why) in zip(planned, states) if s == "stale"]
        if stale and not force and not dry_run:
            p, why = stale[0]
            raise CulnigError(f"{why}; this run dir holds {len(stale)} result(s) made for other "
                              "settings: use a new run_dir, or pass --force to set them aside under "
                              f"{cfg.run_dir / 'stale'} and evaluate again")
        summary = SweepSummary(cfg.run_dir, total=len(planned))
        done = sum(s == "complete" for s, _ in states)
        summary.skipped = done
        print(f"sweep {cfg.run_dir}: {len(planned)} checkpoint(s) over {len(cfg.models)} model(s), "
              f"{done} complete, {len(planned) - done} to evaluate; tasks {','.join(tasks)}",
              file=sys.stderr)
        if dry_run:
            for p, (s, why) in zip(planned, states):
                print(f"  {p.cp.label:40s} {s}{': ' + why if why else ''}", file=sys.stderr)
            return summary
        atomic_write_text(cfg.run_dir / "sweep.json", json.dumps({
            "config": str(cfg.source.resolve()), "written": _now(), "culnig_version": __version__,
            "settings": settings, "versions": versions, "batch_size": cfg.batch_size,
            "isolation": cfg.isolation, "delete_masked": cfg.delete_masked,
            "checkpoints": [{"model": p.cp.model, "checkpoint": p.cp.name, "kind": p.cp.kind,
                             "state": s} for p, (s, _) in zip(planned, states)],
        }, indent=1) + "\n")
        for spec in cfg.models:
            _clean_leftovers(cfg.run_dir / "results" / spec.name)
            _clean_leftovers(cfg.checkpoint_dir / spec.name)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        bar = tqdm(total=len(planned), initial=done, desc="sweep", unit="ckpt", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        try:
            for p, (state, _) in zip(planned, states):
                if state == "complete":
                    if cfg.delete_masked and p.ckpt_dir is not None and p.ckpt_dir.exists():
                        shutil.rmtree(p.ckpt_dir)
                    continue
                if state == "stale":
                    dest = cfg.run_dir / "stale" / stamp / p.cp.model / p.cp.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    p.result_dir.rename(dest)
                    summary.stale_moved += 1
                bar.set_postfix_str(p.cp.label)
                started = time.time()
                if p.ckpt_dir is None:
                    model_path = p.model.path
                else:
                    res = bake(str(p.model.path), p.cp.set_path, p.ckpt_dir, scale=cfg.settings.scale,
                               force=True, skip_if_matching=True)
                    summary.baked += not res.skipped
                    model_path = p.ckpt_dir
                _evaluate_one(cfg, p, model_path, tasks, settings, versions, started)
                summary.evaluated += 1
                if cfg.delete_masked and p.ckpt_dir is not None:
                    shutil.rmtree(p.ckpt_dir, ignore_errors=True)
                bar.update(1)
                bar.write(f"sweep: {p.cp.label} done in {time.time() - started:.0f} s", file=sys.stderr)
        finally:
            bar.close()
    return summary


def _evaluate_one(cfg: SweepConfig, p: PlannedCheckpoint, model_path: Path, tasks: list[str],
                  settings: dict, versions: dict, started: float) -> None:
    parent = p.result_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{p.cp.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # looked up at call time, so tests can replace the evaluator
        sys.modules[__name__].evaluate_checkpoint(
            model_path, tmp / "lm_eval", cfg.settings, tasks, batch_size=cfg.batch_size,
            isolation=cfg.isolation, log_path=tmp / "eval.log")
        results_file, samples, data = _collect_outputs(tmp)
        got = {k: version_str(v) for k, v in (data.get("versions") or {}).items()}
        if got != versions:
            raise CulnigError(f"lm-eval recorded task versions {got} for {p.cp.label}, expected "
                              f"{versions}; did the tasks change during the sweep?")
        record = {
            "format": EVAL_FORMAT, "culnig_version": __version__,
            "model": p.cp.model, "checkpoint": p.cp.name, "kind": p.cp.kind,
            "seed": p.cp.seed, "country": p.cp.country,
            "model_ref": p.model.ref, "model_path": str(p.model.path),
            "evaluated_path": str(model_path),
            "checkpoint_key": p.key, "set": p.set_info, "settings": settings, "versions": versions,
            "results_file": results_file, "results_sha256": sha256_file(tmp / results_file),
            "samples_files": samples, "batch_size": cfg.batch_size, "isolation": cfg.isolation,
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "finished": _now(), "seconds": round(time.time() - started, 1),
        }
        atomic_write_text(tmp / EVAL_RECORD, json.dumps(record, indent=1) + "\n")
        os.chmod(tmp / EVAL_RECORD, 0o666 & ~_umask())  # mkstemp made it private
        tmp.rename(p.result_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
