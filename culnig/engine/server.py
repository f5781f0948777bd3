"""The evaluator process of isolation ``engine``: one engine for one model, many checkpoints.

``python -m culnig.engine.server START.json REPLY_FD``: starts the engine on the start request's
model (the base checkpoint), then reads one JSON request per line on stdin (an
:class:`culnig.evaluate.EvalRequest` plus its log file), and for each swaps the checkpoint in,
proves it (:mod:`culnig.engine.swap`), runs ``lm_eval.simple_evaluate(model=lm, ...)`` with the
configuration ``lm-eval run`` builds from the same argv, and writes results and samples with
lm-eval's ``EvaluationTracker``, as the CLI does. It answers one JSON line per request on
REPLY_FD. Any failure ends the process: the engine is never used again after a failed request.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from culnig.engine.swap import Unrelated, Weights, changed_tensors
from culnig.errors import CulnigError
from culnig.evaluate import (LM_EVAL_MODELS, EvalRequest, _exit_with_parent, exit_after_vllm,
                             prepare)

RESTART = 3  # exit status after a request the engine could not take (another base is needed)
FAILED = 4   # exit status after a failed request


def cache_task_index() -> None:
    """Build lm-eval's task index (it parses every task YAML under the include paths: 10-40 s
    on 2 cores, twice per evaluation) once per process; the task files do not change during a
    sweep, and every request's TaskManager still gets its own metadata."""
    from lm_eval.tasks._index import TaskIndex

    build, cache = TaskIndex.build, {}

    def cached(paths, *, resolve_includes=True):
        paths = list(paths)
        key = (tuple(str(p) for p in paths), resolve_includes)
        if key not in cache:
            cache[key] = build(paths, resolve_includes=resolve_includes)
        return dict(cache[key])

    TaskIndex.build = staticmethod(cached)


def lm_eval_config(argv: list[str]):
    """The ``EvaluatorConfig`` that ``lm-eval run`` builds from ``argv``."""
    from lm_eval._cli.harness import HarnessCLI
    from lm_eval.config.evaluate_config import EvaluatorConfig

    saved = sys.argv
    sys.argv = list(argv)
    try:
        namespace = HarnessCLI().parse_args()
    finally:
        sys.argv = saved
    return EvaluatorConfig.from_cli(namespace)


def evaluate_with(lm, cfg, model_name: str) -> dict:
    """``simple_evaluate`` with the live ``lm`` and every other argument as ``lm-eval run`` passes
    it; results and samples written by ``EvaluationTracker`` under ``cfg.output_path``."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.utils import make_table

    if cfg.use_cache:
        raise CulnigError("isolation engine: --use_cache cannot tell checkpoints apart (lm-eval's "
                          "CachingLM keys by request only); drop it or use isolation subprocess")
    tracker = EvaluationTracker(**{**cfg.hf_hub_log_args, "output_path": cfg.output_path})
    seed = cfg.seed or [None] * 4
    results = simple_evaluate(
        model=lm, model_args=cfg.model_args, tasks=cfg.tasks, num_fewshot=cfg.num_fewshot,
        batch_size=cfg.batch_size, max_batch_size=cfg.max_batch_size, device=cfg.device,
        use_cache=None, cache_requests=cfg.cache_requests.get("cache_requests", False),
        rewrite_requests_cache=cfg.cache_requests.get("rewrite_requests_cache", False),
        delete_requests_cache=cfg.cache_requests.get("delete_requests_cache", False),
        limit=cfg.limit, samples=cfg.samples, check_integrity=cfg.check_integrity,
        write_out=cfg.write_out, log_samples=cfg.log_samples, evaluation_tracker=tracker,
        system_instruction=cfg.system_instruction, apply_chat_template=cfg.apply_chat_template,
        fewshot_as_multiturn=cfg.fewshot_as_multiturn, gen_kwargs=cfg.gen_kwargs,
        task_manager=cfg.process_tasks(cfg.metadata), verbosity=cfg.verbosity,
        predict_only=cfg.predict_only, random_seed=seed[0], numpy_random_seed=seed[1],
        torch_random_seed=seed[2], fewshot_random_seed=seed[3],
        confirm_run_unsafe_code=cfg.confirm_run_unsafe_code, metadata=cfg.metadata)
    # as the CLI records them (for an LM object lm-eval writes its class name and "CUSTOM")
    results["config"]["model"] = model_name
    tracker.general_config_tracker.model_source = model_name
    samples = results.pop("samples") if cfg.log_samples else None
    tracker.save_results_aggregated(results=results, samples=samples)
    if cfg.log_samples:
        for task in results["configs"]:
            tracker.save_results_samples(task_name=task, samples=samples[task])
    print(make_table(results))
    return results


@contextlib.contextmanager
def output_to(path: str):
    """Send this process's stdout and stderr (file descriptors 1 and 2) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


