"""``culnig finetune``: fine-tune only the culture-aware module blocks (paper Sec. 4.5, Fig. 5).

The blocks come from :func:`attribution.finetune_modules.choose_modules` (what ``culnig modules``
prints): each layer's MLP block (a selected gate neuron brings gate, up and down) or attention block
(a selected q/k/v neuron brings q, k, v, o and any q/k norm), ranked by the number of the set's
neurons they hold (``top`` or ``bottom``) and taken while they fit the parameter budget. Every other
parameter has ``requires_grad`` off and is not given to the optimizer, so AdamW's weight decay
cannot touch it: after training those tensors are byte-identical to the source checkpoint's.

Training data: GLUE QNLI (10,000 rows drawn at random from ``nyu-mll/glue`` qnli train by default)
or MRPC (its train split), or ``--train-file`` (JSONL in the hub schema). A row is rendered exactly
as the evaluation task's first prompt variant (``culnig_tasks/prompts.json``), through the chat
template when the tokenizer has one (:func:`attribution.encode.encode_item`, the attribution's and
lm-eval's rendering), and the loss is the cross-entropy of the gold label's token(s) only.
AdamW + linear schedule (transformers' ``get_linear_schedule_with_warmup``), gradient clipping,
right-padded batches with the LM head applied only at the label positions.

Run folder ``DIR``::

    DIR/finetune.json                 manifest: model, set, chosen blocks, parameter counts and the
                                      real trainable fraction, training and evaluation settings
    DIR/steps/step-<N>/               a normal HF checkpoint (safetensors, config, tokenizer) at every
                                      evaluation step, in the source checkpoint's dtype, plus
      training_state/state.safetensors   trainable parameters (training dtype), AdamW moments,
      training_state/state.json          RNG, scheduler and optimizer settings, step, losses
    DIR/results/<model>/step-<N>/     lm-eval results of that step (step-0: the source checkpoint),
                                      the same layout as a sweep's result folders (culnig_eval.json)

Step folders are written to a temporary sibling and renamed, so a step folder is complete or
absent. ``--resume`` continues from the newest step folder: the batch of step ``s`` is a function
of ``(seed, s)`` only (a seeded permutation per epoch), and parameters, AdamW state, schedule and RNG
are restored exactly, so a resumed run ends with the same weights as an uninterrupted one.
Evaluation runs after training (the training model is freed first, so vLLM gets the GPU) for every
step folder without a complete result; an interrupted evaluation is redone by ``--resume``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from culnig import __version__
from culnig.atomic import atomic_dir, atomic_write_text
from culnig.errors import CulnigError

FORMAT = "culnig-finetune/1"
MANIFEST = "finetune.json"
STATE_DIR = "training_state"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
CULTURAL_EVAL_TASKS = ("culnig_blendmcq", "culnig_countryrc")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    fields: tuple[str, ...]
    default_rows: int | None  # rows drawn at random from the training split; None = all


TASKS = {
    "qnli": TaskSpec("qnli", ("question", "sentence"), 10_000),
    "mrpc": TaskSpec("mrpc", ("sentence1", "sentence2"), None),
}


@dataclass
class FinetuneOptions:
    model: str
    set_path: Path
    out: Path
    which: str = "top"
    budget: float = 0.10
    task: str = "qnli"
    steps: int = 600
    lr: float = 3e-5
    batch_size: int = 16
    eval_every: int = 200
    seed: int = 0
    train_file: Path | None = None
    train_rows: int | None = None  # None: the task's default (QNLI 10,000; MRPC all)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    max_length: int = 1024
    dtype: str = "fp32"
    save_dtype: str = "auto"
    device: str = "auto"
    chat_template: str = "auto"
    evaluate: bool = True
    eval_tasks: tuple[str, ...] | None = None
    eval_backend: str = "vllm"
    eval_limit: float | None = None
    eval_batch_size: str = "auto"
    eval_isolation: str = "subprocess"
    eval_max_model_len: int = 2048
    eval_model_args: str = ""
    eval_start: bool = True
    resume: bool = False
    force: bool = False
    progress: bool = True


@dataclass
class FinetuneResult:
    out: Path
    manifest: dict
    steps_saved: list[int] = field(default_factory=list)
    evaluated: list[int] = field(default_factory=list)


# --- small helpers -----------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _first_difference(have: Any, want: Any, prefix: str = "") -> str:
    if isinstance(have, dict) and isinstance(want, dict):
        for k in sorted(set(have) | set(want)):
            if have.get(k) != want.get(k):
                return _first_difference(have.get(k), want.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.') or 'value'}: recorded {have!r}, now {want!r}"


def _check_options(o: FinetuneOptions) -> None:
    if o.task not in TASKS:
        raise CulnigError(f"unknown task {o.task!r}; use one of: {', '.join(TASKS)}")
    for name, value in (("--steps", o.steps), ("--batch-size", o.batch_size),
                        ("--eval-every", o.eval_every), ("--max-length", o.max_length)):
        if value < 1:
            raise CulnigError(f"{name} must be at least 1, got {value}")
    if not o.lr > 0:
        raise CulnigError(f"--lr must be positive, got {o.lr:g}")
    if o.warmup_steps < 0 or o.warmup_steps > o.steps:
        raise CulnigError(f"--warmup-steps must be in 0..{o.steps}, got {o.warmup_steps}")
    if o.weight_decay < 0:
        raise CulnigError(f"--weight-decay must be >= 0, got {o.weight_decay:g}")
    if o.train_rows is not None and o.train_rows < 1:
        raise CulnigError(f"--train-rows must be at least 1, got {o.train_rows}")
    if o.eval_limit is not None and not o.eval_limit > 0:
        raise CulnigError(f"--eval-limit must be positive, got {o.eval_limit:g}")
    if o.resume and o.force:
        raise CulnigError("--resume and --force contradict each other: --resume continues DIR, "
                          "--force starts it again")


def model_name(ref: str, path: Path) -> str:
    """The name of the model's folder under ``results/`` (as ``culnig sweep`` names it)."""
    import re

    name = ref if ref in ("demo", "smollm2") else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


