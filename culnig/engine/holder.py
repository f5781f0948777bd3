"""Isolation ``engine``, the caller's side: one evaluator process (:mod:`culnig.engine.server`)
per model and evaluation settings, kept while checkpoints of that model are evaluated.

The process runs in its own process group and ends with the caller (Ctrl-C, SIGTERM, a killed
parent). After any failed request it has ended: the holder starts a fresh one for the next
checkpoint. A checkpoint that is no variant of the running engine's base (other tensor names,
another source) gets an engine started on itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from culnig.engine.swap import base_of
from culnig.errors import CulnigError
from culnig.evaluate import PARENT_ENV, EvalRequest, end_process_group
from culnig.settings import EvalSettings


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()[-n:]
    except OSError:
        return ""
    return "\n".join("  " + t for t in lines)


class EngineHolder:
    """Evaluates checkpoints on a kept engine; use as a context manager (or call :meth:`close`)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._reply = None
        self._key: tuple | None = None
        self._work: Path | None = None
        self.starts = 0  # engines started so far (tests and benches read it)

    def __enter__(self) -> "EngineHolder":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(wait=exc_type is None)  # Ctrl-C, SIGTERM, an error: stop the engine now

    @staticmethod
    def _key_of(base: Path, settings: EvalSettings, batch_size: str) -> tuple:
        engine = {k: v for k, v in settings.to_mapping().items()
                  if k not in ("tasks", "limit", "task_metadata")}
        return str(base), json.dumps(engine, sort_keys=True), str(batch_size)

    def evaluate(self, model_path: Path, out_dir: Path, settings: EvalSettings, *,
                 batch_size: str, log_path: Path, base: Path | None = None) -> dict:
        """Evaluate ``model_path`` into ``out_dir`` (lm-eval's CLI layout); return the swap's
        proof. ``base``: the checkpoint the engine starts from (default: a bake's source)."""
        base = Path(base).resolve() if base is not None else base_of(model_path)
        req = EvalRequest(model=str(model_path), settings=settings, output=str(out_dir),
                          batch_size=batch_size, log_samples=True)
        for attempt in (0, 1):
            key = self._key_of(base, settings, batch_size)
            if self._key != key:
                self.close()
                self._start(base, settings, batch_size, log_path)
                self._key = key
            answer = self._ask(req, log_path)
            if answer.get("ok"):
                return {k: v for k, v in answer.items() if k != "ok"}
            self.close()  # the process has ended: its engine is gone
            if answer.get("restart") and attempt == 0:
                base = Path(model_path).resolve()
                continue
            raise CulnigError(f"evaluating {model_path} failed: {answer.get('error')}; the engine "
                              f"was discarded, the next checkpoint starts a new one; log: {log_path}")
        raise AssertionError("unreachable")

    def _start(self, base: Path, settings: EvalSettings, batch_size: str, log_path: Path) -> None:
        self._work = Path(tempfile.mkdtemp(prefix="culnig-engine-"))
        start = self._work / "start.json"
        start.write_text(EvalRequest(model=str(base), settings=settings, output=None,
                                     batch_size=batch_size).to_json())
        read, write = os.pipe()
        with open(self._work / "engine.log", "w") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "culnig.engine.server", str(start), str(write)],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write,),
                start_new_session=True, text=True, env={**os.environ, PARENT_ENV: str(os.getpid())})
        os.close(write)
        self._reply = os.fdopen(read, "r")
        self.starts += 1
        answer = self._read()
        if not answer.get("ok"):
            tail = _tail(self._work / "engine.log")
            self.close()
            raise CulnigError(f"starting an engine on {base} failed: {answer.get('error')}\n{tail}")

    def _read(self) -> dict:
        try:
            line = self._reply.readline()
        except BaseException:
            self.close(wait=False)
            raise
        if not line:
            code = self._proc.wait()
            return {"ok": False, "error": f"the evaluator process ended (exit {code}) without an "
                                          "answer"}
        return json.loads(line)

    def _ask(self, req: EvalRequest, log_path: Path) -> dict:
        msg = {"request": json.loads(req.to_json()), "log": str(log_path)}
        try:
            self._proc.stdin.write(json.dumps(msg) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return {"ok": False, "error": "the evaluator process is gone\n" +
                    _tail(self._work / "engine.log")}
        return self._read()

    def close(self, wait: bool = True) -> None:
        """End the evaluator process (and its engine's processes). ``wait``: let an idle one end
        by itself (up to 60 s); else end its process group now."""
        proc, self._proc, self._key = self._proc, None, None
        if proc is not None:
            try:
                proc.stdin.close()
                if wait:
                    proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass
            end_process_group(proc)
        if self._reply is not None:
            self._reply.close()
            self._reply = None
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None
