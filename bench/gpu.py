"""One prepared device run: attribution, bake and evaluation throughput at the paper's scale.

    python bench/gpu.py [--work DIR] [--out DIR] [--budget-s 570]   # one GPU, <= 10 minutes
    python bench/gpu.py --dry-run          # CPU: 2 small layers, 16 items, 16 documents, and
                                           # vLLM on the masked checkpoint only; < 3 minutes

1. A random-weight model with gemma-3-12b-it's text config (Gemma3ForCausalLM: 48 layers, hidden
   3840, 16/8 heads of 256, vocabulary 262,208) in bf16, built on the device (throughput does not
   depend on the weights), with the Gemma-3 tokenizer of the demo model (`culnig models demo`;
   the offline test tokenizer if that cannot be prepared).
2. Attribution of --items real BLEnD identification items at --batch-size (all five modules, max):
   items/s, tokens/s, peak GPU memory beside the `--plan` estimate, and the projected time of the
   paper's BLEnD_neur + ctrl + CRC (about 25,000 items).
3. A 1 % mask (select general: top 1 % of gate and of q/k/v on these scores) baked into a copy;
   both checkpoints saved.
4. --docs CommonsenseQA documents per checkpoint in both protocols (generation:
   commonsenseqa_paper_v1; option log-likelihood: commonsenseqa_loglik_v1) on vLLM and on
   lm-eval's HF backend: documents/s and the vLLM / HF ratios.

Every figure is one line ``name: value unit``; all of them also go to ``<out>/gpu_bench.json``.
Each stage runs in a fresh process (the GPU is empty for the next one); a stage that would start
past --budget-s is skipped with a line that says so. Nothing is installed or downloaded.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PAPER_ITEMS = 25_000  # BLEnD_neur + BLEnD_ctrl + CountryRC_neur, about (paper Table 1)
GEN_TASK, LL_TASK = "commonsenseqa_paper_v1", "commonsenseqa_loglik_v1"
# Rough seconds each stage needs on one H100/H200 (checked before it starts).
STAGE_NEEDS = {"attribute": 150, "bake": 60, "eval-vllm": 120, "eval-hf": 150}
DRY = dict(num_hidden_layers=2, hidden_size=256, intermediate_size=1024, num_attention_heads=4,
           num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=64,
           layer_types=["sliding_attention", "full_attention"])


def figure(name: str, value, unit: str = "", store: dict | None = None) -> None:
    """Print one figure on its own line (and keep it in ``store``)."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"{name}: {text}{' ' + unit if unit else ''}", flush=True)
    if store is not None:
        store[name] = value


# --- stage 1: model, attribution, mask set, checkpoint --------------------------------------------
def _tokenizer(dry: bool):
    """The Gemma-3 tokenizer of the demo model, or the offline test tokenizer."""
    from culnig.testing import tiny_tokenizer

    if dry:
        return tiny_tokenizer(), "offline test tokenizer (384 tokens)"
    try:
        from transformers import AutoTokenizer

        from culnig.models import prepare

        path = prepare("demo")
        return AutoTokenizer.from_pretrained(str(path)), f"Gemma-3 tokenizer of {path}"
    except Exception as exc:  # the demo package missing or broken: still measure
        return tiny_tokenizer(), f"offline test tokenizer ({type(exc).__name__}: {exc})"


