"""Greedy continuations and top-k logprobs from vLLM, run as its own process.

``python -m masking.vllm_worker REQUEST.json RESULT.json``. The request holds the checkpoint folder,
the prompts as token ids (so vLLM sees exactly the tokens transformers saw), the number of new tokens
and of logprobs. vLLM on CPU starts worker processes and must run under ``__main__``; keeping it in a
process of its own also frees its memory when it ends. :func:`run_vllm` is the caller's side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from culnig.devices import cpu_vllm_defaults
from culnig.errors import CulnigError


def generate(request: dict) -> dict:
    cpu_vllm_defaults(kv_cache_gib=2)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = request["prompts"]
    longest = max(len(p) for p in prompts) + int(request["max_tokens"])
    llm = LLM(model=request["model"], dtype="float32", enforce_eager=True, seed=0,
              max_model_len=max(int(request.get("max_model_len", 512)), longest))
    params = SamplingParams(temperature=0.0, max_tokens=int(request["max_tokens"]), ignore_eos=True,
                            logprobs=int(request["logprobs"]))
    outputs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                           use_tqdm=False)
    tokens, logprobs = [], []
    for out in outputs:
        completion = out.outputs[0]
        tokens.append([int(t) for t in completion.token_ids])
        logprobs.append([{str(tok): float(lp.logprob) for tok, lp in step.items()}
                         for step in (completion.logprobs or [])])
    return {"tokens": tokens, "logprobs": logprobs}


class VllmJob:
    """:func:`generate` in a fresh Python process, started at once so callers can work meanwhile."""

    def __init__(self, model_dir: str | Path, prompts: list[list[int]], max_tokens: int,
                 logprobs: int):
        self.model_dir = model_dir
        self._work = tempfile.TemporaryDirectory(prefix="culnig-vllm-")
        req = Path(self._work.name) / "request.json"
        self._result = Path(self._work.name) / "result.json"
        self._log = open(Path(self._work.name) / "log.txt", "w+")
        req.write_text(json.dumps({"model": str(model_dir), "prompts": prompts,
                                   "max_tokens": max_tokens, "logprobs": logprobs}))
        self._proc = subprocess.Popen([sys.executable, "-m", "masking.vllm_worker", str(req),
                                       str(self._result)], stdout=self._log,
                                      stderr=subprocess.STDOUT, env=dict(os.environ))

    def result(self, timeout: float = 900) -> dict:
        """Wait for the process; its JSON result, or a one-line error if vLLM failed."""
        try:
            rc = self._proc.wait(timeout=timeout)
            if rc != 0 or not self._result.is_file():
                self._log.seek(0)
                lines = [ln.strip() for ln in self._log.read().splitlines() if ln.strip()]
                raise CulnigError(f"vLLM could not serve {self.model_dir} (exit {rc}): "
                                  f"{lines[-1][:300] if lines else 'no output'}")
            return json.loads(self._result.read_text())
        finally:
            self.close()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._log.close()
        self._work.cleanup()


def run_vllm(model_dir: str | Path, prompts: list[list[int]], max_tokens: int, logprobs: int,
             timeout: float = 900) -> dict:
    """Run :func:`generate` in a fresh Python process and wait for it."""
    return VllmJob(model_dir, prompts, max_tokens, logprobs).result(timeout)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m masking.vllm_worker REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    result = generate(json.loads(Path(argv[0]).read_text()))
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
