"""``culnig verify``: does a baked checkpoint compute what the hooked original computes?

(a) the original model with the set applied as forward hooks and (b) the baked checkpoint, both in
transformers (fp32), give logits on a few prompts; their largest absolute difference must stay within
``tol`` (1e-5). The unmasked original is compared too, to show the mask changes something at all.
With ``vllm=True`` the baked folder is also served by vLLM (in a process of its own), whose greedy
continuations must equal transformers' and whose top-k logprobs must agree within ``logprob_tol``.
"""

from __future__ import annotations

import gc
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from culnig.errors import CulnigError
from culnig.neuron_sets import NeuronSet, file_sha256
from masking.hooks import masked
from masking.manifest import read_manifest

# Short English prompts written for this check.
PROMPTS = (
    "The capital of France is",
    "In Japan, people often greet each other by",
    "A traditional dish served at weddings in Nigeria is",
    "The most popular sport in Brazil is",
    "On New Year's Eve, families in Spain eat twelve",
)


@dataclass
class VerifyReport:
    prompts: int
    new_tokens: int
    scale: float
    max_abs_diff: float  # hooked original vs baked, transformers
    tol: float
    mask_effect: float  # unmasked original vs baked
    changed_prompts: int  # greedy continuation differs from the unmasked original's
    hf_tokens: list[list[int]] = field(default_factory=list)
    vllm_tokens: list[list[int]] | None = None
    vllm_token_matches: int | None = None
    vllm_logprob_diff: float | None = None
    logprob_tol: float | None = None

    @property
    def ok(self) -> bool:
        ok = self.max_abs_diff <= self.tol
        if self.vllm_tokens is not None:
            ok = ok and self.vllm_token_matches == self.prompts
            ok = ok and self.vllm_logprob_diff is not None and self.vllm_logprob_diff <= self.logprob_tol
        return ok

    def lines(self) -> list[str]:
        flag = lambda good: "OK" if good else "FAILED"  # noqa: E731
        out = [
            f"prompts:      {self.prompts}, {self.new_tokens} greedy tokens each, scale {self.scale:g}",
            f"transformers: hooked original vs baked: max |dlogit| {self.max_abs_diff:.3g} "
            f"(tol {self.tol:g}) {flag(self.max_abs_diff <= self.tol)}",
            f"mask effect:  unmasked vs baked: max |dlogit| {self.mask_effect:.3g}; greedy "
            f"continuation changed on {self.changed_prompts}/{self.prompts} prompts",
        ]
        if self.vllm_tokens is not None:
            out.append(f"vLLM:         greedy tokens equal to transformers on {self.vllm_token_matches}/"
                       f"{self.prompts} prompts {flag(self.vllm_token_matches == self.prompts)}")
            good = self.vllm_logprob_diff is not None and self.vllm_logprob_diff <= self.logprob_tol
            out.append(f"vLLM:         top-k logprobs vs transformers: max |d| "
                       f"{self.vllm_logprob_diff if self.vllm_logprob_diff is not None else float('nan'):.3g} "
                       f"(tol {self.logprob_tol:g}) {flag(good)}")
        out.append(f"verify:       {'OK' if self.ok else 'FAILED'}")
        return out

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def encode(tok, prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(input_ids, attention_mask)`` of all prompts (one batch)."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(list(prompts), return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def batch_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits.float()


@torch.no_grad()
def greedy(model, ids: torch.Tensor, mask: torch.Tensor, n: int) -> list[list[int]]:
    """``n`` greedy tokens per prompt, EOS not special (as vLLM's ``ignore_eos``), KV-cached."""
    pos = _positions(mask)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    steps = []
    for i in range(n):
        nxt = out.logits[:, -1].argmax(-1)
        steps.append(nxt)
        if i == n - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                    past_key_values=out.past_key_values, use_cache=True)
    return torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(ids.shape[0])]


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float((a - b).abs()[mask.bool()].max())


def _scale_and_check_set(masked_dir: Path, set_path: Path, scale: float | None) -> float:
    manifest = read_manifest(masked_dir)
    if manifest is not None and manifest["set"]["sha256"] != file_sha256(set_path):
        raise CulnigError(f"{masked_dir} was baked from another set ({manifest['set']['file']}), not "
                          f"{set_path}")
    if scale is None:
        if manifest is None:
            raise CulnigError(f"{masked_dir}: no culnig_mask.json; pass --scale")
        return float(manifest["scale"])
    if manifest is not None and float(manifest["scale"]) != float(scale):
        raise CulnigError(f"{masked_dir} was baked with scale {manifest['scale']}, not {scale}")
    return float(scale)


