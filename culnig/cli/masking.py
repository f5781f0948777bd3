"""``culnig bake`` (masked checkpoints) and ``culnig verify`` (baked vs hooked, and vLLM)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from culnig.errors import CulnigError
from culnig.models import resolve_model_ref


def cmd_bake(args: argparse.Namespace) -> int:
    from attribution.lape import check_set_activation
    from masking.bake import bake

    check_set_activation(resolve_model_ref(args.model), args.set)
    result = bake(resolve_model_ref(args.model), args.set, args.out, scale=args.scale,
                  force=args.force, revision=args.revision,
                  allow_other_weights=args.allow_other_weights)
    shards = result.manifest["shards"]
    print(f"baked {result.manifest['counts']['total']} neurons (scale {args.scale:g}) into "
          f"{len(shards['rewritten'])} rewritten shard(s); {len(shards['linked'])} linked, "
          f"{len(shards['copied'])} copied", file=sys.stderr)
    print(result.out)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from masking.verify import verify, write_report

    report = verify(resolve_model_ref(args.model), args.set, args.masked, scale=args.scale,
                    new_tokens=args.new_tokens, tol=args.tol, vllm=args.vllm, top_k=args.top_k,
                    logprob_tol=args.logprob_tol)
    print("\n".join(report.lines()))
    if args.report:
        write_report(report, args.report)
    return 0 if report.ok else 1


def register(sub) -> None:
    p = sub.add_parser(
        "bake", help="write a masked checkpoint: selected neurons' weight rows scaled (0 = ablated)",
        description="Multiply the weight row (and bias entry, e.g. Qwen2 q/k/v) of every neuron in "
                    "SET by --scale, in a copy of MODEL's safetensors checkpoint that transformers "
                    "and vLLM load as is. The model is not loaded: shards holding edited tensors "
                    "are rewritten (every other tensor byte-identical), the rest hard-linked; "
                    "config, tokenizer and index are copied; culnig_mask.json records source, "
                    "set hash, scale and counts. Written to a temporary sibling and renamed, so "
                    "OUT is never half-written. Pickle (.bin) checkpoints are refused.",
    )
    p.add_argument("--model", required=True, help="safetensors checkpoint folder, hub id, or "
                   "demo/smollm2")
    p.add_argument("--set", required=True, type=Path, help="neuron set file "
                   "(culnig-neuron-set/1) made for this model")
    p.add_argument("--out", required=True, type=Path, help="folder to write (must not exist "
                   "unless --force)")
    p.add_argument("--scale", type=float, default=0.0,
                   help="factor for the selected rows: 0 suppresses (the paper's masking, "
                        "default), 2 enhances")
    p.add_argument("--revision", help="hub revision (branch, tag or commit) for a hub id")
    p.add_argument("--allow-other-weights", action="store_true",
                   help="bake a set selected on a model of the same shape but other weights (e.g. "
                        "a fine-tuned variant); recorded in culnig_mask.json")
    p.add_argument("--force", action="store_true", help="replace an existing OUT (only once the "
                   "new one is complete)")
    p.set_defaults(func=cmd_bake, resume_hint="nothing was written under --out; run the same "
                   "command again")

    p = sub.add_parser(
        "verify", help="check a baked checkpoint against the original with hooks (and vLLM)",
        description="Compare logits of MODEL with SET applied as forward hooks against the baked "
                    "folder MASKED in transformers (fp32) on a few fixed prompts; with --vllm also "
                    "serve MASKED in vLLM and compare greedy continuations and top-k logprobs with "
                    "transformers. Exit status 0 when every check passes, 1 when one fails.",
    )
    p.add_argument("--model", required=True, help="the original checkpoint folder, hub id, or "
                   "demo/smollm2")
    p.add_argument("--set", required=True, type=Path, help="the neuron set file MASKED was baked from")
    p.add_argument("--masked", required=True, type=Path, help="the folder `culnig bake` wrote")
    p.add_argument("--scale", type=float, help="scale MASKED was baked with (default: from its "
                   "culnig_mask.json)")
    p.add_argument("--vllm", action="store_true", help="also load MASKED in vLLM (one engine start, "
                   "about a minute on CPU)")
    p.add_argument("--new-tokens", type=int, default=8, help="greedy tokens per prompt (8)")
    p.add_argument("--top-k", type=int, default=5, help="vLLM logprobs compared per step (5)")
    p.add_argument("--tol", type=float, default=1e-5, help="max abs logit difference, hooked vs "
                   "baked (1e-5)")
    p.add_argument("--logprob-tol", type=float, default=1e-3,
                   help="max abs logprob difference, vLLM vs transformers (1e-3)")
    p.add_argument("--report", type=Path, help="also write the results as JSON to this file")
    p.set_defaults(func=cmd_verify)

