"""Items -> token ids, following the paper's protocol.

* With a chat template (and ``use_chat_template``): the prompt becomes one user message (or the
  item's ``messages``), the template adds the generation prompt (thinking disabled where the
  template supports it), then ``answer_prefix`` is appended; the text is tokenised without adding
  special tokens again (the template writes its own BOS).
* Without one: the plain prompt + ``answer_prefix``, tokenised with special tokens (BOS added).
* The answer ``y`` is tokenised on its own, without special tokens (e.g. ``"A"`` -> one token).

The model then reads ``prompt_ids + answer_ids[:-1]`` and P(y|x) is the product of the answer
tokens' probabilities at the last ``len(answer_ids)`` positions.
"""

from __future__ import annotations

from dataclasses import dataclass

from attribution.items import Item
from culnig.errors import CulnigError


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]  # prompt + answer[:-1]
    answer_ids: list[int]

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


def encode_item(item: Item, tokenizer, *, use_chat_template: bool = True,
                max_length: int | None = None) -> Encoded:
    text, add_special = render_prompt(item, tokenizer, use_chat_template)
    prompt_ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
    answer_ids = tokenizer(item.answer, add_special_tokens=False)["input_ids"]
    if not answer_ids:
        raise CulnigError(f"item {item.id!r}: answer {item.answer!r} tokenises to nothing")
    ids = list(prompt_ids) + list(answer_ids[:-1])
    if max_length is not None and len(ids) > max_length:
        # Keep the end: the answer prefix and the question's last part matter most; the first
        # token (BOS where the tokenizer adds one) is kept.
        ids = ids[:1] + ids[len(ids) - max_length + 1:]
    if not prompt_ids:
        raise CulnigError(f"item {item.id!r}: the prompt tokenises to nothing")
    return Encoded(input_ids=ids, answer_ids=list(answer_ids))
