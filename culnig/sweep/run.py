"""Running a sweep: plan every checkpoint's identity, bake the masked checkpoints, evaluate each
into its result folder (:func:`culnig.results.evaluate_into`), skipping complete results.

With isolation ``engine`` each model's checkpoints are evaluated on one kept engine
(:class:`culnig.engine.holder.EngineHolder`). Run directory: ``sweep.json`` (the plan), ``sets/<model>/`` (random sets drawn by the sweep),
``checkpoints/<model>/<checkpoint>/``, ``results/<model>/<checkpoint>/``, ``stale/<time>/``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from culnig import __version__
from culnig.atomic import atomic_write_text, clean_leftovers, now_iso, run_lock
from culnig.engine.holder import EngineHolder
from culnig.errors import CulnigError
from culnig.results import evaluate_into, result_state
from culnig.settings import json_roundtrip
from culnig.sweep.config import Checkpoint, ModelSpec, SweepConfig
from culnig_tasks.lmeval import resolve_tasks

LOCK = ".sweep.lock"


def _draw_random_sets(cfg: SweepConfig, spec: ModelSpec) -> None:
    """Write RUN_DIR/sets/<model>/random_seed<k>.json like ``culnig select random`` (kept when an
    identical file exists; a different one, drawn from another general set, is an error)."""
    from attribution.selection import random_set_like
    from culnig.neuron_sets import NeuronSet

    general, seeds = spec.random_like
    ref = NeuronSet.load(general)
    out_dir = cfg.run_dir / "sets" / spec.name
    by_seed = {c.seed: c for c in spec.checkpoints if c.kind == "random"}
    for seed in seeds:
        ns = random_set_like(ref, general, seed)
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

    from culnig.loading import layout_of

    src = resolve_source(str(path))
    layout = layout_of(str(src.path))
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
            out.append(PlannedCheckpoint(cp, spec, json_roundtrip(asdict(req.key)), set_info,
                                         result_dir, cfg.checkpoint_dir / spec.name / cp.name))
    return out


@dataclass
class SweepSummary:
    run_dir: Path
    total: int
    skipped: int = 0
    evaluated: int = 0
    baked: int = 0
    stale_moved: int = 0


def run_sweep(cfg: SweepConfig, *, force: bool = False, dry_run: bool = False,
              progress: bool = True) -> SweepSummary:
    from tqdm import tqdm

    from masking.bake import bake

    tasks, versions = resolve_tasks(cfg.settings.tasks, cfg.settings.lm_eval_args)
    settings = cfg.settings.record()
    settings["tasks"] = tasks
    with run_lock(cfg.run_dir, LOCK, what="sweep"):
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
            "config": str(cfg.source.resolve()), "written": now_iso(), "culnig_version": __version__,
            "settings": settings, "versions": versions, "batch_size": cfg.batch_size,
            "isolation": cfg.isolation, "delete_masked": cfg.delete_masked,
            "checkpoints": [{"model": p.cp.model, "checkpoint": p.cp.name, "kind": p.cp.kind,
                             "state": s} for p, (s, _) in zip(planned, states)],
        }, indent=1) + "\n")
        for spec in cfg.models:
            clean_leftovers(cfg.run_dir / "results" / spec.name)
            clean_leftovers(cfg.checkpoint_dir / spec.name)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        bar = tqdm(total=len(planned), initial=done, desc="sweep", unit="ckpt", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        engines = EngineHolder() if cfg.isolation == "engine" else None
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
                _evaluate_one(cfg, p, model_path, tasks, settings, versions, engines)
                summary.evaluated += 1
                if cfg.delete_masked and p.ckpt_dir is not None:
                    shutil.rmtree(p.ckpt_dir, ignore_errors=True)
                bar.update(1)
                bar.write(f"sweep: {p.cp.label} done in {time.time() - started:.0f} s", file=sys.stderr)
        finally:
            bar.close()
            if engines is not None:
                engines.close()
    return summary


def _evaluate_one(cfg: SweepConfig, p: PlannedCheckpoint, model_path: Path, tasks: list[str],
                  settings: dict, versions: dict, engines: EngineHolder | None) -> None:
    cp = p.cp
    evaluate_into(p.result_dir, model_path, cfg.settings.with_tasks(tasks), versions=versions,
                  batch_size=cfg.batch_size, isolation=cfg.isolation, recorded_settings=settings,
                  engines=engines, base=p.model.path,
                  record={"model": cp.model, "checkpoint": cp.name, "kind": cp.kind,
                          "seed": cp.seed, "country": cp.country, "model_ref": p.model.ref,
                          "model_path": str(p.model.path), "checkpoint_key": p.key,
                          "set": p.set_info})
