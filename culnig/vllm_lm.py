"""The ``culnig-vllm`` lm-eval model: lm-eval's vLLM model, each distinct prompt scored once.

lm-eval's vLLM ``loglikelihood`` sends one ``prompt_logprobs`` request per option. Here every
option token is scored as a next token (``SamplingParams.logprob_token_ids``, raw log-probs), one
request per distinct prompt: a document's one-token options share one request, and a separator
every option starts with ("\\n" + label) adds one more whose prompt prefix comes from vLLM's
prefix cache. Groups that would need more requests than the parent go to the parent. The greedy
token of each request is cached by (checkpoint, prompt tokens), so a paper-protocol
``generate_until`` of one greedy token on the same prompt costs nothing. Importing this module
registers ``culnig-vllm``; :meth:`CulnigVLLM.reset_after_weight_swap` empties the cache.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from culnig.errors import CulnigError
from culnig.devices import cpu_only
from culnig.evaluate import install_vllm_version_shim

install_vllm_version_shim()  # before lm_eval.models.vllm_causallms is imported

import lm_eval.models  # noqa: E402,F401  (fills the registry's lazy entries before ours)
import lm_eval.models.vllm_causallms as stock  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.utils import maybe_truncate  # noqa: E402
from vllm import SamplingParams, TokensPrompt  # noqa: E402

try:
    from vllm.sampling_params import MAX_LOGPROB_TOKEN_IDS as MAX_IDS
except ImportError:  # a vLLM without logprob_token_ids: everything goes to the parent
    MAX_IDS = 0

MODEL_NAME = "culnig-vllm"
# Detokenisation of stock generate_until (VLLM.modify_gen_kwargs' defaults): cached greedy texts
# are made with it, so only requests with the same settings are served from the cache.
DETOKENIZE = {"skip_special_tokens": False, "spaces_between_special_tokens": False}
TOP_K = 20  # top log-probs kept for a prompt first seen by generate_until (vLLM's max_logprobs)
# KV block size of the engines culnig-vllm starts on CPU (vLLM's CPU default is 128): a prompt
# that extends a cached one reuses its full blocks only, so smaller blocks recompute less.
CPU_BLOCK_SIZE = 32


@dataclass
class Scored:
    """What one prompt gave: the greedy next token, its text, raw next-token log-probs."""

    greedy: int
    text: str
    logprobs: dict[int, float] = field(default_factory=dict)


@contextlib.contextmanager
def _existing_engine(llm):
    """Let lm-eval's VLLM.__init__ take ``llm`` instead of starting an engine."""
    made = stock.LLM
    stock.LLM = lambda **_: llm
    try:
        yield
    finally:
        stock.LLM = made


def _engine_kwargs(llm, kwargs: dict) -> dict:
    """lm-eval VLLM keyword arguments for the running engine ``llm`` (its model, its length)."""
    config = llm.llm_engine.model_config
    kwargs = dict(kwargs)
    if kwargs.get("pretrained") is None:
        kwargs["pretrained"] = config.model
    for key in ("max_model_len", "max_length"):
        value = kwargs.pop(key, None)
        if value is not None and int(value) != config.max_model_len:
            raise CulnigError(f"{key}={value}: the given engine runs max_model_len="
                              f"{config.max_model_len}; pass that or nothing")
    return kwargs


def on_engine(cls, llm, **kwargs):
    """A ``cls`` (lm-eval's ``VLLM`` or a subclass) built on the running engine ``llm``."""
    with _existing_engine(llm):
        return cls(**_engine_kwargs(llm, kwargs))


def _few_prompts(cuts: list[tuple[list[int], int]]) -> bool:
    """Whether requests of one context need no more distinct prompts than there are requests."""
    prefixes: set[tuple[int, ...]] = set()
    for inp, ctxlen in cuts:
        for j in range(ctxlen, len(inp)):
            prefixes.add(tuple(inp[ctxlen:j]))
            if len(prefixes) > len(cuts):
                return False
    return True


def _waves(jobs: list) -> list[list]:
    """``jobs`` (sorted by prompt) in two waves: first the prompts that are no prefix of another
    job's prompt, then the prefixes. A prefix sent with its extension in one batch is computed
    in full (vLLM caches blocks once computed); sent after it, it comes from the prefix cache but
    for its last partial block (e.g. ``ctx`` after ``ctx + "\\n"`` of a ``"\\n" + label`` option).
    The second wave runs in reverse order: the blocks computed last are the last evicted."""
    prompts = sorted({p for p, _ in jobs})
    prefixes = {a for a, b in zip(prompts, prompts[1:]) if b[:len(a)] == a}
    first = [j for j in jobs if j[0] not in prefixes]
    return [w for w in (first, [j for j in jobs if j[0] in prefixes][::-1]) if w]


