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

from pathlib import Path

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


def version_str(v: Any) -> str:
    """lm-eval records leaf versions as numbers and group versions as strings: one spelling."""
    try:
        return repr(float(v))
    except (TypeError, ValueError):
        return str(v)


def resolve_tasks(names: tuple[str, ...], lm_eval_args: tuple[str, ...] = ()
                  ) -> tuple[list[str], dict[str, str]]:
    """Expand patterns; return the task/group names lm-eval will be given and the version of every
    group and leaf task they contain (what lm-eval will record in ``results["versions"]``).

    An ``--include_path DIR`` among the extra lm-eval arguments replaces culnig's task folder (lm-eval
    takes one include path): the tasks are then resolved in DIR, e.g. the perplexity tasks that
    ``culnig tasks ppl`` writes (:func:`resolve_ppl_tasks`)."""
    from culnig.errors import CulnigError
    from culnig.paths import tasks_dir

    include = include_path_of(lm_eval_args)
    if include is not None:
        return resolve_ppl_tasks(tuple(names), include)
    from lm_eval.tasks import TaskManager

    def expand(tm) -> tuple[list[str], list[str]]:
        out, missing = [], []
        for n in names:
            if any(ch in n for ch in "*?["):
                matched = tm.match_tasks([n])
            else:
                matched = [n] if n in tm.task_index else []
            (out.extend(matched) if matched else missing.append(n))
        return out, missing

    tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    resolved, missing = expand(tm)
    if missing:
        tm = TaskManager(include_path=str(tasks_dir()))
        resolved, missing = expand(tm)
    if missing:
        raise CulnigError(f"unknown task {missing[0]!r}; culnig's groups: "
                          f"{', '.join(g for g in tm.all_groups if g.startswith('culnig_'))}")
    resolved = list(dict.fromkeys(resolved))
    versions: dict[str, str] = {}

    def visit(name: str, depth: int = 0) -> None:
        entry = tm.task_index.get(name)
        if entry is None or depth > 8:
            raise CulnigError(f"task {name!r} is not in lm-eval's task index")
        kind = entry.kind.name
        cfg = entry.cfg or {}
        if kind == "TAG":
            raise CulnigError(f"{name!r} is an lm-eval tag; name its groups or tasks instead")
        versions[name] = version_str((cfg.get("metadata") or {}).get("version", "0"))
        if kind == "GROUP":
            for child in cfg.get("task", []):
                visit(child if isinstance(child, str) else child.get("task", child.get("group")), depth + 1)

    for n in resolved:
        visit(n)
    return resolved, versions


def include_path_of(lm_eval_args) -> str | None:
    """The value of ``--include_path`` in extra lm-eval arguments (the last one wins, as in
    lm-eval's own parser)."""
    args = list(lm_eval_args or [])
    found = None
    for i, a in enumerate(args):
        if a == "--include_path" and i + 1 < len(args):
            found = args[i + 1]
        elif a.startswith("--include_path="):
            found = a.split("=", 1)[1]
    return found


def resolve_ppl_tasks(names: tuple[str, ...], include_path: str) -> tuple[list[str], dict[str, str]]:
    """Like :func:`resolve_tasks`, for tasks of an extra include path."""
    from lm_eval.tasks import TaskManager

    from culnig.errors import CulnigError

    root = Path(include_path)
    if not root.is_dir():
        raise CulnigError(f"--include_path {include_path}: no such folder (write it with "
                          "`culnig tasks ppl --out DIR`)")
    tm = TaskManager(include_path=str(root), include_defaults=False)
    resolved, missing = [], []
    for n in names:
        matched = tm.match_tasks([n]) if any(ch in n for ch in "*?[") else (
            [n] if n in tm.task_index else [])
        (resolved.extend(matched) if matched else missing.append(n))
    if missing:
        raise CulnigError(f"unknown task {missing[0]!r} in {include_path}; it holds: "
                          f"{', '.join(sorted(tm.all_subtasks)) or 'no tasks'}")
    resolved = [t for t in dict.fromkeys(resolved) if tm.task_index[t].kind.name != "TAG"]
    versions = {}
    for t in resolved:
        entry = tm.task_index[t]
        if entry.kind.name != "TASK":
            raise CulnigError(f"{t!r} in {include_path} is a {entry.kind.name.lower()}; name tasks")
        versions[t] = version_str(((entry.cfg or {}).get("metadata") or {}).get("version", "0"))
    return resolved, versions
