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


MAX_DOCS_KEY = "culnig_max_docs"
SAMPLE_SEED_KEY = "culnig_sample_seed"
COUNTRIES_KEY = "culnig_countries"


def sample_docs(docs: list[dict], meta: dict | None) -> list[dict]:
    """A fixed-seed subsample of a task's documents, chosen by lm-eval ``--metadata`` keys.

    ``culnig_countries`` (list): keep the documents of these cultures only (canonical names).
    ``culnig_max_docs`` (int): keep at most this many, drawn with ``culnig_sample_seed``
    (default 0) and spread evenly over the documents' cultures (round robin), so a small sample
    still covers every culture; documents without a culture are drawn uniformly. The draw depends
    only on the number of documents and their cultures, so every prompt variant of a benchmark
    (and both scoring protocols) gets the same documents. The kept documents stay in their
    original order. Unlike ``--limit`` (the first N), this is a random sample.
    """
    meta = meta or {}
    wanted = meta.get(COUNTRIES_KEY)
    if wanted:
        from culnig_tasks.countries import canonical

        keep = {canonical(c) for c in wanted}
        docs = [d for d in docs if d.get("country") in keep]
    limit = meta.get(MAX_DOCS_KEY)
    if limit is None or int(limit) >= len(docs):
        return docs
    import numpy as np

    order = np.random.RandomState(int(meta.get(SAMPLE_SEED_KEY, 0))).permutation(len(docs))
    queues: dict[str, list[int]] = {}
    for i in order.tolist():
        queues.setdefault(str(docs[i].get("country") or ""), []).append(i)
    picked: list[int] = []
    lanes = [queues[k] for k in sorted(queues)]
    depth = 0
    while len(picked) < int(limit):
        for lane in lanes:
            if depth < len(lane) and len(picked) < int(limit):
                picked.append(lane[depth])
        depth += 1
    return [docs[i] for i in sorted(picked)]


def as_dataset(docs: list[dict], split: str = "test", meta: dict | None = None):
    """``docs`` as lm-eval's ``custom_dataset`` return value; ``meta`` (the loader's keyword
    arguments) may ask for a subsample, see :func:`sample_docs`."""
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(sample_docs(docs, meta))})


def process_exact(doc: dict, results: list[str]) -> dict:
    """The paper's rule on a document carrying its gold label in ``gold``."""
    return exact_first_token(doc["gold"], results)
