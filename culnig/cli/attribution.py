"""``culnig attribute``: CULNIG attribution scores per neuron (score file)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from culnig.errors import CulnigError
from attribution.engine import TRUNCATE_SIDES
from culnig.loading import LOAD_DTYPES
from culnig.models import resolve_model_ref


def cmd_attribute(args: argparse.Namespace) -> int:
    from attribution.engine import AttributionOptions
    from attribution.run import run_attribution

    options = AttributionOptions(
        modules=tuple(m.strip() for m in args.modules.split(",") if m.strip()),
        aggregations=tuple(a.strip() for a in args.agg.split(",") if a.strip()),
        batch_size=args.batch_size, padding_side=args.padding_side,
        clamp_control=not args.no_clamp_control, use_chat_template=not args.no_chat_template,
        max_length=args.max_length, truncate=args.truncate,
    )
    if args.plan:  # config only: no weights are read, nothing is written
        from attribution.memory_plan import plan_lines

        tok = resolve_model_ref(args.tokenizer) if args.tokenizer else None
        print("\n".join(plan_lines(resolve_model_ref(args.model), args.data, options,
                                    dtype=args.dtype, gpu_memory_gib=args.gpu_memory,
                                    tokenizer=tok)))
        return 0
    if args.out is None:
        raise CulnigError("attribute: --out is required (the score file to write) unless --plan")
    out = run_attribution(resolve_model_ref(args.model), args.data, args.out, options,
                          dtype=args.dtype, resume=args.resume, force=args.force,
                          checkpoint_every=args.checkpoint_every, device_map=args.device_map)
    print(out)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "attribute", help="CULNIG attribution scores (activation x gradient of P(y|x)) per neuron",
        description="Score every gate/up/q/k/v neuron of MODEL on an items JSONL file: "
                    "s = n * dP(y|x)/dn per position, reduced over positions (max: the paper; "
                    "mean, norm: App. I), weighted by P(y|x) and summed per country and in total. "
                    "Writes one safetensors file; checkpoints every N items and resumes with "
                    "--resume. For several GPUs run it under `accelerate launch`.",
    )
    p.add_argument("--model", required=True, help="checkpoint folder, hub id, or demo/smollm2")
    p.add_argument("--data", required=True, help="items JSONL (id, dataset, country, prompt or "
                   "messages, answer, [answer_prefix], [control])")
    p.add_argument("--out", help="score file to write (.safetensors); not with --plan")
    p.add_argument("--modules", default="gate,up,q,k,v", help="comma list of gate,up,q,k,v")
    p.add_argument("--agg", default="max", help="comma list of max (paper), mean, norm")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="fp32", choices=LOAD_DTYPES)
    p.add_argument("--max-length", type=int, help="limit inputs to N tokens (default: the model's "
                   "context); a longer item is an error unless --truncate")
    p.add_argument("--truncate", choices=TRUNCATE_SIDES,
                   help="cut items longer than the limit from the left (the prompt's start, BOS "
                        "kept) or right (the prompt's end); the answer is never cut; the count is "
                        "recorded in the score file")
    p.add_argument("--padding-side", choices=("left", "right"), default="left")
    p.add_argument("--no-chat-template", action="store_true",
                   help="use the plain prompt even when the tokenizer has a chat template")
    p.add_argument("--no-clamp-control", action="store_true",
                   help="do not clamp control items' per-item scores at 0 (the reference does)")
    p.add_argument("--checkpoint-every", type=int, default=256, help="items between checkpoints")
    p.add_argument("--device-map", help="transformers device map for big models, e.g. auto")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--force", action="store_true", help="replace an existing score file")
    p.add_argument("--plan", action="store_true", help="print the memory plan (neurons, "
                   "accumulators, weights, peak activations) from the config alone, and stop")
    p.add_argument("--gpu-memory", type=float, metavar="GIB", help="with --plan: whether the "
                   "run fits a GPU of GIB GiB")
    p.add_argument("--tokenizer", help="with --plan: tokenizer for the token lengths (default: "
                   "the model's; without one they are estimated)")
    p.set_defaults(func=cmd_attribute, resume_hint="run the same command with --resume to continue from the last checkpoint")

