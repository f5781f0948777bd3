"""Bench the lm-eval tasks: documents per second with vLLM / with the HF backend.

Same tasks, same documents, same prompts (the chat template applied when the model has one, as
`culnig eval` does), greedy decoding. Model loading is excluded: each backend's lm-eval model is
built first, the requests are built once from the culnig tasks, and only the backend's
``generate_until`` / ``loglikelihood`` over all requests is timed (wall and CPU seconds of this
process and its children).

1. MCQ-style tasks (one generated token each): blendmcq_paper_v1, countryrc_paper_v1,
   commonsenseqa_paper_v1, qnli_paper_v1, mrpc_paper_v1, ``--mcq-docs`` documents each.
   Target on CPU: vLLM / HF >= 1.5.
2. BLEnD SAQ generation (up to 512 tokens): blendsaq_paper_v1, ``--saq-docs`` documents
   spread over the 16 cultures. Target: vLLM / HF >= 3.
3. The option log-likelihood family (``culnigll_*``): the same documents as 1. in their
   ``<bench>_loglik_v1`` form, every option label scored (``loglikelihood``, prefill only). No
   target: on 2 CPU cores prefill-only work may well be slower on vLLM; the ratio is reported.
4. ``culnig-vllm`` (culnig/vllm_lm.py, its own engine with its defaults): 3. again, target
   culnig-vllm / HF >= 1.0; and ``--protocol both`` (1. and 3. for the same documents, request
   types in lm-eval's order) against 1. alone on culnig-vllm, target both / paper-only >= 0.8.

    python bench/eval.py [--model smollm2|demo|PATH] [--mcq-docs 64] [--saq-docs 32 (0: skip)]
                         [--repeats 1]

HF runs with lm-eval's batch size ``--hf-batch-size`` (8, culnig eval's default); vLLM batches
everything itself. Both in ``--dtype`` (default bfloat16, the paper's; CPUs with AMX run it much
faster than float32). Each backend first runs a warm-up pass on other documents (variant-2 prompts),
untimed. Before each timed run vLLM's prefix cache (and culnig-vllm's score cache) is emptied;
``--repeats`` keeps the fastest of several runs. vLLM runs with culnig's CPU defaults
(``culnig.devices.cpu_vllm_defaults``: the engine inside the calling process, on <= 4 cores no
core reserved for its front end) and vLLM's own otherwise, prefix caching included. The ratios
are the last lines, one a line.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MCQ_TASKS = ["blendmcq_paper_v1", "countryrc_paper_v1", "commonsenseqa_paper_v1",
             "qnli_paper_v1", "mrpc_paper_v1"]
WARMUP_TASKS = ["countryrc_paper_v2", "commonsenseqa_paper_v2", "qnli_paper_v2", "mrpc_paper_v2"]
SAQ_TASK = "blendsaq_paper_v1"
LL_TASKS = [t.replace("_paper_", "_loglik_") for t in MCQ_TASKS]


def build_requests(task_names, limit, lm, use_template, spread=False):
    """lm-eval instances of ``task_names`` (first ``limit`` docs, or ``limit`` spread evenly)."""
    from lm_eval.tasks import TaskManager

    from culnig.paths import tasks_dir

    tm = TaskManager(include_path=str(tasks_dir()),
                     metadata={"culnig_chat_template": use_template})
    tasks = tm.load(task_names)["tasks"]
    instances = []
    for name in task_names:
        task = tasks[name]
        samples = None
        if spread:
            n = len(task.eval_docs)
            samples = sorted({round(i * (n - 1) / max(limit - 1, 1)) for i in range(limit)})
        task.build_all_requests(limit=None if spread else limit, samples=samples,
                                apply_chat_template=use_template,
                                chat_template=lm.apply_chat_template if use_template else None,
                                tokenizer_name=getattr(lm, "tokenizer_name", ""))
        instances += task.instances
    return instances


def cpu_seconds() -> float:
    """User + system CPU time of this process and its children (vLLM's engine processes)."""
    import psutil

    total = 0.0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def run(lm, instances) -> dict[str, list]:
    """Each request type's outputs, the types in lm-eval's order (first seen)."""
    return {rtype: getattr(lm, rtype)(group) for rtype, group in by_request_type(instances).items()}


def predictions(instances, out) -> list[int]:
    """Per document (task, doc_id): the index of the highest log-likelihood option."""
    best: dict[tuple[str, int], tuple[float, int]] = {}
    for inst, (ll, _) in zip(instances, out):
        key = (inst.task_name, inst.doc_id)
        if key not in best or ll > best[key][0]:
            best[key] = (ll, inst.idx)
    return [best[k][1] for k in sorted(best)]


def by_request_type(instances) -> dict[str, list]:
    """Instances grouped by request type, types in first-seen order (as lm-eval's evaluator)."""
    out: dict[str, list] = {}
    for inst in instances:
        out.setdefault(inst.request_type, []).append(inst)
    return out


def n_documents(instances) -> int:
    """Documents behind the instances; a paper and a loglik leaf of one benchmark count once."""
    return len({(r.task_name.replace("_loglik_", "_paper_"), r.doc_id) for r in instances})


def make_lm(backend, model, hf_batch_size, max_model_len, dtype):
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model, dtype=dtype, device="cpu", batch_size=hf_batch_size,
                    enable_thinking=False)
    from culnig.devices import cpu_vllm_defaults
    from culnig.evaluate import install_vllm_version_shim

    install_vllm_version_shim()
    cpu_vllm_defaults()  # as culnig runs vLLM (on few cores: all of them for the model)
    if backend == "culnig-vllm":
        from culnig.vllm_lm import CulnigVLLM as VLLM  # its own engine, with its defaults
    else:
        from lm_eval.models.vllm_causallms import VLLM

    return VLLM(pretrained=model, dtype=dtype, max_model_len=max_model_len, seed=1234,
                enforce_eager=True, batch_size="auto", enable_thinking=False)