# --- training data -----------------------------------------------------------------------------
def _validate_rows(rows: list[dict], spec: TaskSpec, where: str) -> list[dict]:
    out = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise CulnigError(f"{where}:{i}: a row must be a JSON object")
        for key in (*spec.fields, "label"):
            if key not in row or row[key] is None:
                raise CulnigError(f"{where}:{i}: missing field {key!r} (the nyu-mll/glue {spec.name} "
                                  f"schema: {', '.join(spec.fields)}, label, idx)")
        for key in spec.fields:
            if not isinstance(row[key], str):
                raise CulnigError(f"{where}:{i}: field {key!r} must be a string")
        label = row["label"]
        if isinstance(label, bool) or label not in (0, 1):
            raise CulnigError(f"{where}:{i}: label must be 0 or 1, got {label!r}")
        out.append({**{k: row[k] for k in spec.fields}, "label": int(label),
                    "idx": row.get("idx", i - 1)})
    if not out:
        raise CulnigError(f"{where}: no training rows")
    return out


def read_train_file(path: Path, spec: TaskSpec) -> list[dict]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CulnigError(f"--train-file {path}: no such file") from None
    except OSError as exc:
        raise CulnigError(f"--train-file {path}: cannot read it ({exc.strerror})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CulnigError(f"{path}:{n}: not JSON ({exc.msg})") from None
    return _validate_rows(rows, spec, str(path))


def load_train_rows(spec: TaskSpec, train_file: Path | None) -> tuple[list[dict], str]:
    """All training rows and where they came from (the file, or the hub's train split)."""
    if train_file is not None:
        return read_train_file(train_file, spec), str(Path(train_file).resolve())
    from culnig_tasks.data import DataUnavailable, load_split

    try:
        ds = load_split("nyu-mll/glue", spec.name, "train", f"glue/{spec.name}_train.jsonl")["train"]
    except DataUnavailable as exc:
        raise CulnigError(
            f"the {spec.name.upper()} training split (nyu-mll/glue {spec.name}, train) is not "
            f"available: {str(exc).splitlines()[0]}. Pass --train-file PATH (JSONL in the hub "
            f"schema: {', '.join(spec.fields)}, label, idx)"
        ) from None
    return _validate_rows([dict(r) for r in ds], spec, f"nyu-mll/glue {spec.name} train"), \
        f"nyu-mll/glue/{spec.name}/train"


def sample_rows(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """``n`` rows drawn without replacement with ``seed`` (all rows, in order, when n is None or
    at least their number)."""
    import numpy as np

    if n is None or n >= len(rows):
        return list(rows)
    pick = np.random.default_rng([seed, 0x51A7]).permutation(len(rows))[:n]
    return [rows[int(i)] for i in pick]


def prompt_text(task: str, row: dict) -> str:
    """The evaluation task's first prompt variant filled with ``row`` (culnig_tasks/<task>)."""
    from culnig_tasks.prompts import variants

    return variants(task)[0].format(**{k: row[k] for k in TASKS[task].fields})


class BatchOrder:
    """Row indices of the batch at step ``s``: epoch ``e`` visits the rows in the permutation drawn
    from ``(seed, e)``, and the steps walk through the epochs' concatenation. A function of
    ``(seed, s)`` only, so a resumed run sees the same batches."""

    def __init__(self, n_rows: int, batch_size: int, seed: int):
        self.n, self.b, self.seed = n_rows, batch_size, seed
        self._perms: dict[int, Any] = {}

    def _perm(self, epoch: int):
        import numpy as np

        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def __call__(self, step: int) -> list[int]:
        out = []
        for pos in range(step * self.b, (step + 1) * self.b):
            epoch, r = divmod(pos, self.n)
            out.append(int(self._perm(epoch)[r]))
        return out


# --- model and modules -------------------------------------------------------------------------
def block_name(layout, kind: str) -> str:
    """The decoder-layer submodule of a unit: ``mlp`` or ``self_attn`` (from the registry)."""
    return layout.site("gate" if kind == "mlp" else "q").path.split(".")[0]


def freeze_except(model, layout, units) -> dict[str, int]:
    """Turn ``requires_grad`` off everywhere but in the chosen blocks; return the counts."""
    model.requires_grad_(False)
    layers = layout.layers(model)
    for u in units:
        block = layers[u.layer].get_submodule(block_name(layout, u.kind))
        n = sum(p.numel() for p in block.parameters())
        if n != u.n_params:
            raise CulnigError(f"layer {u.layer} {u.kind} block has {n:,} parameters in the loaded "
                              f"model but {u.n_params:,} in the checkpoint ({u.prefix}*)")
        block.requires_grad_(True)
    params = list(model.parameters())  # unique parameters (tied ones once)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in params)}


def trainable_named(model) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CulnigError(f"--device {device}: CUDA is not available; use --device cpu")
    return torch.device(device)


def source_dtype(config: dict) -> str:
    for cfg in (config, config.get("text_config") or {}):
        value = cfg.get("dtype") or cfg.get("torch_dtype")
        if isinstance(value, str) and value in ("float32", "bfloat16", "float16"):
            return value
    return "float32"


# --- batches -----------------------------------------------------------------------------------
def encode_rows(task: str, rows: list[dict], tokenizer, use_chat_template: bool, max_length: int):
    from attribution.encode import encode_item
    from attribution.items import Item

    out = []
    for r in rows:
        item = Item(id=str(r["idx"]), dataset=task, country="", answer=str(r["label"]),
                    prompt=prompt_text(task, r))
        out.append(encode_item(item, tokenizer, use_chat_template=use_chat_template,
                               max_length=max_length))
    return out


def batch_loss(model, encoded, pad_id: int, device):
    """Mean cross-entropy of the gold label tokens of a right-padded batch (one forward pass; the
    LM head runs only at the positions that predict a label token)."""
    import torch
    import torch.nn.functional as F

    lens = [len(e.input_ids) for e in encoded]
    ids = torch.full((len(encoded), max(lens)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, : lens[i]] = torch.tensor(e.input_ids)
        mask[i, : lens[i]] = 1
    keep = sorted({p for e, n in zip(encoded, lens) for p in range(n - e.n_answer, n)})
    col = {p: j for j, p in enumerate(keep)}
    rows, cols, targets = [], [], []
    for i, (e, n) in enumerate(zip(encoded, lens)):
        for k, tok in enumerate(e.answer_ids):
            rows.append(i)
            cols.append(col[n - e.n_answer + k])
            targets.append(tok)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                logits_to_keep=torch.tensor(keep, device=device))
    logits = out.logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    return F.cross_entropy(logits.float(), torch.tensor(targets, device=device))


# --- step folders and training state -------------------------------------------------------------
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


def _clean_leftovers(folder: Path) -> None:
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


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


# --- evaluation ----------------------------------------------------------------------------------
def eval_settings(o: FinetuneOptions):
    from culnig.sweep import EvalSettings

    tasks = o.eval_tasks or (f"culnig_{o.task}", *CULTURAL_EVAL_TASKS)
    return EvalSettings(tasks=tuple(tasks), backend=o.eval_backend, limit=o.eval_limit, seed=o.seed,
                        dtype="auto", chat_template=o.chat_template,
                        max_model_len=o.eval_max_model_len, model_args=o.eval_model_args)


def _settings_record(settings) -> dict:
    rec = settings.record()
    rec.pop("scale", None)
    return rec


def evaluate_step(out: Path, manifest: dict, step: int, model_path: Path, settings, tasks: list[str],
                  versions: dict, o: FinetuneOptions) -> bool:
    """Evaluate one step's checkpoint into ``results/<model>/step-<N>/`` unless a complete result
    for the same run, step and settings is there; return whether it evaluated."""
    from culnig import sweep
    from culnig.hashing import sha256_file

    name = manifest["model"]["name"]
    result_dir = out / "results" / name / f"step-{step}"
    rec_settings = {**_settings_record(settings), "tasks": tasks}
    key = {"finetune_key_sha256": manifest["key_sha256"], "step": step}
    state, why = sweep.result_state(result_dir, key, rec_settings, versions)
    if state == "complete":
        return False
    if state == "stale":
        raise CulnigError(f"{why}; resume with the run's evaluation settings (finetune.json), or "
                          f"move {result_dir} away to evaluate that step again")
    parent = result_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".step-{step}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    started = time.time()
    try:
        sweep.evaluate_checkpoint(model_path, tmp / "lm_eval", settings, tasks,
                                  batch_size=o.eval_batch_size, isolation=o.eval_isolation,
                                  log_path=tmp / "eval.log")
        results_file, samples, data = sweep._collect_outputs(tmp)
        got = {k: sweep.version_str(v) for k, v in (data.get("versions") or {}).items()}
        if got != versions:
            raise CulnigError(f"lm-eval recorded task versions {got} for step {step}, expected "
                              f"{versions}; did the tasks change during the run?")
        record = {
            "format": sweep.EVAL_FORMAT, "culnig_version": __version__,
            "model": name, "checkpoint": f"step-{step}", "kind": "finetune",
            "seed": None, "country": None,
            "model_ref": manifest["model"]["ref"], "model_path": manifest["model"]["path"],
            "evaluated_path": str(model_path), "checkpoint_key": key, "set": None,
            "finetune": {"run": str(out.resolve()), "step": step, "which": manifest["which"],
                         "budget": manifest["budget"], "task": manifest["task"],
                         "trainable_fraction": manifest["params"]["trainable_fraction"],
                         "set_sha256": manifest["set"]["sha256"]},
            "settings": rec_settings, "versions": versions,
            "results_file": results_file, "results_sha256": sha256_file(tmp / results_file),
            "samples_files": samples, "batch_size": o.eval_batch_size,
            "isolation": o.eval_isolation,
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "finished": _now(), "seconds": round(time.time() - started, 1),
        }
        atomic_write_text(tmp / sweep.EVAL_RECORD, json.dumps(record, indent=1) + "\n")
        os.chmod(tmp / sweep.EVAL_RECORD, 0o666 & ~sweep._umask())
        tmp.rename(result_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


# --- the run -------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_manifest(out: Path, manifest: dict) -> None:
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    os.chmod(out / MANIFEST, 0o666 & ~_umask())  # mkstemp made it private


def _prepare_out(o: FinetuneOptions) -> bool:
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


def run_finetune(o: FinetuneOptions) -> FinetuneResult:
    from attribution.finetune_modules import choose_modules, tensor_shapes
    from culnig.hashing import sha256_file
    from culnig.neuron_sets import NeuronSet
    from culnig.registry import layout_for
    from masking.source import resolve_source

    _check_options(o)
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

    settings = tasks = versions = None
    if o.evaluate:
        from culnig.sweep import resolve_tasks

        if o.eval_backend not in ("vllm", "hf"):
            raise CulnigError(f"unknown eval backend {o.eval_backend!r}; use vllm or hf")
        settings = eval_settings(o)
        tasks, versions = resolve_tasks(settings.tasks)

    all_rows, train_source = load_train_rows(spec, o.train_file)
    n_rows = o.train_rows if o.train_rows is not None else spec.default_rows
    rows = sample_rows(all_rows, n_rows, o.seed)
    train_sha = _sha256_json(rows)
    resuming = _prepare_out(o)  # only now: --force deletes the old run once the inputs are fine

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
        if old.get("format") != FORMAT or old.get("key") != json.loads(json.dumps(key)):
            diff = _first_difference(old.get("key"), json.loads(json.dumps(key)))
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
        "format": FORMAT, "culnig_version": __version__, "written": _now(),
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
        "eval": ({"enabled": True, "settings": {**_settings_record(settings), "tasks": tasks},
                  "versions": versions, "batch_size": o.eval_batch_size,
                  "isolation": o.eval_isolation, "start": o.eval_start}
                 if o.evaluate else {"enabled": False}),
        "key": key, "key_sha256": _sha256_json(key),
    }
    _write_manifest(o.out, manifest)
    print(f"finetune: {len(choice.units)} block(s) ({', '.join(u.prefix for u in choice.units)}); "
          f"trainable parameters {counts['trainable']:,} of {counts['total']:,} "
          f"({fraction:.4%}; budget {o.budget:.0%}, {o.which})")

    named = trainable_named(model)
    optimizer = torch.optim.AdamW([p for _, p in named], lr=o.lr, weight_decay=o.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, o.warmup_steps, o.steps)
    _clean_leftovers(o.out / "steps")
    _clean_leftovers(o.out / "results" / name)
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
                                "key_sha256": manifest["key_sha256"], "written": _now()})
                    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it private
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
    _write_manifest(o.out, manifest)

    # --- evaluation -------------------------------------------------------------------------
    if o.evaluate:
        del model, optimizer, scheduler, named
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        todo = ([(0, src.path)] if o.eval_start else []) + \
            [(s, step_dir(o.out, s)) for s in saved_steps(o.out)]
        for s, path in todo:
            if evaluate_step(o.out, manifest, s, path, settings, tasks, versions, o):
                result.evaluated.append(s)
                print(f"finetune: evaluated step {s} -> "
                      f"{o.out / 'results' / name / f'step-{s}'}", file=sys.stderr)
    return result


