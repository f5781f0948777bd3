"""Bench the lm-eval tasks: documents per second with vLLM / with the HF backend.

Same tasks, same documents, same prompts (the chat template applied when the model has one, as
`culnig eval` does), greedy decoding. Model loading is excluded: each backend's lm-eval model is
built first, the requests are built once from the culnig tasks, and only the backend's
``generate_until`` over all requests is timed.

1. MCQ-style tasks (one generated token each): blendmcq_paper_v1, countryrc_paper_v1,
   commonsenseqa_paper_v1, qnli_paper_v1, mrpc_paper_v1, ``--mcq-docs`` documents each.
   Target on CPU: vLLM / HF >= 1.5.
2. BLEnD SAQ generation (up to 512 tokens): blendsaq_paper_v1, ``--saq-docs`` documents
   spread over the 16 cultures. Target: vLLM / HF >= 3.
3. The option log-likelihood family (``culnigll_*``): the same documents as 1. in their
   ``<bench>_loglik_v1`` form, every option label scored (``loglikelihood``, prefill only). No
   target: on 2 CPU cores prefill-only work may well be slower on vLLM; the ratio is reported.

    python bench/eval.py [--model smollm2|demo|PATH] [--mcq-docs 64] [--saq-docs 32]

HF runs with lm-eval's batch size ``--hf-batch-size`` (8, culnig eval's default); vLLM batches
everything itself. Both in ``--dtype`` (default bfloat16, the paper's; CPUs with AMX run it much
faster than float32). Each backend first runs a warm-up pass on other documents (variant-2 prompts),
untimed. vLLM keeps its defaults, including prefix caching and, on CPU, one core reserved for its
front end (on 2 cores, giving it both was slower). The three ratios are the last three lines.
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


def timed(lm, instances, loglik=False):
    t0 = time.perf_counter()
    out = lm.loglikelihood(instances) if loglik else lm.generate_until(instances)
    return time.perf_counter() - t0, out


def predictions(instances, out) -> list[int]:
    """Per document (task, doc_id): the index of the highest log-likelihood option."""
    best: dict[tuple[str, int], tuple[float, int]] = {}
    for inst, (ll, _) in zip(instances, out):
        key = (inst.task_name, inst.doc_id)
        if key not in best or ll > best[key][0]:
            best[key] = (ll, inst.idx)
    return [best[k][1] for k in sorted(best)]


def make_lm(backend, model, hf_batch_size, max_model_len, dtype):
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model, dtype=dtype, device="cpu", batch_size=hf_batch_size,
                    enable_thinking=False)
    from culnig.evaluate import install_vllm_version_shim

    install_vllm_version_shim()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM(pretrained=model, dtype=dtype, max_model_len=max_model_len, seed=1234,
                enforce_eager=True, batch_size="auto", enable_thinking=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 (default), demo or a folder")
    ap.add_argument("--mcq-docs", type=int, default=64, help="documents per MCQ-style task")
    ap.add_argument("--saq-docs", type=int, default=32, help="BLEnD SAQ documents")
    ap.add_argument("--hf-batch-size", type=int, default=8)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16", help="bfloat16 (default) or float32")
    args = ap.parse_args()

    from culnig.evaluate import has_chat_template
    from culnig.models import PACKAGED, prepare

    model = str(prepare(args.model)) if args.model in PACKAGED else args.model
    use_template = has_chat_template(model)
    print(f"model {model} (chat template: {'on' if use_template else 'off'}), {args.dtype}, "
          f"CPU {os.cpu_count()} cores", flush=True)

    timings: dict[tuple[str, str], tuple[int, float]] = {}
    responses: dict[tuple[str, str], list[str]] = {}
    for backend in ("hf", "vllm"):
        lm = make_lm(backend, model, args.hf_batch_size, args.max_model_len, args.dtype)
        timed(lm, build_requests(WARMUP_TASKS, 4, lm, use_template))  # untimed warm-up
        for kind, names, limit, spread in (("mcq", MCQ_TASKS, args.mcq_docs, False),
                                           ("saq", [SAQ_TASK], args.saq_docs, True),
                                           ("loglik", LL_TASKS, args.mcq_docs, False)):
            reqs = build_requests(names, limit, lm, use_template, spread=spread)
            seconds, out = timed(lm, reqs, loglik=kind == "loglik")
            n_docs = len({(r.task_name, r.doc_id) for r in reqs})
            timings[(kind, backend)] = (n_docs, seconds)
            responses[(kind, backend)] = predictions(reqs, out) if kind == "loglik" else out
            print(f"{kind} {backend:5s} {n_docs:4d} docs ({len(reqs)} requests)  {seconds:8.2f} s  "
                  f"{n_docs / seconds:8.2f} docs/s", flush=True)
        del lm
        gc.collect()

    for kind in ("mcq", "saq", "loglik"):
        same = sum(a == b for a, b in zip(responses[(kind, "hf")], responses[(kind, "vllm")]))
        print(f"{kind}: identical responses (loglik: predicted options) HF vs vLLM "
              f"{same}/{len(responses[(kind, 'hf')])}")
    for kind, label in (("mcq", "MCQ-style (1 token)"), ("saq", "BLEnD SAQ (<= 512 tokens)"),
                        ("loglik", "option log-likelihood (culnigll_*)")):
        (n_h, s_h), (n_v, s_v) = timings[(kind, "hf")], timings[(kind, "vllm")]
        print(f"{label}: vLLM / HF docs/s = {(n_v / s_v) / (n_h / s_h):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