@register_model(MODEL_NAME)
class CulnigVLLM(stock.VLLM):
    """lm-eval's ``VLLM`` with prompt-level scoring and a greedy-token cache.

    ``llm``: an existing ``vllm.LLM`` to use instead of starting one (``pretrained`` then
    defaults to its model). ``checkpoint_id`` names the weights the engine holds (default:
    ``pretrained``); the cache is keyed by it.
    """

    def __init__(self, pretrained: str | None = None, llm=None, checkpoint_id: str | None = None,
                 **kwargs):
        if llm is not None:
            with _existing_engine(llm):
                super().__init__(**_engine_kwargs(llm, {**kwargs, "pretrained": pretrained}))
        elif pretrained is None:
            raise CulnigError("culnig-vllm: pass pretrained=<model folder> or llm=<vllm.LLM>")
        else:
            if cpu_only():
                kwargs.setdefault("block_size", CPU_BLOCK_SIZE)
            super().__init__(pretrained=pretrained, **kwargs)
        self.checkpoint_id = str(checkpoint_id or self.model_args["model"])
        self._scores: dict[tuple[str, tuple[int, ...]], Scored] = {}
        # engine_prompts / cached_prompts / parent_loglik / served_generate / parent_generate
        self.counts: Counter = Counter()

    # --- weights ----------------------------------------------------------------------------
    def reset_after_weight_swap(self, checkpoint_id: str) -> None:
        """Forget every cached score and vLLM's prefix cache: call after each weight reload."""
        self._scores.clear()
        self.checkpoint_id = str(checkpoint_id)
        if not self.model.reset_prefix_cache():
            raise RuntimeError("vLLM did not reset its prefix cache (requests still running); "
                               "the engine cannot be trusted to hold the new weights only")

    @property
    def _fast(self) -> bool:
        return MAX_IDS > 0 and self.data_parallel_size <= 1

    # --- scoring prompts ------------------------------------------------------------------
    def _score(self, needs: dict[tuple[int, ...], set[int]], top_k: int = 0) -> dict:
        """``Scored`` for each prompt in ``needs`` holding the log-probs of its token set.

        Cached prompts that already hold those tokens cost nothing; the others get one request
        each (per ``MAX_IDS`` ids). ``top_k``: also keep the top log-probs of new prompts.
        """
        jobs: list[tuple[tuple[int, ...], SamplingParams]] = []
        for prompt in sorted(needs):  # a prompt right after its prefixes: prefix-cache hits
            entry = self._scores.get((self.checkpoint_id, prompt))
            missing = sorted(needs[prompt] - entry.logprobs.keys()) if entry else \
                sorted(needs[prompt])
            if entry is not None and not missing:
                self.counts["cached_prompts"] += 1
                continue
            if not missing:
                jobs.append((prompt, SamplingParams(max_tokens=1, temperature=0.0,
                                                    logprobs=top_k, **DETOKENIZE)))
            for i in range(0, len(missing), MAX_IDS):
                jobs.append((prompt, SamplingParams(max_tokens=1, temperature=0.0,
                                                    logprob_token_ids=missing[i:i + MAX_IDS],
                                                    **DETOKENIZE)))
        step = len(jobs) if self.batch_size == "auto" else int(self.batch_size)
        chunks = [wave[i:i + max(step, 1)] for wave in _waves(jobs)
                  for i in range(0, len(wave), max(step, 1))]
        for chunk in chunks:
            outputs = self.model.generate([TokensPrompt(prompt_token_ids=list(p)) for p, _ in chunk],
                                          sampling_params=[sp for _, sp in chunk],
                                          use_tqdm=self.batch_size == "auto",
                                          lora_request=self.lora_request)
            for (prompt, _), out in zip(chunk, outputs, strict=True):
                first = out.outputs[0]
                got = {int(t): float(getattr(v, "logprob", v)) for t, v in first.logprobs[0].items()}
                key = (self.checkpoint_id, prompt)
                if key in self._scores:
                    self._scores[key].logprobs.update(got)
                else:
                    self._scores[key] = Scored(int(first.token_ids[0]), first.text, got)
        self.counts["engine_prompts"] += len(jobs)
        return {p: self._scores[(self.checkpoint_id, p)] for p in needs}

    # --- loglikelihood --------------------------------------------------------------------
    def _plan(self, requests) -> list[list[tuple[tuple[int, ...], int]] | None]:
        """Per request, the (prompt, token) pairs it sums, or None for the parent's path.

        Truncation as the parent's. Requests are grouped by context; a group is scored here when
        its distinct prompts are no more than its requests (the parent sends one each).
        """
        max_len = self.max_length - 1
        cuts, groups = [], defaultdict(list)
        for i, (_, ctx, cont) in enumerate(requests):
            inp = (list(ctx) + list(cont))[-max_len:]
            ctxlen = len(ctx) - max(0, len(ctx) + len(cont) - max_len)
            cuts.append((inp, ctxlen))
            if ctxlen >= 1 and len(inp) > ctxlen:
                groups[tuple(inp[:ctxlen])].append(i)
        plans: list = [None] * len(requests)
        for members in groups.values():
            if not _few_prompts([cuts[i] for i in members]):
                continue
            for i in members:
                inp, ctxlen = cuts[i]
                plans[i] = [(tuple(inp[:j]), inp[j]) for j in range(ctxlen, len(inp))]
        return plans

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False):
        if not self._fast:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm)
        plans = self._plan(requests)
        needs: dict[tuple[int, ...], set[int]] = defaultdict(set)
        for plan in plans:
            for prompt, token in plan or ():
                needs[prompt].add(token)
        scores = self._score(needs) if needs else {}
        res: list = [None] * len(requests)
        for i, plan in enumerate(plans):
            if plan is None:
                continue
            res[i] = (sum(scores[p].logprobs[t] for p, t in plan),
                      all(scores[p].greedy == t for p, t in plan))
            if requests[i][0] is not None:
                self.cache_hook.add_partial("loglikelihood", requests[i][0], res[i])
        rest = [i for i, plan in enumerate(plans) if plan is None]
        self.counts["parent_loglik"] += len(rest)
        if rest:
            out = super()._loglikelihood_tokens([requests[i] for i in rest],
                                                disable_tqdm=disable_tqdm)
            for i, r in zip(rest, out, strict=True):
                res[i] = r
        return res

    # --- generate_until -------------------------------------------------------------------
    def _eos_text(self) -> str:
        eos = self.tokenizer.decode(self.eot_token_id)  # as stock generate_until
        if not eos and getattr(self.tokenizer, "eos_token", None):
            eos = self.tokenizer.eos_token
        return eos

    def _one_greedy_token(self, context: str, gen_kwargs: dict, eos: str):
        """(prompt tokens, stop strings) when the request is one greedy token, else None."""
        if self.think_end_token or not isinstance(gen_kwargs, dict):
            return None
        kwargs, until, max_gen_toks = self.modify_gen_kwargs(
            gen_kwargs, eos=eos, default_max_gen_toks=self.max_gen_toks)
        sampling = {k: v for k, v in kwargs.items() if k not in DETOKENIZE}
        if (max_gen_toks != 1 or sampling != {"temperature": 0.0}
                or any(kwargs[k] != v for k, v in DETOKENIZE.items())):
            return None
        toks, n = maybe_truncate(self.tok_encode(context), max_gen_toks=1,
                                 max_model_len=self.max_length, side=self.truncation_side,
                                 verbose=False)
        return (tuple(toks), until) if n == 1 and toks else None

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not self._fast:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        eos = self._eos_text()
        plans = [self._one_greedy_token(*req.args, eos) for req in requests]
        prompts = {plan[0] for plan in plans if plan is not None}
        k = self.model.llm_engine.model_config.max_logprobs
        scores = self._score({p: set() for p in prompts},
                             top_k=TOP_K if k < 0 else min(TOP_K, k)) if prompts else {}
        res: list = [None] * len(requests)
        for i, plan in enumerate(plans):
            if plan is None:
                continue
            text = scores[plan[0]].text
            # A stop string inside the one token: vLLM and lm-eval would cut; leave to the parent.
            if any(s and s in text for s in plan[1]):
                plans[i] = None
                continue
            res[i] = text
            self.cache_hook.add_partial("generate_until", requests[i].args, text)
        rest = [i for i, plan in enumerate(plans) if plan is None]
        self.counts["served_generate"] += len(requests) - len(rest)
        self.counts["parent_generate"] += len(rest)
        if rest:
            out = super().generate_until([requests[i] for i in rest], disable_tqdm=disable_tqdm)
            for i, r in zip(rest, out, strict=True):
                res[i] = r
        return res
