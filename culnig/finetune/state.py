"""The run folder of `culnig finetune`: its manifest, step folders (an HF checkpoint plus the
training state: trainable parameters, AdamW moments, schedule and RNG, as safetensors and JSON,
no pickle), and the checks that decide whether a folder is started, resumed or replaced."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from culnig.atomic import atomic_write_text
from culnig.errors import CulnigError
from culnig.finetune.options import FORMAT, MANIFEST, FinetuneOptions
from culnig.finetune.train import trainable_named

STATE_DIR = "training_state"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


def step_dir(out: Path, step: int) -> Path:
    return out / "steps" / f"step-{step}"


def saved_steps(out: Path) -> list[int]:
    """Steps with a complete folder (checkpoint and training state), ascending."""
    root = out / "steps"
    steps = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith("step-") and p.name[5:].isdigit() and \
                    (p / STATE_DIR / STATE_JSON).is_file():
                steps.append(int(p.name[5:]))
    return sorted(steps)


def _rng_state() -> dict:
    import torch

    state = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"rng.cuda.{i}"] = s
    return state


def save_state(folder: Path, model, optimizer, scheduler, step: int, extra: dict) -> None:
    """Trainable parameters, AdamW state, schedule and RNG: safetensors + JSON (no pickle)."""
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    for name, p in trainable_named(model):
        tensors[f"param.{name}"] = p.detach().cpu().contiguous()
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict] = {}
    for idx, st in opt["state"].items():
        for k, v in st.items():
            if hasattr(v, "shape"):
                tensors[f"optimizer.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                opt_scalars.setdefault(str(idx), {})[k] = v
    tensors.update(_rng_state())
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / STATE_TENSORS), metadata={"format": FORMAT})
    sched = scheduler.state_dict()
    doc = {"format": FORMAT, "step": step, "optimizer_param_groups": opt["param_groups"],
           "optimizer_scalars": opt_scalars, "scheduler": sched,
           "trainable": [n for n, _ in trainable_named(model)], **extra}
    (folder / STATE_JSON).write_text(json.dumps(doc, indent=1) + "\n")


def load_state(folder: Path, model, optimizer, scheduler) -> dict:
    import torch
    from safetensors.torch import load_file

    doc = json.loads((folder / STATE_JSON).read_text())
    tensors = load_file(str(folder / STATE_TENSORS))
    named = trainable_named(model)
    if [n for n, _ in named] != doc["trainable"]:
        raise CulnigError(f"{folder}: the saved trainable parameters are not this run's; start "
                          "again with --force")
    with torch.no_grad():
        for name, p in named:
            p.copy_(tensors[f"param.{name}"].to(p.device, p.dtype))
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optimizer."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for idx, scalars in doc["optimizer_scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    groups = doc["optimizer_param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(doc["scheduler"])
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return doc


AUX_SUFFIXES = (".json", ".jinja", ".model", ".txt", ".tiktoken")


def save_checkpoint(folder: Path, model, source: Path, save_dtype: str) -> None:
    """``save_pretrained`` (safetensors) in ``save_dtype``, without changing the live model, plus
    the source's tokenizer, chat template and processor files as they are (so every step
    tokenizes exactly as the source model does)."""
    import torch

    dtype = getattr(torch, save_dtype)
    sd, cache = {}, {}
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), tuple(v.shape), v.dtype)
        if key not in cache:  # tied tensors stay one tensor
            cache[key] = v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype)
        sd[k] = cache[key]
    model.save_pretrained(folder, state_dict=sd)
    for f in sorted(Path(source).iterdir()):
        if f.is_file() and f.suffix in AUX_SUFFIXES and not (folder / f.name).exists() and \
                not f.name.startswith("culnig_") and not f.name.endswith(".index.json"):
            shutil.copy2(f, folder / f.name)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for c in (cfg, cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else None):
        if c is not None:
            for key in ("dtype", "torch_dtype"):
                if key in c or (key == "dtype" and c is cfg):
                    c[key] = save_dtype
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")



def write_manifest(out: Path, manifest: dict) -> None:
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def prepare_out(o: FinetuneOptions) -> bool:
    """Check DIR; return True when an existing run is resumed."""
    out = o.out
    if not out.exists():
        if o.resume:
            print(f"culnig: {out} does not exist yet; starting a new run", file=sys.stderr)
        return False
    if not out.is_dir():
        raise CulnigError(f"--out {out} is a file; pass a folder")
    is_run = (out / MANIFEST).is_file()
    empty = not any(out.iterdir())
    if o.resume:
        if not is_run and not empty:
            raise CulnigError(f"--out {out} is not a culnig finetune folder (no {MANIFEST}); "
                              "nothing to resume")
        return is_run
    if empty:
        return False
    if not o.force:
        raise CulnigError(f"{out} already exists; pass --resume to continue that run or --force "
                          "to start it again (this deletes it)")
    if not is_run:
        raise CulnigError(f"--out {out} is not a culnig finetune folder (no {MANIFEST}); "
                          "--force only replaces finetune runs; choose another --out")
    shutil.rmtree(out)
    return False