def cold(lm, model) -> None:
    """Before a timed run: culnig-vllm's caches and vLLM's prefix cache emptied."""
    if hasattr(lm, "reset_after_weight_swap"):
        lm.reset_after_weight_swap(model)
        lm.counts.clear()
    elif hasattr(lm.model, "reset_prefix_cache"):
        assert lm.model.reset_prefix_cache()


def close(lm) -> None:
    """Stop a vLLM engine before the next one starts (one engine at a time)."""
    engine = getattr(getattr(lm, "model", None), "llm_engine", None)
    if engine is not None:
        engine.engine_core.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 (default), demo or a folder")
    ap.add_argument("--mcq-docs", type=int, default=64, help="documents per MCQ-style task")
    ap.add_argument("--saq-docs", type=int, default=32, help="BLEnD SAQ documents (0: skip)")
    ap.add_argument("--hf-batch-size", type=int, default=8)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16", help="bfloat16 (default) or float32")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per section; best kept")
    args = ap.parse_args()

    from culnig.evaluate import has_chat_template
    from culnig.models import PACKAGED, prepare

    model = str(prepare(args.model)) if args.model in PACKAGED else args.model
    use_template = has_chat_template(model)
    print(f"model {model} (chat template: {'on' if use_template else 'off'}), {args.dtype}, "
          f"CPU {os.cpu_count()} cores", flush=True)

    from culnig.protocols import apply

    sections = {  # kind: (task names, documents, spread over the task)
        "mcq": (MCQ_TASKS, args.mcq_docs, False), "saq": ([SAQ_TASK], args.saq_docs, True),
        "loglik": (LL_TASKS, args.mcq_docs, False), "paper": (MCQ_TASKS, args.mcq_docs, False),
        "both": (apply(MCQ_TASKS, "both"), args.mcq_docs, False)}
    plan = {"hf": ("mcq", "saq", "loglik"), "vllm": ("mcq", "saq", "loglik"),
            "culnig-vllm": ("loglik", "paper", "both")}
    timings: dict[tuple[str, str], tuple[int, float, float]] = {}
    responses: dict[tuple[str, str], list] = {}
    for backend, kinds in plan.items():
        lm = make_lm(backend, model, args.hf_batch_size, args.max_model_len, args.dtype)
        run(lm, build_requests(WARMUP_TASKS, 4, lm, use_template))  # untimed warm-up
        for kind in kinds:
            names, limit, spread = sections[kind]
            if not limit:
                continue
            reqs = build_requests(names, limit, lm, use_template, spread=spread)
            best = None
            for _ in range(args.repeats):
                cold(lm, model)
                t0, c0 = time.perf_counter(), cpu_seconds()
                out = run(lm, reqs)
                seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
                if best is None or seconds < best[0]:
                    best = (seconds, cpu, out)
            seconds, cpu, out = best
            n_docs = n_documents(reqs)
            timings[(kind, backend)] = (n_docs, seconds, cpu)
            responses[(kind, backend)] = (predictions(reqs, out["loglikelihood"])
                                          if kind == "loglik" else out.get("generate_until"))
            counts = f"  {dict(lm.counts)}" if hasattr(lm, "counts") else ""
            print(f"{kind} {backend} {n_docs:4d} docs ({len(reqs)} requests)  {seconds:8.2f} s  "
                  f"{n_docs / seconds:8.2f} docs/s  CPU {cpu:8.1f} s{counts}", flush=True)
        close(lm)
        del lm
        gc.collect()

    kinds = [k for k in ("mcq", "saq", "loglik") if (k, "hf") in timings]
    pairs = [(k, "hf", k, "vllm") for k in kinds] + [("loglik", "hf", "loglik", "culnig-vllm"),
                                                     ("mcq", "vllm", "paper", "culnig-vllm")]
    for kind_a, a, kind_b, b in pairs:
        ra, rb = responses[(kind_a, a)], responses[(kind_b, b)]
        print(f"{kind_b}: identical responses (loglik: predicted options) {a} vs {b} "
              f"{sum(x == y for x, y in zip(ra, rb))}/{len(ra)}")

    def rate(kind, backend, cpu=False):
        n, seconds, cpu_s = timings[(kind, backend)]
        return n / (cpu_s if cpu else seconds)

    for kind, label in (("mcq", "MCQ-style (1 token)"), ("saq", "BLEnD SAQ (<= 512 tokens)"),
                        ("loglik", "option log-likelihood (culnigll_*)")):
        if kind in kinds:
            print(f"{label}: vLLM / HF docs/s = {rate(kind, 'vllm') / rate(kind, 'hf'):.2f}")
    for (ka, a), (kb, b), label in (
            (("loglik", "culnig-vllm"), ("loglik", "hf"),
             "option log-likelihood (culnigll_*): culnig-vllm / HF docs/s"),
            (("both", "culnig-vllm"), ("paper", "culnig-vllm"),
             "--protocol both / paper-only docs/s (culnig-vllm)")):
        print(f"{label} = {rate(ka, a) / rate(kb, b):.2f} "
              f"(per CPU second: {rate(ka, a, True) / rate(kb, b, True):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