class Server:
    def __init__(self, start: EvalRequest):
        cache_task_index()
        self.backend = start.settings.backend
        self.model_name = LM_EVAL_MODELS[self.backend]
        self.cfg = lm_eval_config(prepare(start))
        base = Path(start.model)
        if self.backend == "vllm":
            from culnig.engine.vllm import VLLMEngine as Engine
        else:
            from culnig.engine.hf import HFEngine as Engine
        self.engine = Engine(base, self.cfg, self.model_name)
        self.engine_args = self._engine_args(self.cfg)

    @staticmethod
    def _engine_args(cfg) -> dict:
        args = {k: v for k, v in cfg.model_args.items() if k != "pretrained"}
        return {"model_args": args, "batch_size": cfg.batch_size, "device": cfg.device,
                "max_batch_size": cfg.max_batch_size}

    def handle(self, req: EvalRequest) -> dict:
        started = time.time()
        cfg = lm_eval_config(prepare(req))
        if self._engine_args(cfg) != self.engine_args:
            raise CulnigError(f"{req.model}: other model settings than the running engine's")
        folder = Weights.of(req.model)
        proof = self.engine.swap(folder, changed_tensors(folder, self.engine.base))
        swapped = time.time()
        print(f"culnig engine: {req.model}: {proof['loaded']} tensor(s) loaded, "
              f"{proof['verified']} verified ({proof['method']}) in {swapped - started:.1f} s",
              file=sys.stderr, flush=True)
        evaluate_with(self.engine.lm, cfg, self.model_name)
        return {**proof, "swap_seconds": round(swapped - started, 2),
                "base": str(self.engine.base.folder)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m culnig.engine.server START.json REPLY_FD", file=sys.stderr)
        return 2
    _exit_with_parent()
    os.set_inheritable(int(args[1]), False)  # the engine's own processes must not hold it
    reply = os.fdopen(int(args[1]), "w", buffering=1)
    start = EvalRequest.from_json(Path(args[0]).read_text(), where=args[0])
    code = 0
    try:
        server = Server(start)
    except Exception as exc:  # noqa: BLE001 - the parent gets the reason, the log the traceback
        traceback.print_exc()
        reply.write(json.dumps({"ok": False, "started": False, "error": _line(exc)}) + "\n")
        return FAILED
    reply.write(json.dumps({"ok": True, "started": True}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        req = EvalRequest.from_json(json.dumps(msg["request"]), where="engine request")
        try:
            with output_to(msg["log"]):
                try:
                    answer = {"ok": True, **server.handle(req)}
                except Unrelated as exc:
                    answer, code = {"ok": False, "restart": True, "error": str(exc)}, RESTART
                except Exception as exc:  # noqa: BLE001
                    traceback.print_exc()
                    answer, code = {"ok": False, "error": _line(exc)}, FAILED
        except OSError as exc:  # the log could not be opened
            answer, code = {"ok": False, "error": _line(exc)}, FAILED
        reply.write(json.dumps(answer) + "\n")
        if code:
            break
    if server.backend == "vllm":
        exit_after_vllm(code)  # skip a teardown that can abort (see there)
    return code


def _line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, CulnigError) else f"{type(exc).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
