"""`culnig finetune`: the command line of :mod:`culnig.finetune` (parse, call, print)."""

from __future__ import annotations

import argparse
from pathlib import Path

from attribution.finetune_modules import WHICH
from culnig.finetune.options import (SAVE_DTYPES, TASKS, TRAIN_DTYPES, FinetuneOptions,
                                     default_eval_tasks, eval_settings)
from culnig.finetune.run import run_finetune
from culnig.models import resolve_model_ref
from culnig.settings import (BACKENDS, CHAT_TEMPLATES, DEFAULT_ISOLATION, DEFAULT_MAX_MODEL_LEN,
                             ISOLATIONS)


def cmd_finetune(args: argparse.Namespace) -> int:
    o = FinetuneOptions(
        model=resolve_model_ref(args.model), set_path=args.set, out=args.out, which=args.which,
        budget=args.budget, task=args.task, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, eval_every=args.eval_every, seed=args.seed,
        train_file=args.train_file, train_rows=args.train_rows, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm,
        max_length=args.max_length, dtype=args.dtype, save_dtype=args.save_dtype,
        device=args.device, chat_template=args.chat_template, evaluate=not args.no_eval,
        eval=eval_settings(args.task, args.seed, args.chat_template, tasks=args.eval_tasks,
                           backend=args.eval_backend, limit=args.eval_limit,
                           max_model_len=args.eval_max_model_len,
                           model_args=args.eval_model_args),
        eval_batch_size=args.eval_batch_size, eval_isolation=args.eval_isolation,
        eval_start=not args.no_eval_start, resume=args.resume, force=args.force,
    )
    res = run_finetune(o)  # Ctrl-C: culnig.cli.main prints the resume hint, exit 130
    p = res.manifest["params"]
    print(f"trainable fraction {p['trainable_fraction']:.6f} ({p['trainable']:,} / {p['total']:,})")
    print(res.out)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune only the top- or bottom-culture module blocks (Sec. 4.5, Fig. 5)",
        description="Train only the blocks `culnig modules` chooses from SET under --budget (a "
                    "selected gate brings the layer's gate/up/down, a selected q/k/v brings q/k/v/o "
                    "and q/k norms); every other parameter is frozen and left out of the optimizer. "
                    "Data: GLUE QNLI (10,000 random rows of nyu-mll/glue qnli train) or MRPC (its "
                    "train split), or --train-file; each row is the task's first evaluation prompt "
                    "(chat template when the tokenizer has one) with the gold label as the only "
                    "target. AdamW, linear schedule. At every --eval-every steps and at the end a "
                    "normal HF checkpoint and the training state go to OUT/steps/step-<N>/ "
                    "(atomically); after training, step 0 (the source model) and every saved step "
                    "are evaluated with lm-eval into OUT/results/<model>/step-<N>/ (the layout "
                    "`culnig report` reads: `culnig report OUT`, or a folder holding several runs, "
                    "draws Figure 5). OUT/finetune.json records the blocks and the trainable "
                    "fraction. Interrupt and pass --resume to continue; an existing OUT needs "
                    "--resume or --force.",
    )
    p.add_argument("--model", required=True, help="safetensors checkpoint folder, hub id, or "
                   "demo/smollm2")
    p.add_argument("--set", required=True, type=Path, help="neuron set file of this model (e.g. "
                   "the culture-general set)")
    p.add_argument("--which", choices=WHICH, default="top",
                   help="top: blocks with the most of the set's neurons; bottom: the fewest (top)")
    p.add_argument("--budget", type=float, default=0.10,
                   help="at most this fraction of all parameters is trained (0.10)")
    p.add_argument("--task", choices=tuple(TASKS), default="qnli", help="training task (qnli)")
    p.add_argument("--out", required=True, type=Path, help="run folder to write")
    p.add_argument("--steps", type=int, default=600, help="optimizer steps (600)")
    p.add_argument("--lr", type=float, default=3e-5, help="peak learning rate (3e-5)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per step (16)")
    p.add_argument("--eval-every", type=int, default=200,
                   help="save (and later evaluate) a checkpoint every N steps and at the end (200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the row sample, data order, "
                   "torch and lm-eval (0)")
    p.add_argument("--train-file", type=Path, help="training rows, JSONL in the nyu-mll/glue schema "
                   "(qnli: question, sentence, label; mrpc: sentence1, sentence2, label); default: "
                   "the hub's train split (or $CULNIG_DATA_DIR/glue/<task>_train.jsonl)")
    p.add_argument("--train-rows", type=int, help="rows drawn at random from the training data "
                   "(default: QNLI 10000, MRPC all)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (0)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (0)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping, 0 = off (1)")
    p.add_argument("--max-length", type=int, default=1024,
                   help="truncate longer prompts from the left, keeping the first token (1024)")
    p.add_argument("--dtype", choices=TRAIN_DTYPES, default="fp32",
                   help="training dtype of the model and AdamW (fp32)")
    p.add_argument("--save-dtype", choices=SAVE_DTYPES,
                   default="auto", help="dtype of the saved checkpoints; auto: the source "
                   "checkpoint's (the training state keeps the training dtype)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    p.add_argument("--chat-template", choices=CHAT_TEMPLATES, default="auto",
                   help="auto: the tokenizer's chat template when it has one (training and eval)")
    p.add_argument("--eval-tasks", help="lm-eval tasks per step (default: "
                   + ",".join(default_eval_tasks("<task>")) + ")")
    p.add_argument("--eval-backend", choices=BACKENDS, default="vllm",
                   help="lm-eval backend of the per-step evaluations (vllm)")
    p.add_argument("--eval-limit", type=float, help="documents per task (int) or fraction (<1)")
    p.add_argument("--eval-batch-size", default="auto", help="lm-eval batch size (hf auto = 8)")
    p.add_argument("--eval-isolation", choices=ISOLATIONS, default=DEFAULT_ISOLATION,
                   help="engine (default): one engine for all steps, each step's weights swapped "
                        "in; subprocess: a process per step; inprocess: in this process")
    p.add_argument("--eval-max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN,
                   help=f"vLLM context length ({DEFAULT_MAX_MODEL_LEN})")
    p.add_argument("--eval-model-args", default="", help="extra lm-eval model_args, k=v,k=v")
    p.add_argument("--no-eval", action="store_true", help="train and save only; evaluate later "
                   "with --resume (without --no-eval)")
    p.add_argument("--no-eval-start", action="store_true",
                   help="do not evaluate the source model as step 0")
    p.add_argument("--resume", action="store_true", help="continue OUT from its newest saved step "
                   "(and evaluate what is missing)")
    p.add_argument("--force", action="store_true", help="delete an existing finetune run in OUT "
                   "and start again")
    p.set_defaults(func=cmd_finetune,
                   resume_hint="saved steps are kept: pass --resume to continue")