def build_model(dry: bool, device: str, tok):
    """gemma-3-12b-it's text model with random bf16 weights on ``device`` (dry: 2 small layers in
    float32, which CPUs without bf16 units run ten times faster)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from culnig.testing.paper_configs import config_object, published_config

    text = dict(published_config("gemma-3-12b-it")["text_config"])
    if dry:
        text.update(DRY, vocab_size=len(tok))
    config = config_object(text)
    with no_init_weights(), torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, _dtype(dry)))
    model.tie_weights()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.01, generator=gen)  # Gemma's norms scale by 1 + w
            else:
                p.normal_(0.0, 0.02 if p.ndim >= 2 else 0.01, generator=gen)
    return model.eval()


def blend_items(n: int):
    from attribution.identification import blend_items as build
    from attribution.items import Item

    neur, _, _ = build(max_per_country=math.ceil(n / 16), seed=0)
    keys = ("id", "dataset", "country", "answer", "prompt", "answer_prefix", "control")
    return [Item(**{k: r[k] for k in keys}) for r in neur[:n]]


def stage_attribute(args, work: Path, store: dict) -> None:
    import torch

    from attribution.engine import AttributionOptions, attribute
    from attribution.memory_plan import (GIB, accumulator_bytes, activation_bytes, batch_shapes,
                                         token_lengths)
    from attribution.selection import select_general
    from culnig.neuron_sets import NeuronSet
    from culnig.registry import layout_for

    device = "cpu" if args.dry_run else "cuda"
    tok, tok_from = _tokenizer(args.dry_run)
    figure("tokenizer", tok_from, store=store)
    t0 = time.perf_counter()
    model = build_model(args.dry_run, device, tok)
    layout = layout_for(model.config)
    n_params = sum(p.numel() for p in model.parameters())
    figure("model", f"{layout.name}, {layout.n_layers} layers, hidden {layout.hidden_size}, "
           f"{n_params / 1e9:.3g}B parameters, {_dtype(args.dry_run)}, {device}", store=store)
    figure("build_seconds", time.perf_counter() - t0, "s", store)
    items = blend_items(args.items)
    opts = AttributionOptions(batch_size=args.batch_size)
    attribute(model, tok, items[:args.batch_size], layout, opts)  # warm-up (kernels, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    scores = attribute(model, tok, items, layout, opts)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    lengths = token_lengths(items, tok, opts)
    figure("attribution_items", len(items), "items", store)
    figure("attribution_tokens", sum(lengths), "tokens", store)
    figure("attribution_seconds", seconds, "s", store)
    figure("attribution_items_per_s", len(items) / seconds, "items/s", store)
    figure("attribution_tokens_per_s", sum(lengths) / seconds, "tokens/s", store)
    figure("projected_paper_run_minutes", PAPER_ITEMS / (len(items) / seconds) / 60,
           f"min ({PAPER_ITEMS:,} items at this rate)", store)
    shapes = batch_shapes(lengths, opts.batch_size)
    act = max((activation_bytes(model.config, layout, b, t, "fp32" if args.dry_run else "bf16",
                                opts.modules)
               for b, t in shapes), key=lambda a: a.total)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    plan = weights + act.total + accumulator_bytes(layout, len(scores.countries), opts.modules,
                                                   opts.aggregations)
    figure("plan_peak_memory", plan / GIB, "GiB", store)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        figure("peak_gpu_memory", peak / GIB, "GiB (max_memory_allocated)", store)
        figure("plan_over_measured_peak", plan / peak, "", store)
    neurons = select_general(layout, scores, None, None, t_mlp=1.0, t_attn=1.0)
    set_path = work / "mask_1pct.json"
    ns = NeuronSet.from_indices(layout, "culnig-general", neurons, name_or_path="gemma-3-12b-it "
                                "text config, random weights")
    ns.save(set_path, force=True)
    figure("mask_neurons", ns.counts()["total"], "neurons (1 % of gate, 1 % of q/k/v)", store)
    del scores
    t0 = time.perf_counter()
    model.save_pretrained(work / "original", max_shard_size="5GB")
    tok.save_pretrained(work / "original")
    figure("save_seconds", time.perf_counter() - t0, "s", store)
    del model
    gc.collect()


# --- stage 2: bake ----------------------------------------------------------------------------------
def stage_bake(args, work: Path, store: dict) -> None:
    from masking.bake import bake

    t0 = time.perf_counter()
    result = bake(str(work / "original"), work / "mask_1pct.json", work / "masked", force=True)
    figure("bake_seconds", time.perf_counter() - t0, "s", store)
    figure("bake_shards_rewritten", len(result.manifest["shards"]["rewritten"]), "", store)


# --- stage 3: evaluation ----------------------------------------------------------------------------
def _dtype(dry: bool) -> str:
    return "float32" if dry else "bfloat16"


def make_lm(backend: str, path: Path, args):
    dtype = _dtype(args.dry_run)
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=str(path), dtype=dtype, batch_size=args.hf_batch_size,
                    device="cpu" if args.dry_run else "cuda", enable_thinking=False), "hf"
    from culnig.evaluate import install_vllm_version_shim

    install_vllm_version_shim()
    kwargs = dict(pretrained=str(path), dtype=dtype, max_model_len=args.max_model_len, seed=1234,
                  enforce_eager=True, batch_size="auto", enable_thinking=False)
    if not args.dry_run:
        kwargs["gpu_memory_utilization"] = 0.85
    try:  # the project's lm-eval model (distinct prompts scored once), where it exists
        from culnig.vllm_lm import CulnigVLLM

        return CulnigVLLM(**kwargs), "culnig-vllm"
    except ImportError:
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM(**kwargs), "vllm"


def _requests(lm, use_template: bool, docs: int):
    """lm-eval instances of the two CommonsenseQA tasks (first ``docs`` documents each), from one
    TaskManager that indexes culnig's tasks only (lm-eval's own thousands take half a minute)."""
    from lm_eval.tasks import TaskManager

    from culnig.paths import tasks_dir

    tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False,
                     metadata={"culnig_chat_template": use_template})
    tasks = tm.load([GEN_TASK, LL_TASK])["tasks"]
    out = {}
    for name in (GEN_TASK, LL_TASK):
        task = tasks[name]
        task.build_all_requests(limit=docs, apply_chat_template=use_template,
                                chat_template=lm.apply_chat_template if use_template else None,
                                tokenizer_name=getattr(lm, "tokenizer_name", ""))
        out[name] = list(task.instances)
    return out


def timed(lm, instances, loglik: bool = False) -> tuple[float, list]:
    """Seconds the backend takes for ``instances`` (model start and request building excluded)."""
    t0 = time.perf_counter()
    out = lm.loglikelihood(instances) if loglik else lm.generate_until(instances)
    return time.perf_counter() - t0, out


def _evaluate(lm, name: str, backend: str, which: str, path: Path, args, store: dict) -> None:
    from culnig.evaluate import has_chat_template

    figure(f"eval_{backend}_{which}_model", name, store=store)
    reqs = _requests(lm, has_chat_template(str(path)), args.docs)
    timed(lm, reqs[GEN_TASK][:8])  # untimed warm-up
    for protocol, task, loglik in (("generation", GEN_TASK, False), ("loglik", LL_TASK, True)):
        seconds, _ = timed(lm, reqs[task], loglik=loglik)
        docs = len({r.doc_id for r in reqs[task]})
        figure(f"eval_{backend}_{protocol}_{which}_docs", docs, "docs", store)
        figure(f"eval_{backend}_{protocol}_{which}_docs_per_s", docs / seconds, "docs/s", store)


def stage_eval(args, work: Path, store: dict) -> None:
    """vLLM: one checkpoint (a fresh process per engine); HF: both checkpoints in turn."""
    import torch

    which_all = [args.checkpoint] if args.backend == "vllm" else ["original", "masked"]
    for which in which_all:
        t0 = time.perf_counter()
        lm, name = make_lm(args.backend, work / which, args)
        figure(f"eval_{args.backend}_{which}_start_seconds", time.perf_counter() - t0, "s", store)
        _evaluate(lm, name, args.backend, which, work / which, args, store)
        if args.backend == "vllm":
            from culnig.evaluate import exit_after_vllm

            _write(args.out, store)
            exit_after_vllm(0)  # skip a teardown that can abort after the results are written
        del lm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --- the orchestrator ---------------------------------------------------------------------------
def _write(out: str, store: dict) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gpu_bench.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**old, **store}, indent=1, sort_keys=True) + "\n")


def _child(args, stage: str, extra: list[str]) -> int:
    cmd = [sys.executable, __file__, "--stage", stage, "--work", args.work, "--out", args.out,
           "--items", str(args.items), "--batch-size", str(args.batch_size), "--docs",
           str(args.docs), "--hf-batch-size", str(args.hf_batch_size), "--max-model-len",
           str(args.max_model_len), *(["--dry-run"] if args.dry_run else []), *extra]
    return subprocess.run(cmd, cwd=REPO).returncode


def orchestrate(args) -> int:
    start = time.perf_counter()
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (Path(args.out) / "gpu_bench.json").unlink(missing_ok=True)
    figure("device", "cpu (dry run)" if args.dry_run else _gpu_name())
    plan = [("attribute", []), ("bake", []),
            ("eval-vllm", ["--backend", "vllm", "--checkpoint", "original"]),
            ("eval-vllm", ["--backend", "vllm", "--checkpoint", "masked"]),
            ("eval-hf", ["--backend", "hf"])]
    if args.dry_run:  # one engine start less (about a minute on CPU): the same code on one folder
        plan.pop(2)
    failed = []
    for stage, extra in plan:
        left = args.budget_s - (time.perf_counter() - start)
        label = f"{stage}_{extra[-1]}" if "--checkpoint" in extra else stage
        if not args.dry_run and left < STAGE_NEEDS[stage]:
            figure(f"skipped_{label}",
                   f"{left:.0f} s of the budget left, the stage needs about {STAGE_NEEDS[stage]} s")
            continue
        t0 = time.perf_counter()
        rc = _child(args, stage, extra)
        figure(f"stage_{label}_seconds",
               time.perf_counter() - t0, "s" if rc == 0 else f"s (FAILED, exit {rc})")
        if rc != 0:
            failed.append(stage)
            if stage in ("attribute", "bake"):
                break
    summary = Path(args.out) / "gpu_bench.json"
    store = json.loads(summary.read_text()) if summary.is_file() else {}
    for protocol in ("generation", "loglik"):
        for which in ("original", "masked"):
            v = store.get(f"eval_vllm_{protocol}_{which}_docs_per_s")
            h = store.get(f"eval_hf_{protocol}_{which}_docs_per_s")
            if v and h:
                figure(f"ratio_vllm_over_hf_{protocol}_{which}", v / h, "", store)
        o = store.get(f"eval_vllm_{protocol}_original_docs_per_s")
        m = store.get(f"eval_vllm_{protocol}_masked_docs_per_s")
        if o and m:
            figure(f"ratio_vllm_masked_over_original_{protocol}", m / o, "", store)
    figure("total_seconds", time.perf_counter() - start, "s", store)
    _write(args.out, store)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def _gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device; run it with --dry-run on a CPU")
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, 2 small layers, few items/docs")
    ap.add_argument("--work", default="/tmp/culnig-gpu-bench", help="scratch folder (checkpoints)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"), help="gpu_bench.json here")
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--docs", type=int, default=1000, help="CommonsenseQA documents per run")
    ap.add_argument("--hf-batch-size", type=int, default=16)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--budget-s", type=float, default=570, help="skip stages that would end later")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints in --work")
    ap.add_argument("--stage", choices=tuple(STAGE_NEEDS), help=argparse.SUPPRESS)
    ap.add_argument("--backend", choices=("vllm", "hf"), help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", choices=("original", "masked"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dry_run:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if "--items" not in sys.argv:
            args.items = 16
        if "--batch-size" not in sys.argv:
            args.batch_size = 8
        if "--docs" not in sys.argv:
            args.docs = 16
        if "--max-model-len" not in sys.argv:
            args.max_model_len = 1024
    if args.stage is None:
        return orchestrate(args)
    store: dict = {}
    work = Path(args.work)
    {"attribute": stage_attribute, "bake": stage_bake, "eval-vllm": stage_eval,
     "eval-hf": stage_eval}[args.stage](args, work, store)
    _write(args.out, store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
