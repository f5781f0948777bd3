"""``culnig eval``: lm-eval with culnig's tasks on one checkpoint (vLLM or HF)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from culnig.errors import CulnigError
from culnig.models import resolve_model_ref
from culnig.protocols import PROTOCOLS
from culnig.settings import BACKENDS, CHAT_TEMPLATES, DEFAULT_MAX_MODEL_LEN


def _json_object(text: str | None, what: str) -> dict:
    import json

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CulnigError(f"{what}: not valid JSON ({exc.msg}); e.g. '{{\"culnig_max_docs\": 50}}'") from None
    if not isinstance(value, dict):
        raise CulnigError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def cmd_eval(args: argparse.Namespace) -> int:
    from culnig.evaluate import EvalRequest, exit_after_vllm, run_eval
    from culnig.settings import EvalSettings

    settings = EvalSettings.from_mapping({
        "tasks": args.tasks, "protocol": args.protocol, "backend": args.backend,
        "dtype": args.dtype, "limit": args.limit, "seed": args.seed,
        "chat_template": args.chat_template, "max_model_len": args.max_model_len,
        "model_args": args.model_args, "lm_eval_args": args.lm_eval_args,
        "task_metadata": _json_object(args.task_metadata, "--task-metadata")})
    req = EvalRequest(model=resolve_model_ref(args.model), settings=settings, output=args.output,
                      batch_size=args.batch_size, log_samples=not args.no_log_samples)
    run_eval(req)
    if settings.backend == "vllm":
        exit_after_vllm(0)  # results are written; skip a teardown that can abort (see there)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="run lm-eval with the culnig tasks on a checkpoint (vLLM or HF)",
        description="Run lm-evaluation-harness with culnig_tasks on its include path. Arguments "
                    "after a lone '--' go to `lm-eval run` unchanged.",
    )
    p.add_argument("--model", required=True, help="checkpoint folder, hub id, or demo/smollm2")
    p.add_argument("--tasks", required=True, help="lm-eval task names or patterns, e.g. 'culnig_*'")
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                   help="paper: greedy first token = gold label (culnig_* as named); loglik: the "
                        "option labels' log-likelihood (culnigll_*, multiple_choice acc/acc_norm) "
                        "for the same names; both: the two side by side. Names already in the "
                        "culnigll_/_loglik_ form and non-culnig tasks are kept as given")
    p.add_argument("--backend", choices=BACKENDS, default="vllm")
    p.add_argument("--output", help="lm-eval output folder (results and logged samples)")
    p.add_argument("--dtype", default="auto", help="auto (checkpoint's), float32, bfloat16")
    p.add_argument("--batch-size", default="auto", help="lm-eval batch size (hf default 8)")
    p.add_argument("--limit", type=float, help="documents per task (int) or fraction (<1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat-template", choices=CHAT_TEMPLATES, default="auto",
                   help="auto: apply the tokenizer's chat template when it has one")
    p.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN, help="vLLM context length")
    p.add_argument("--model-args", default="", help="extra lm-eval model_args, k=v,k=v")
    p.add_argument("--no-log-samples", action="store_true", help="do not write per-document samples")
    p.add_argument("--task-metadata", metavar="JSON",
                   help="task options passed as lm-eval --metadata, e.g. '{\"culnig_max_docs\": 50, "
                        "\"culnig_sample_seed\": 0}' (a fixed-seed sample spread over cultures, the "
                        "same for every prompt variant) or '{\"culnig_countries\": [\"Spain\"]}'")
    p.set_defaults(func=cmd_eval, lm_eval_args=[])

