"""Glue between the shared benchmark builders and lm-eval task folders.

Task loaders (``custom_dataset``) receive lm-eval's task metadata as keyword arguments (the
task's own ``metadata``, ``--model_args`` and ``--metadata``). One key matters here:

``culnig_chat_template`` (default true). The paper's reference adds BLEnD's answer prefix and
WorldValuesBench's system message only *through* the chat template: for a model without one it
uses the plain user prompt, with no prefix and no system text. lm-eval cannot tell a task whether
``--apply_chat_template`` is on, and without a template it would glue the system message and the
prefix to the plain prompt. ``culnig eval`` therefore passes ``--metadata
'{"culnig_chat_template": false}'`` when it evaluates a model without a chat template; with plain
``lm_eval`` pass it yourself in that case.
"""

from __future__ import annotations

from culnig_tasks.scoring import exact_first_token

CHAT_TEMPLATE_KEY = "culnig_chat_template"


def chat_template_on(kwargs: dict) -> bool:
    value = kwargs.get(CHAT_TEMPLATE_KEY, True)
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def as_dataset(docs: list[dict], split: str = "test"):
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})


def process_exact(doc: dict, results: list[str]) -> dict:
    """The paper's rule on a document carrying its gold label in ``gold``."""
    return exact_first_token(doc["gold"], results)
