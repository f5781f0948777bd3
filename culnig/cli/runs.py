"""``culnig sweep``, ``culnig report`` and ``culnig demo``: runs over many checkpoints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from culnig.errors import CulnigError
from culnig.protocols import PROTOCOLS
from culnig.settings import BACKENDS


def cmd_sweep(args: argparse.Namespace) -> int:
    from culnig.sweep import load_config, run_sweep

    cfg = load_config(args.config, run_dir=args.run_dir)
    summary = run_sweep(cfg, force=args.force, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"sweep: {summary.total} checkpoint(s): {summary.evaluated} evaluated, "
              f"{summary.skipped} already complete, {summary.baked} baked", file=sys.stderr)
    print(summary.run_dir)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from culnig.reports.finetune import is_finetune_dir, make_finetune_report
    from culnig.reports.paper import make_report

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


def cmd_demo(args: argparse.Namespace) -> int:
    from culnig.demo import DEFAULT_MODEL, DemoSettings, run_demo

    size = "tiny" if args.tiny else "full"
    model = args.model or ("tiny" if args.tiny else DEFAULT_MODEL)
    backend = args.backend or ("hf" if args.tiny else "vllm")
    out = Path(args.out or ("runs/demo-tiny" if args.tiny else "runs/demo"))
    settings = DemoSettings(model=model, out=out, size=size, backend=backend,
                            loglik_backend=args.loglik_backend,
                            protocol=args.protocol)
    demo, timings = run_demo(settings, force=args.force)
    print("\nstep timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
          + f"; total {sum(timings.values()):.1f}")
    print(f"report: {demo.report_dir / 'demo.html'}")
    return 0


def register(sub) -> None:
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
                    "all of them with lm-eval (culnig-vllm, one engine for all checkpoints) on "
                    "culture tasks (BLEnD MCQ 192 documents, CountryRC 128, BLEnD SAQ 16 for 4 "
                    "cultures) and general tasks (CommonsenseQA, QNLI, MRPC, 128 each), first "
                    "prompt variant, fixed-seed document samples, both scoring protocols, and "
                    "write the leaderboard and report. Every step's output is kept under --out "
                    "and reused; a killed run resumes.",
    )
    p.add_argument("--model", help="demo (Gemma-3 270M), smollm2 (SmolLM2-135M-Instruct, the "
                                    "default: it scores further above chance), or a checkpoint path")
    p.add_argument("--out", help="output folder (default runs/demo, runs/demo-tiny with --tiny)")
    p.add_argument("--tiny", action="store_true",
                   help="the same steps at a minimal size on a tiny random-weight Llama with the "
                        "HF backend (a few minutes; checks the plumbing, not the science)")
    p.add_argument("--backend", choices=BACKENDS,
                   help="lm-eval backend of the sweep(s) (default vllm: culnig-vllm; hf with --tiny)")
    p.add_argument("--loglik-backend", choices=BACKENDS,
                   help="another backend for the option log-likelihood protocol (default: "
                        "--backend's; then both protocols run as one sweep, one lm-eval run per "
                        "checkpoint)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="both",
                   help="scoring protocol(s) of the multiple-choice tasks (default both)")
    p.add_argument("--force", action="store_true",
                   help="start over: the existing --out folder is renamed to <out>.old-<time>")
    p.set_defaults(func=cmd_demo, resume_hint="finished steps and results are kept: run the same "
                   "command again to continue")