# --- command line --------------------------------------------------------------------------------
def cmd_finetune(args: argparse.Namespace) -> int:
    from culnig.cli import _resolve_model_ref

    eval_tasks = None
    if args.eval_tasks:
        eval_tasks = tuple(t.strip() for t in args.eval_tasks.split(",") if t.strip())
    o = FinetuneOptions(
        model=_resolve_model_ref(args.model), set_path=args.set, out=args.out, which=args.which,
        budget=args.budget, task=args.task, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, eval_every=args.eval_every, seed=args.seed,
        train_file=args.train_file, train_rows=args.train_rows, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm,
        max_length=args.max_length, dtype=args.dtype, save_dtype=args.save_dtype,
        device=args.device, chat_template=args.chat_template, evaluate=not args.no_eval,
        eval_tasks=eval_tasks, eval_backend=args.eval_backend, eval_limit=args.eval_limit,
        eval_batch_size=args.eval_batch_size, eval_isolation=args.eval_isolation,
        eval_max_model_len=args.eval_max_model_len, eval_model_args=args.eval_model_args,
        eval_start=not args.no_eval_start, resume=args.resume, force=args.force,
    )
    try:
        res = run_finetune(o)
    except KeyboardInterrupt:
        print("\nculnig: finetune interrupted; saved steps are kept: pass --resume to continue",
              file=sys.stderr)
        return 130
    p = res.manifest["params"]
    print(f"trainable fraction {p['trainable_fraction']:.6f} ({p['trainable']:,} / {p['total']:,})")
    print(res.out)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune only the top- or bottom-culture module blocks (Sec. 4.5, Fig. 5)",
        description="Train only the blocks `culnig modules` chooses from SET under --budget (a "
                    "selected gate brings the layer's gate/up/down, a selected q/k/v brings q/k/v/o "
                    "and q/k norms); every other parameter is frozen and left out of the optimizer. "
                    "Data: GLUE QNLI (10,000 random rows of nyu-mll/glue qnli train) or MRPC (its "
                    "train split), or --train-file; each row is the task's first evaluation prompt "
                    "(chat template when the tokenizer has one) with the gold label as the only "
                    "target. AdamW, linear schedule. At every --eval-every steps and at the end a "
                    "normal HF checkpoint and the training state go to OUT/steps/step-<N>/ "
                    "(atomically); after training, step 0 (the source model) and every saved step "
                    "are evaluated with lm-eval into OUT/results/<model>/step-<N>/ (the layout "
                    "`culnig report` reads: `culnig report OUT`, or a folder holding several runs, "
                    "draws Figure 5). OUT/finetune.json records the blocks and the trainable "
                    "fraction. Interrupt and pass --resume to continue; an existing OUT needs "
                    "--resume or --force.",
    )
    p.add_argument("--model", required=True, help="safetensors checkpoint folder, hub id, or "
                   "demo/smollm2")
    p.add_argument("--set", required=True, type=Path, help="neuron set file of this model (e.g. "
                   "the culture-general set)")
    p.add_argument("--which", choices=("top", "bottom"), default="top",
                   help="top: blocks with the most of the set's neurons; bottom: the fewest (top)")
    p.add_argument("--budget", type=float, default=0.10,
                   help="at most this fraction of all parameters is trained (0.10)")
    p.add_argument("--task", choices=tuple(TASKS), default="qnli", help="training task (qnli)")
    p.add_argument("--out", required=True, type=Path, help="run folder to write")
    p.add_argument("--steps", type=int, default=600, help="optimizer steps (600)")
    p.add_argument("--lr", type=float, default=3e-5, help="peak learning rate (3e-5)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per step (16)")
    p.add_argument("--eval-every", type=int, default=200,
                   help="save (and later evaluate) a checkpoint every N steps and at the end (200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the row sample, data order, "
                   "torch and lm-eval (0)")
    p.add_argument("--train-file", type=Path, help="training rows, JSONL in the nyu-mll/glue schema "
                   "(qnli: question, sentence, label; mrpc: sentence1, sentence2, label); default: "
                   "the hub's train split (or $CULNIG_DATA_DIR/glue/<task>_train.jsonl)")
    p.add_argument("--train-rows", type=int, help="rows drawn at random from the training data "
                   "(default: QNLI 10000, MRPC all)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (0)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (0)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping, 0 = off (1)")
    p.add_argument("--max-length", type=int, default=1024,
                   help="truncate longer prompts from the left, keeping the first token (1024)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="training dtype of the model and AdamW (fp32)")
    p.add_argument("--save-dtype", choices=("auto", "float32", "bfloat16", "float16"),
                   default="auto", help="dtype of the saved checkpoints; auto: the source "
                   "checkpoint's (the training state keeps the training dtype)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    p.add_argument("--chat-template", choices=("auto", "on", "off"), default="auto",
                   help="auto: the tokenizer's chat template when it has one (training and eval)")
    p.add_argument("--eval-tasks", help="lm-eval tasks per step (default: culnig_<task>,"
                   + ",".join(CULTURAL_EVAL_TASKS) + ")")
    p.add_argument("--eval-backend", choices=("vllm", "hf"), default="vllm",
                   help="lm-eval backend of the per-step evaluations (vllm)")
    p.add_argument("--eval-limit", type=float, help="documents per task (int) or fraction (<1)")
    p.add_argument("--eval-batch-size", default="auto", help="lm-eval batch size (hf auto = 8)")
    p.add_argument("--eval-isolation", choices=("subprocess", "inprocess"), default="subprocess",
                   help="run each evaluation in its own process (default) or in this one")
    p.add_argument("--eval-max-model-len", type=int, default=2048, help="vLLM context length (2048)")
    p.add_argument("--eval-model-args", default="", help="extra lm-eval model_args, k=v,k=v")
    p.add_argument("--no-eval", action="store_true", help="train and save only; evaluate later "
                   "with --resume (without --no-eval)")
    p.add_argument("--no-eval-start", action="store_true",
                   help="do not evaluate the source model as step 0")
    p.add_argument("--resume", action="store_true", help="continue OUT from its newest saved step "
                   "(and evaluate what is missing)")
    p.add_argument("--force", action="store_true", help="delete an existing finetune run in OUT "
                   "and start again")
    p.set_defaults(func=cmd_finetune)
