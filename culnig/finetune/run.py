"""`culnig finetune`'s run: check the inputs, train the chosen blocks, save a step folder every
``eval_every`` steps (resumable exactly), then evaluate step 0 and every saved step with lm-eval
into ``results/<model>/step-<N>/`` through :func:`culnig.results.evaluate_into`."""

from __future__ import annotations

import gc
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from culnig import __version__
from culnig.atomic import atomic_dir, clean_leftovers, now_iso
from culnig.engine.holder import EngineHolder
from culnig.errors import CulnigError
from culnig.finetune.data import BatchOrder, load_train_rows, sample_rows
from culnig.finetune.options import (FORMAT, MANIFEST, TASKS, FinetuneOptions, FinetuneResult,
                                     check_options, model_name)
from culnig.finetune.state import (STATE_DIR, load_state, prepare_out, save_checkpoint,
                                   save_state, saved_steps, step_dir, write_manifest)
from culnig.finetune.train import (batch_loss, encode_rows, freeze_except, resolve_device,
                                   source_dtype, trainable_named)
from culnig.results import evaluate_into, first_difference, result_state
from culnig.settings import EvalSettings, json_roundtrip


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def recorded_settings(settings: EvalSettings) -> dict:
    """The settings a step's record and the manifest hold (``scale`` does not apply here);
    ``settings`` carries the resolved task names."""
    rec = settings.record()
    rec.pop("scale", None)
    return rec


def evaluate_step(out: Path, manifest: dict, step: int, model_path: Path, settings: EvalSettings,
                  versions: dict, o: FinetuneOptions, engines: EngineHolder | None = None) -> bool:
    """Evaluate one step's checkpoint into ``results/<model>/step-<N>/`` unless a complete result
    for the same run, step and settings is there; return whether it evaluated."""
    name = manifest["model"]["name"]
    result_dir = out / "results" / name / f"step-{step}"
    rec_settings = recorded_settings(settings)
    key = {"finetune_key_sha256": manifest["key_sha256"], "step": step}
    state, why = result_state(result_dir, key, rec_settings, versions)
    if state == "complete":
        return False
    if state == "stale":
        raise CulnigError(f"{why}; resume with the run's evaluation settings (finetune.json), or "
                          f"move {result_dir} away to evaluate that step again")
    record = {
        "model": name, "checkpoint": f"step-{step}", "kind": "finetune",
        "seed": None, "country": None,
        "model_ref": manifest["model"]["ref"], "model_path": manifest["model"]["path"],
        "checkpoint_key": key, "set": None,
        "finetune": {"run": str(out.resolve()), "step": step, "which": manifest["which"],
                     "budget": manifest["budget"], "task": manifest["task"],
                     "trainable_fraction": manifest["params"]["trainable_fraction"],
                     "set_sha256": manifest["set"]["sha256"]},
    }
    evaluate_into(result_dir, model_path, settings, versions=versions, record=record,
                  batch_size=o.eval_batch_size, isolation=o.eval_isolation,
                  recorded_settings=rec_settings, engines=engines,
                  base=Path(manifest["model"]["path"]))
    return True


