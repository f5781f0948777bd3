"""The option log-likelihood protocol (task family ``culnigll_<bench>``, leaves ``<bench>_loglik_v<k>``).

Same documents and rendered prompts as the paper protocol (``culnig_<bench>``): each benchmark's
loader builds them once, and this module turns a paper-protocol document into a
``multiple_choice`` one. lm-eval then scores each option label the prompt offers (``A``-``E``,
``0``/``1``, ``1``-``3``, the WorldValuesBench scale digits) by the log-likelihood of the label's
tokens after the prompt, instead of taking the argmax over the whole vocabulary.

Where the label goes:

* with the chat template (``culnig_chat_template`` true), the label opens the assistant turn, right
  after BLEnD's answer prefix where there is one: exactly the token the paper protocol expects;
* without one (base models), the plain prompt is followed by a newline and the label (no newline
  when the prompt already ends in whitespace), so the answer sits on its own line. The separator is
  the same for every option of a document, so it shifts all options by the same log-probability
  wherever it is tokenised apart from the label.

Document fields added: ``labels`` (the bare option labels), ``ll_choices`` (separator + label, what
is scored), ``gold_index``.
"""

from __future__ import annotations

from typing import Callable

from culnig_tasks.lmeval import as_dataset, chat_template_on

PLAIN_SEPARATOR = "\n"


def separator(prompt: str, chat: bool) -> str:
    if chat or not prompt or prompt[-1].isspace():
        return ""
    return PLAIN_SEPARATOR


def to_multiple_choice(docs: list[dict], labels_of: Callable[[dict], list[str]], *, chat: bool,
                       prompt_key: str = "prompt", gold_key: str = "gold") -> list[dict]:
    """Add ``labels``/``ll_choices``/``gold_index`` to paper-protocol documents (in place)."""
    for d in docs:
        labels = [str(x) for x in labels_of(d)]
        gold = str(d[gold_key])
        if gold not in labels:
            raise ValueError(f"gold label {gold!r} is not among the options {labels} "
                             f"(document {d.get('id', d.get('idx', '?'))})")
        sep = separator(d[prompt_key], chat)
        d["labels"] = labels
        d["ll_choices"] = [sep + x for x in labels]
        d["gold_index"] = labels.index(gold)
    return docs


def load(paper_load: Callable[..., object], labels_of: Callable[[dict], list[str]], variant: int,
         **kwargs):
    """The loader of a ``<bench>_loglik_v<k>`` task: the paper loader's documents, as options."""
    dataset = paper_load(variant, **kwargs)
    split = next(iter(dataset))
    docs = to_multiple_choice(dataset[split].to_list(), labels_of, chat=chat_template_on(kwargs))
    return as_dataset(docs, split)


def predicted_index(results: list) -> int:
    """Index of the highest log-likelihood among lm-eval's ``(loglik, is_greedy)`` results."""
    lls = [float(r[0]) for r in results]
    return max(range(len(lls)), key=lls.__getitem__)
