"""``culnig attribute``: items file -> score file, with checkpoints, resume and data parallelism.

* Every ``checkpoint_every`` items the accumulators (float64) and the processed ids are written to
  ``<out>.partial`` (atomically). ``--resume`` continues from it and gives scores identical to an
  uninterrupted run: batches are formed in the same deterministic order and the float64 sums are
  restored exactly.
* Data parallel through accelerate: launched with ``accelerate launch`` each process takes every
  n-th batch and keeps its own partial file (``<out>.partial.rank<k>``); the accumulators are
  summed across processes at the end. Big models can instead be spread over devices with
  ``--device-map auto`` in a single process.
* The score file is written once, atomically, at the end; an existing one is refused unless
  ``--force``. Bad input is reported before the model is loaded.
* The model's weights stamp (:func:`culnig.loading.weights_stamp`) is part of the run: a
  checkpoint of another model (even one of the same shape) is refused on ``--resume``.
* Interrupted (Ctrl-C, SIGTERM turned into an exception, any error), the last checkpoint is
  kept and no temporary file is left; a rerun removes those of dead processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from attribution.engine import AttributionOptions, Attributor
from attribution.items import file_sha256, read_items
from attribution.scores import Scores
from culnig.atomic import atomic_file, check_new_output, clean_leftovers
from culnig.errors import CulnigError


def _partial_path(out: Path, rank: int, world: int) -> Path:
    suffix = ".partial" if world == 1 else f".partial.rank{rank}"
    return out.with_name(out.name + suffix)


def _save_partial(path: Path, state: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp),
                  metadata={"culnig_partial": json.dumps(meta)})


def _load_partial(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["culnig_partial"])
            state = {k: fh.get_tensor(k) for k in fh.keys()}
        if not isinstance(meta, dict) or not isinstance(meta.get("run"), dict):
            raise ValueError("no run record")
    except Exception as exc:  # safetensors' own errors, KeyError, JSON
        raise CulnigError(f"{path}: not a readable attribution checkpoint ({type(exc).__name__}); "
                          "pass --force to start over") from None
    return state, meta


def _check_resume(partial: Path, meta: dict, run_key: dict, model_ref: str) -> None:
    old = meta["run"]
    if old.get("weights_stamp") != run_key["weights_stamp"]:
        raise CulnigError(
            f"{partial}: checkpoint is of model {meta.get('model') or '?'} (weights "
            f"{old.get('weights_stamp') or 'unknown'}), not {model_ref} (weights "
            f"{run_key['weights_stamp'] or 'unknown'}); resume with the same --model, or pass "
            "--force to start over")
    if old != run_key:
        diff = sorted(k for k in set(run_key) | set(old) if old.get(k) != run_key.get(k))
        raise CulnigError(f"{partial}: checkpoint is from a different run ({', '.join(diff)} "
                          "changed); pass --force to start over")


def run_attribution(model_ref: str, data: str | Path, out: str | Path,
                    options: AttributionOptions, *, dtype: str = "fp32", resume: bool = False,
                    force: bool = False, checkpoint_every: int = 256, progress: bool = True,
                    device_map: str | None = None, model=None, tokenizer=None) -> Path:
    """Compute and write the score file; returns its path."""
    out = Path(out)
    if out.is_dir():
        raise CulnigError(f"{out} is a folder; --out names the score file to write, e.g. "
                          f"{out / 'scores.safetensors'}")
    out = check_new_output(out, force=force)
    clean_leftovers(out.parent)
    items = read_items(data)
    data_hash = file_sha256(data)
    countries = sorted({it.country for it in items})

    from accelerate import PartialState

    dist = PartialState(cpu=not torch.cuda.is_available())
    rank, world = dist.process_index, dist.num_processes
    partial = _partial_path(out, rank, world)
    if partial.exists() and not resume and not force:
        raise CulnigError(f"{partial}: an interrupted run left a checkpoint; pass --resume to "
                          "continue it or --force to start over")

    from culnig.loading import layout_of, weights_stamp_of
    from culnig.registry import layout_for

    # Everything a checkpoint must match is known before the model is loaded (a hub id's stamp
    # only once its files are in the cache: then it is checked again after loading).
    layout = layout_of(str(model_ref)) if model is None else layout_for(model.config)
    stamp = weights_stamp_of(str(model_ref))

    def run_key() -> dict:
        return {"data_sha256": data_hash, "fingerprint": layout.fingerprint, "weights_stamp": stamp,
                "options": options.key(), "countries": countries, "dtype": dtype,
                "world_size": world, "rank": rank}

    state, done, meta = None, [], None
    if resume and partial.exists():
        state, meta = _load_partial(partial)
        _check_resume(partial, meta, run_key(), str(model_ref))
        done = meta["done_ids"]
    if model is None:
        from culnig.loading import load_model

        model, tokenizer, layout = load_model(model_ref, dtype=dtype, device_map=device_map)
        if device_map is None and dist.device.type != "cpu":
            model.to(dist.device)
        if stamp is None:
            stamp = weights_stamp_of(str(model_ref))
            if meta is not None:
                _check_resume(partial, meta, run_key(), str(model_ref))
    att = Attributor(model, tokenizer, layout, options)
    att.encode(items)  # answers that tokenise to nothing, over-long items etc. fail here
    key = run_key()

    def checkpoint(acc, processed):
        _save_partial(partial, acc.state(), {"run": key, "model": str(model_ref),
                                             "done_ids": processed})

    acc, processed = att.run(items, countries=countries, state=state, done_ids=done,
                             on_checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                             progress=progress and dist.is_local_main_process, rank=rank,
                             world_size=world)
    if world > 1:
        checkpoint(acc, processed)
        for t in acc.state().values():
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    if dist.is_main_process:
        meta = {"model": str(model_ref), "weights_stamp": stamp, "data": str(data),
                "data_sha256": data_hash, "dtype": dtype, "world_size": world}
        att.to_scores(acc, countries, meta).save(out)
    dist.wait_for_everyone()
    partial.unlink(missing_ok=True)
    return out


def load_scores(path: str | Path) -> Scores:
    return Scores.load(path)