def run_finetune(o: FinetuneOptions) -> FinetuneResult:
    from attribution.finetune_modules import choose_modules, tensor_shapes
    from culnig.hashing import sha256_file
    from culnig.neuron_sets import NeuronSet
    from culnig.registry import layout_for
    from masking.source import resolve_source

    check_options(o)
    o.out = Path(o.out)
    spec = TASKS[o.task]
    src = resolve_source(o.model)
    config = json.loads((src.path / "config.json").read_text())
    layout = layout_for(config)
    ns = NeuronSet.load(o.set_path)
    ns.validate(layout, source=str(o.set_path))
    choice = choose_modules(layout, ns, tensor_shapes(src.path), budget=o.budget, which=o.which)
    save_dtype = source_dtype(config) if o.save_dtype == "auto" else o.save_dtype
    device = resolve_device(o.device)

    settings = versions = None
    if o.evaluate:
        from culnig_tasks.lmeval import resolve_tasks

        settings = o.eval_settings()
        tasks, versions = resolve_tasks(settings.tasks)
        settings = settings.with_tasks(tasks)  # what lm-eval is given and the records hold

    all_rows, train_source = load_train_rows(spec, o.train_file)
    n_rows = o.train_rows if o.train_rows is not None else spec.default_rows
    rows = sample_rows(all_rows, n_rows, o.seed)
    train_sha = _sha256_json(rows)
    resuming = prepare_out(o)  # only now: --force deletes the old run once the inputs are fine

    name = model_name(o.model, src.path)
    key = {
        "model": {"fingerprint": layout.fingerprint, "weights_stamp": src.stamp(),
                  "path": str(src.path)},
        "set_sha256": sha256_file(o.set_path), "which": o.which, "budget": o.budget,
        "task": o.task,
        "training": {"steps": o.steps, "lr": o.lr, "batch_size": o.batch_size,
                     "eval_every": o.eval_every, "seed": o.seed, "weight_decay": o.weight_decay,
                     "warmup_steps": o.warmup_steps, "max_grad_norm": o.max_grad_norm,
                     "max_length": o.max_length, "dtype": o.dtype, "save_dtype": save_dtype,
                     "chat_template": o.chat_template, "train_rows": len(rows),
                     "train_sha256": train_sha},
    }
    if resuming:
        old = json.loads((o.out / MANIFEST).read_text())
        if old.get("format") != FORMAT or old.get("key") != json_roundtrip(key):
            diff = first_difference(old.get("key"), json_roundtrip(key))
            raise CulnigError(f"{o.out} is a run with other settings ({diff}); resume it with its "
                              "own settings, or pass --force to start it again")

    # --- model -----------------------------------------------------------------------------
    import torch
    from transformers import get_linear_schedule_with_warmup, set_seed

    from culnig.loading import load_model

    set_seed(o.seed)
    model, tokenizer, _ = load_model(str(src.path), o.dtype)
    model.to(device)
    counts = freeze_except(model, layout, choice.units)
    fraction = counts["trainable"] / counts["total"]
    use_template = o.chat_template == "on" or (
        o.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None)))
    if o.chat_template == "on" and not getattr(tokenizer, "chat_template", None):
        raise CulnigError(f"{o.model}: --chat-template on, but the tokenizer has no chat template")
    manifest = {
        "format": FORMAT, "culnig_version": __version__, "written": now_iso(),
        "model": {"ref": o.model, "path": str(src.path), "name": name, "arch": layout.name,
                  "fingerprint": layout.fingerprint, "revision": src.revision},
        "set": {"file": str(Path(o.set_path).resolve()), "sha256": key["set_sha256"],
                "method": ns.method, "counts": ns.counts()},
        "which": o.which, "budget": o.budget, "task": o.task,
        "modules": [asdict(u) for u in choice.units],
        "params": {"selected_checkpoint": choice.n_params, "total_checkpoint": choice.total_params,
                   "fraction_checkpoint": choice.fraction, "trainable": counts["trainable"],
                   "total": counts["total"], "trainable_fraction": fraction},
        "training": {**key["training"], "train_source": train_source,
                     "train_rows_available": len(all_rows), "use_chat_template": use_template,
                     "optimizer": "torch.optim.AdamW", "schedule": "linear (transformers)",
                     "device": str(device)},
        "eval": ({"enabled": True, "settings": recorded_settings(settings),
                  "versions": versions, "batch_size": o.eval_batch_size,
                  "isolation": o.eval_isolation, "start": o.eval_start}
                 if o.evaluate else {"enabled": False}),
        "key": key, "key_sha256": _sha256_json(key),
    }
    write_manifest(o.out, manifest)
    print(f"finetune: {len(choice.units)} block(s) ({', '.join(u.prefix for u in choice.units)}); "
          f"trainable parameters {counts['trainable']:,} of {counts['total']:,} "
          f"({fraction:.4%}; budget {o.budget:.0%}, {o.which})")

    named = trainable_named(model)
    optimizer = torch.optim.AdamW([p for _, p in named], lr=o.lr, weight_decay=o.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, o.warmup_steps, o.steps)
    clean_leftovers(o.out / "steps")
    clean_leftovers(o.out / "results" / name)
    done = saved_steps(o.out)
    start, losses = 0, []
    if resuming and done:
        start = done[-1]
        doc = load_state(step_dir(o.out, start) / STATE_DIR, model, optimizer, scheduler)
        losses = list(doc.get("losses", []))
        if start > o.steps:
            raise CulnigError(f"{o.out} holds step {start}, beyond --steps {o.steps}")
        print(f"culnig: resuming {o.out} from step {start}", file=sys.stderr)

    # --- training ---------------------------------------------------------------------------
    from tqdm import tqdm

    order = BatchOrder(len(rows), o.batch_size, o.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        tokenizer.eos_token_id or 0)
    result = FinetuneResult(out=o.out, manifest=manifest)
    model.train()
    bar = tqdm(total=o.steps, initial=start, desc=f"finetune {o.which}", unit="step",
               file=sys.stderr, disable=not o.progress, dynamic_ncols=True)
    try:
        for step in range(start, o.steps):
            batch = encode_rows(o.task, [rows[i] for i in order(step)], tokenizer, use_template,
                                o.max_length)
            loss = batch_loss(model, batch, pad_id, device)
            loss.backward()
            if o.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([p for _, p in named], o.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix_str(f"loss {losses[-1]:.4f}")
            n = step + 1
            if n % o.eval_every == 0 or n == o.steps:
                with atomic_dir(step_dir(o.out, n), force=True) as tmp:
                    save_checkpoint(tmp, model, src.path, save_dtype)
                    save_state(tmp / STATE_DIR, model, optimizer, scheduler, n,
                               {"losses": losses, "lr": scheduler.get_last_lr(),
                                "key_sha256": manifest["key_sha256"], "written": now_iso()})
                result.steps_saved.append(n)
                bar.write(f"finetune: step {n}: mean loss since step "
                          f"{max(0, n - o.eval_every)} "
                          f"{sum(losses[-o.eval_every:]) / len(losses[-o.eval_every:]):.4f}; "
                          f"saved {step_dir(o.out, n)}", file=sys.stderr)
    finally:
        bar.close()
    model.eval()
    manifest["losses"] = losses
    manifest["completed_steps"] = saved_steps(o.out)
    write_manifest(o.out, manifest)

    # --- evaluation -------------------------------------------------------------------------
    if o.evaluate:
        del model, optimizer, scheduler, named
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        result.evaluated = evaluate_steps(o, manifest, src.path, settings, versions)
    return result


def evaluate_steps(o: FinetuneOptions, manifest: dict, source: Path, settings: EvalSettings,
                   versions: dict) -> list[int]:
    """Evaluate step 0 (the source checkpoint, unless ``eval_start`` is off) and every saved
    step that has no complete result; return the steps evaluated now."""
    todo = ([(0, source)] if o.eval_start else []) + \
        [(s, step_dir(o.out, s)) for s in saved_steps(o.out)]
    done = []
    with EngineHolder() as engines:  # isolation engine: one engine for all steps
        for s, path in todo:
            if evaluate_step(o.out, manifest, s, path, settings, versions, o, engines):
                done.append(s)
                print(f"finetune: evaluated step {s} -> "
                      f"{o.out / 'results' / manifest['model']['name'] / f'step-{s}'}",
                      file=sys.stderr)
    return done
