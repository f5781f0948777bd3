"""Perplexity tasks ``culnig_ppl_<name>``: lm-eval ``loglikelihood_rolling`` over a text corpus.

``culnig tasks ppl --corpus NAME=PATH ... --out DIR`` writes one YAML file per corpus into DIR
(:func:`write_tasks`). Each task reads its corpus through :func:`load` with the path, the
document split and the file's sha256 in the task's ``metadata``; the sha256 is part of the task
version (``1.0+<sha8>``), so a sweep notices a corpus that changed. DIR is an lm-eval include
path:

* plain lm-eval: ``lm_eval run --include_path DIR --tasks culnig_ppl_en,culnig_ppl_de ...``;
* ``culnig eval --tasks 'culnig_ppl_*' ... -- --include_path DIR``;
* ``culnig sweep``: ``lm_eval_args: [--include_path, DIR]`` and ``tasks: ['culnig_ppl_*']`` in
  the config (:func:`culnig_tasks.lmeval.resolve_tasks` resolves them).

lm-eval takes one include path, so a perplexity sweep lists only perplexity tasks (use a run dir
of its own); the tasks are deliberately not in ``culnig_tasks/`` itself, whose ``culnig_*``
names are the benchmark groups.

Documents: ``paragraph`` (default) = blocks separated by blank lines, ``line`` = every non-empty
line, ``file`` = every file whole. Metrics: lm-eval's ``word_perplexity``, ``byte_perplexity``
and ``bits_per_byte`` (the rolling log-likelihood of each document, its first token conditioned
on the model's prefix token, usually ``<bos>``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import yaml

from culnig.errors import CulnigError

TASK_PREFIX = "culnig_ppl_"
SPLITS = ("paragraph", "line", "file")
VERSION = "1.0"
METRICS = {"word_perplexity": "weighted_perplexity", "byte_perplexity": "weighted_perplexity",
           "bits_per_byte": "bits_per_byte"}


def split_documents(text: str, split: str) -> list[str]:
    if split == "paragraph":
        docs = re.split(r"\n[ \t]*\n", text)
    elif split == "line":
        docs = text.splitlines()
    elif split == "file":
        docs = [text]
    else:
        raise CulnigError(f"unknown document split {split!r}; use one of {', '.join(SPLITS)}")
    return [d.strip() for d in docs if d.strip()]


def corpus_documents(paths: list[str], split: str) -> list[str]:
    from culnig_tasks.corpora import resolve_files

    docs: list[str] = []
    for source in paths:
        for f in resolve_files(source):
            try:
                docs.extend(split_documents(f.read_text(encoding="utf-8"), split))
            except UnicodeDecodeError as exc:
                raise CulnigError(f"{f}: not UTF-8 text ({exc.reason})") from None
    return docs


def load(**kwargs):
    """lm-eval ``custom_dataset``: the documents of the corpus named in the task's metadata."""
    from culnig_tasks.lmeval import as_dataset

    paths = kwargs.get("culnig_ppl_paths")
    if not paths:
        raise CulnigError("perplexity task without 'culnig_ppl_paths' in its metadata; write it "
                          "with `culnig tasks ppl`")
    name = kwargs.get("culnig_ppl_name", "?")
    split = kwargs.get("culnig_ppl_split", "paragraph")
    docs = corpus_documents(list(paths), split)
    expected = kwargs.get("culnig_ppl_sha256")
    if expected and corpus_sha256(list(paths)) != expected:
        raise CulnigError(f"perplexity corpus {name!r} changed since its task was written "
                          f"({', '.join(paths)}); run `culnig tasks ppl ... --force` again")
    if not docs:
        raise CulnigError(f"perplexity corpus {name!r} has no text ({', '.join(paths)})")
    return as_dataset([{"text": d, "corpus": name, "country": ""} for d in docs])


def corpus_sha256(paths: list[str]) -> str:
    from culnig_tasks.corpora import resolve_files

    h = hashlib.sha256()
    for source in paths:
        for f in resolve_files(source):
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def task_config(name: str, paths: list[str], split: str = "paragraph") -> dict:
    from culnig_tasks.corpora import check_name, resolve_files

    check_name(name)
    if split not in SPLITS:
        raise CulnigError(f"unknown document split {split!r}; use one of {', '.join(SPLITS)}")
    for p in paths:
        if str(p).startswith("hf:"):
            raise CulnigError(f"corpus {name!r}: perplexity tasks read local text files; {p!r} is a "
                              "dataset id")
        resolve_files(p, name)
    abs_paths = [str(Path(p).expanduser().resolve()) if not any(c in p for c in "*?[")
                 else str(Path(p).expanduser().absolute()) for p in paths]
    if not corpus_documents(abs_paths, split):
        raise CulnigError(f"corpus {name!r} has no text ({', '.join(paths)}); give it some text")
    sha = corpus_sha256(abs_paths)
    return {
        "task": f"{TASK_PREFIX}{name}",
        "tag": ["culnig_ppl"],
        "custom_dataset": "CUSTOM_DATASET",  # replaced by the !function tag when written
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "text",
        "should_decontaminate": False,
        "metric_list": [{"metric": m, "aggregation": agg, "higher_is_better": False}
                        for m, agg in METRICS.items()],
        "metadata": {"version": f"{VERSION}+{sha[:8]}", "culnig_ppl_name": name,
                     "culnig_ppl_paths": abs_paths, "culnig_ppl_split": split,
                     "culnig_ppl_sha256": sha},
    }


def render_yaml(cfg: dict) -> str:
    text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    return text.replace("custom_dataset: CUSTOM_DATASET",
                        "custom_dataset: !function culnig_tasks.ppl.load")


def write_tasks(corpora: dict[str, list[str]], out_dir: str | Path, *, split: str = "paragraph",
                force: bool = False) -> list[Path]:
    """One ``culnig_ppl_<name>.yaml`` per corpus in ``out_dir``; an existing different file is
    refused unless ``force``."""
    from culnig.atomic import atomic_write_text
    from culnig.paths import tasks_dir

    out = Path(out_dir)
    if out.resolve() == tasks_dir() or tasks_dir() in out.resolve().parents:
        raise CulnigError(f"{out} is inside culnig's task folder, whose culnig_* names are the "
                          "benchmark groups; write perplexity tasks to a folder of their own")
    texts = {name: render_yaml(task_config(name, paths, split)) for name, paths in corpora.items()}
    files = []
    for name, text in texts.items():
        path = out / f"{TASK_PREFIX}{name}.yaml"
        if path.exists() and path.read_text() != text and not force:
            raise CulnigError(f"{path} already exists with another definition; pass --force to "
                              "replace it")
        atomic_write_text(path, text)
        files.append(path)
    return files


def task_corpus(task: str) -> str | None:
    return task[len(TASK_PREFIX):] if task.startswith(TASK_PREFIX) else None
