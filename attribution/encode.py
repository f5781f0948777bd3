"""Items -> token ids, following the paper's protocol.

* With a chat template (and ``use_chat_template``): the prompt becomes one user message (or the
  item's ``messages``), the template adds the generation prompt (thinking disabled where the
  template supports it), then ``answer_prefix`` is appended; the text is tokenised without adding
  special tokens again (the template writes its own BOS).
* Without one: the plain prompt + ``answer_prefix``, tokenised with special tokens (BOS added).
* The answer ``y`` is tokenised on its own, without special tokens (e.g. ``"A"`` -> one token).

The model then reads ``prompt_ids + answer_ids[:-1]`` and P(y|x) is the product of the answer
tokens' probabilities at the last ``len(answer_ids)`` positions.

:func:`fit` shortens an input to a token limit: ``left`` drops prompt tokens from the start (after
a leading BOS), ``right`` from the prompt's end (the text just before the answer); the answer
tokens are never cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from attribution.items import Item
from culnig.errors import CulnigError


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]  # prompt + answer[:-1]
    answer_ids: list[int]
    truncated: int = 0  # prompt tokens removed by fit()

    @property
    def n_answer(self) -> int:
        return len(self.answer_ids)


def render_prompt(item: Item, tokenizer, use_chat_template: bool) -> tuple[str, bool]:
    """The text the model reads before the answer, and whether special tokens are still to add."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = list(item.messages) if item.messages else [{"role": "user", "content": item.prompt}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                 enable_thinking=False)
        except TypeError:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + item.answer_prefix, False
    if item.messages:
        text = "\n\n".join(m["content"] for m in item.messages)
    else:
        text = item.prompt
    return text + item.answer_prefix, True


TRUNCATE_SIDES = ("left", "right")


def fit(enc: Encoded, limit: int, side: str, bos_id: int | None, what: str) -> Encoded:
    """``enc`` shortened to ``limit`` tokens from ``side``; the answer and a leading BOS are kept."""
    excess = len(enc.input_ids) - limit
    if excess <= 0:
        return enc
    n_prompt = len(enc.input_ids) - (enc.n_answer - 1)
    keep = 1 if bos_id is not None and enc.input_ids[0] == bos_id else 0
    if n_prompt - keep - excess < 1:
        raise CulnigError(f"{what}: its answer is {enc.n_answer} tokens; it does not fit into "
                          f"{limit} tokens even with the prompt cut to one token")
    prompt, tail = enc.input_ids[:n_prompt], enc.input_ids[n_prompt:]
    if side == "left":
        prompt = prompt[:keep] + prompt[keep + excess:]
    elif side == "right":
        prompt = prompt[:n_prompt - excess]
    else:
        raise CulnigError(f"truncate must be one of {', '.join(TRUNCATE_SIDES)}, got {side!r}")
    return Encoded(input_ids=prompt + tail, answer_ids=enc.answer_ids, truncated=excess)


def encode_item(item: Item, tokenizer, *, use_chat_template: bool = True,
                max_length: int | None = None, truncate: str = "left") -> Encoded:
    """Token ids of ``item``; longer than ``max_length`` it is shortened with :func:`fit`."""
    text, add_special = render_prompt(item, tokenizer, use_chat_template)
    prompt_ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
    answer_ids = tokenizer(item.answer, add_special_tokens=False)["input_ids"]
    if not answer_ids:
        raise CulnigError(f"item {item.id!r}: answer {item.answer!r} tokenises to nothing")
    if not prompt_ids:
        raise CulnigError(f"item {item.id!r}: the prompt tokenises to nothing")
    enc = Encoded(input_ids=list(prompt_ids) + list(answer_ids[:-1]), answer_ids=list(answer_ids))
    if max_length is not None:
        enc = fit(enc, max_length, truncate, getattr(tokenizer, "bos_token_id", None),
                  item.source or f"item {item.id!r}")
    return enc