def _logprob_diff(vl: dict, hf_lp: torch.Tensor, hf_tokens: list[list[int]]) -> tuple[int, float]:
    """Prompts whose vLLM tokens equal transformers', and the largest logprob gap over the shared
    prefix of each continuation (vLLM's top-k tokens, looked up in transformers' distribution)."""
    matches, worst = 0, 0.0
    for p, (v_toks, h_toks) in enumerate(zip(vl["tokens"], hf_tokens)):
        matches += v_toks == h_toks
        for j, (vt, ht) in enumerate(zip(v_toks, h_toks)):
            step = vl["logprobs"][p][j] if j < len(vl["logprobs"][p]) else {}
            toks = torch.tensor([int(t) for t in step], dtype=torch.long)
            vals = torch.tensor(list(step.values()), dtype=torch.float32)
            if toks.numel():
                worst = max(worst, float((hf_lp[p][j, toks] - vals).abs().max()))
            if vt != ht:
                break
    return matches, worst


def _original_side(model_ref: str, neuron_set: NeuronSet, set_path: Path, scale: float,
                   ids: torch.Tensor, mask: torch.Tensor, new_tokens: int):
    """Unmasked logits and greedy tokens, and hook-masked logits, of the original model."""
    from culnig.loading import load_model

    model, _, layout = load_model(model_ref, dtype="fp32")
    neuron_set.validate(layout, source=str(set_path))
    plain = batch_logits(model, ids, mask)
    plain_tokens = greedy(model, ids, mask, new_tokens)
    with masked(model, neuron_set, layout, scale):
        hooked = batch_logits(model, ids, mask)
    return layout, plain, plain_tokens, hooked


def _baked_side(masked_dir: Path, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int,
                teacher_forced: bool):
    """Logits, greedy tokens and (optionally) the continuations' logprobs of the baked folder."""
    from culnig.loading import load_model

    model, _, layout = load_model(str(masked_dir), dtype="fp32")
    logits = batch_logits(model, ids, mask)
    tokens = greedy(model, ids, mask, new_tokens)
    logprobs = None
    if teacher_forced:  # prompt p's step j is predicted at column L-1+j
        cont = torch.tensor(tokens, dtype=ids.dtype)
        full = batch_logits(model, torch.cat([ids, cont], dim=1),
                            torch.cat([mask, torch.ones_like(cont)], dim=1))
        logprobs = torch.log_softmax(full[:, ids.shape[1] - 1:-1], dim=-1)
    return layout, logits, tokens, logprobs


def verify(model_ref: str, set_path: str | Path, masked_dir: str | Path, *, scale: float | None = None,
           prompts: tuple[str, ...] | list[str] = PROMPTS, new_tokens: int = 8, tol: float = 1e-5,
           vllm: bool = False, top_k: int = 5, logprob_tol: float = 1e-3) -> VerifyReport:
    from transformers import AutoTokenizer

    masked_dir, set_path = Path(masked_dir), Path(set_path)
    if not (masked_dir / "config.json").is_file():
        raise CulnigError(f"{masked_dir}: no config.json; pass the folder `culnig bake` wrote")
    scale = _scale_and_check_set(masked_dir, set_path, scale)
    neuron_set = NeuronSet.load(set_path)
    ids, mask = encode(AutoTokenizer.from_pretrained(str(masked_dir)), prompts)
    job = None
    if vllm:  # vLLM starts (about a minute on CPU) while transformers works
        from masking.vllm_worker import VllmJob

        job = VllmJob(masked_dir, [row[m.bool()].tolist() for row, m in zip(ids, mask)],
                      new_tokens, top_k)
    try:
        layout, plain, plain_tokens, hooked = _original_side(model_ref, neuron_set, set_path, scale,
                                                             ids, mask, new_tokens)
        gc.collect()
        baked_layout, baked, hf_tokens, hf_lp = _baked_side(masked_dir, ids, mask, new_tokens,
                                                            job is not None)
        if baked_layout.fingerprint != layout.fingerprint:
            raise CulnigError(f"{masked_dir} is a different model than {model_ref} (fingerprint "
                              f"{baked_layout.fingerprint} vs {layout.fingerprint})")
        report = VerifyReport(
            prompts=len(ids), new_tokens=new_tokens, scale=scale,
            max_abs_diff=_max_diff(hooked, baked, mask), tol=tol,
            mask_effect=_max_diff(plain, baked, mask),
            changed_prompts=sum(a != b for a, b in zip(plain_tokens, hf_tokens)), hf_tokens=hf_tokens,
        )
        if job is not None:
            vl = job.result()
            report.vllm_tokens = vl["tokens"]
            report.vllm_token_matches, report.vllm_logprob_diff = _logprob_diff(vl, hf_lp, hf_tokens)
            report.logprob_tol = logprob_tol
        return report
    finally:
        if job is not None:
            job.close()


def write_report(report: VerifyReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_json(), indent=1) + "\n")
