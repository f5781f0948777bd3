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
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from attribution.engine import AttributionOptions, Attributor
from attribution.items import file_sha256, read_items
from attribution.scores import Scores
from culnig.atomic import check_new_output
from culnig.errors import CulnigError


def _partial_path(out: Path, rank: int, world: int) -> Path:
    suffix = ".partial" if world == 1 else f".partial.rank{rank}"
    return out.with_name(out.name + suffix)


def _save_partial(path: Path, state: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp,
                  metadata={"culnig_partial": json.dumps(meta)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_partial(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["culnig_partial"])
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    return state, meta


def run_attribution(model_ref: str, data: str | Path, out: str | Path,
                    options: AttributionOptions, *, dtype: str = "fp32", resume: bool = False,
                    force: bool = False, checkpoint_every: int = 256, progress: bool = True,
                    device_map: str | None = None, model=None, tokenizer=None) -> Path:
    """Compute and write the score file; returns its path."""
    out = check_new_output(Path(out), force=force)
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

    if model is None:
        from culnig.loading import load_model

        model, tokenizer, layout = load_model(model_ref, dtype=dtype, device_map=device_map)
        if device_map is None and dist.device.type != "cpu":
            model.to(dist.device)
    else:
        from culnig.registry import layout_for

        layout = layout_for(model.config)
    att = Attributor(model, tokenizer, layout, options)
    att.encode(items)  # answers that tokenise to nothing etc. fail here, before any work

    run_key = {"data_sha256": data_hash, "fingerprint": layout.fingerprint, "options": options.key(),
               "countries": countries, "dtype": dtype, "world_size": world, "rank": rank}
    state, done = None, []
    if resume and partial.exists():
        state, meta = _load_partial(partial)
        if meta["run"] != run_key:
            diff = sorted(k for k in run_key if meta["run"].get(k) != run_key[k])
            raise CulnigError(f"{partial}: checkpoint is from a different run ({', '.join(diff)} "
                              "changed); pass --force to start over")
        done = meta["done_ids"]

    def checkpoint(acc, processed):
        _save_partial(partial, acc.state(), {"run": run_key, "done_ids": processed})

    acc, processed = att.run(items, countries=countries, state=state, done_ids=done,
                             on_checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                             progress=progress and dist.is_local_main_process, rank=rank,
                             world_size=world)
    if world > 1:
        checkpoint(acc, processed)
        for t in acc.state().values():
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    if dist.is_main_process:
        meta = {"model": str(model_ref), "data": str(data), "data_sha256": data_hash, "dtype": dtype,
                "world_size": world}
        att.to_scores(acc, countries, meta).save(out)
    dist.wait_for_everyone()
    partial.unlink(missing_ok=True)
    return out


def load_scores(path: str | Path) -> Scores:
    return Scores.load(path)
