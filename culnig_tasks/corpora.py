"""Text corpora for activation statistics (LAPE/CAPE) and perplexity tasks.

A corpus is named on the command line as ``NAME=SOURCE``; the same NAME may be given several
times to pool sources. A SOURCE is

* a plain-text file (UTF-8; ``.txt`` or any other suffix) or a JSON-lines file (``.jsonl``, one
  object per line, the text under ``--text-field``, default ``text``);
* a folder: every ``.txt`` and ``.jsonl`` file below it, in sorted path order;
* a glob pattern (``data/de/*.txt``): the matching files, sorted;
* ``hf:ID[:CONFIG[:SPLIT]]``: a ``datasets`` dataset streamed split by split (default split
  ``train``), the text under ``--text-field``. ``ID`` may be a hub id or a local dataset folder.

Names are letters, digits, ``_`` and ``-`` (they become lm-eval task names ``culnig_ppl_<name>``
and keys of the statistics file).

:func:`blend_local_corpora` writes small real multilingual corpora from the BLEnD files in
``../shared/data/blend``: per country, its local-language questions with their local-language
answers.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from culnig.errors import CulnigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
TEXT_SUFFIXES = (".txt", ".jsonl")
HF_PREFIX = "hf:"


@dataclass
class Corpus:
    """One named corpus: its sources in the order given."""

    name: str
    sources: list[str] = field(default_factory=list)
    text_field: str = "text"

    def files(self) -> list[Path]:
        """The files of every non-dataset source (a dataset source has none)."""
        out: list[Path] = []
        for s in self.sources:
            if not s.startswith(HF_PREFIX):
                out.extend(resolve_files(s, self.name))
        return out

    def identity(self) -> list:
        """What decides the corpus's content, cheaply: files with size and mtime, dataset ids."""
        ident: list = []
        for s in self.sources:
            if s.startswith(HF_PREFIX):
                ident.append({"dataset": s, "field": self.text_field})
            else:
                for f in resolve_files(s, self.name):
                    st = f.stat()
                    ident.append({"file": str(f.resolve()), "size": st.st_size,
                                  "mtime_ns": st.st_mtime_ns})
        return ident

    def documents(self) -> Iterator[str]:
        """Stream the corpus: one string per line of a text file (newline kept), per JSON line,
        or per dataset row."""
        for s in self.sources:
            if s.startswith(HF_PREFIX):
                yield from _dataset_rows(s, self.text_field, self.name)
                continue
            for f in resolve_files(s, self.name):
                yield from _file_documents(f, self.text_field)


def check_name(name: str, what: str = "corpus") -> str:
    if not NAME.match(name):
        raise CulnigError(f"{what} name {name!r}: use letters, digits, '_' and '-' (it becomes part "
                          "of file keys and lm-eval task names)")
    return name


def parse_corpora(specs: list[str], text_field: str = "text") -> list[Corpus]:
    """``["en=a.txt", "de=b.txt", "en=c.txt"]`` -> corpora in first-seen order, sources pooled."""
    if not specs:
        raise CulnigError("no corpus given; pass --corpus NAME=PATH (repeatable)")
    by_name: dict[str, Corpus] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        name, source = name.strip(), source.strip()
        if not sep or not name or not source:
            raise CulnigError(f"--corpus {spec!r}: use NAME=PATH (a text file, folder, glob "
                              "pattern or hf:DATASET_ID)")
        check_name(name)
        by_name.setdefault(name, Corpus(name, text_field=text_field)).sources.append(source)
    for c in by_name.values():
        for s in c.sources:
            if not s.startswith(HF_PREFIX):
                resolve_files(s, c.name)  # missing files: one clear error before any work
    return list(by_name.values())


def resolve_files(source: str, name: str = "?") -> list[Path]:
    path = Path(os.path.expanduser(source))
    if any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True)
                       if Path(p).is_file())
        if not files:
            raise CulnigError(f"corpus {name!r}: pattern {source!r} matches no file")
        return files
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise CulnigError(f"corpus {name!r}: folder {source} holds no .txt or .jsonl file")
        return files
    if path.is_file():
        return [path]
    raise CulnigError(f"corpus {name!r}: {source}: no such file or folder")


def _file_documents(path: Path, text_field: str) -> Iterator[str]:
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise CulnigError(f"{path}: cannot read ({exc.strerror})") from None
    with fh:
        try:
            if path.suffix == ".jsonl":
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise CulnigError(f"{path}:{n}: not JSON ({exc.msg})") from None
                    text = obj.get(text_field) if isinstance(obj, dict) else None
                    if not isinstance(text, str):
                        raise CulnigError(f"{path}:{n}: no text field {text_field!r}")
                    yield text
            else:
                yield from fh
        except UnicodeDecodeError as exc:
            raise CulnigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _dataset_rows(source: str, text_field: str, name: str) -> Iterator[str]:
    parts = source[len(HF_PREFIX):].split(":")
    if not parts[0] or len(parts) > 3:
        raise CulnigError(f"corpus {name!r}: {source!r}: use hf:ID[:CONFIG[:SPLIT]]")
    ds_id, config, split = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None), \
        (parts[2] if len(parts) > 2 and parts[2] else "train")
    import datasets

    try:
        ds = datasets.load_dataset(ds_id, config, split=split, streaming=True)
    except Exception as exc:  # network, missing dataset, bad config: one line for the user
        raise CulnigError(f"corpus {name!r}: cannot stream {source!r} "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    for row in ds:
        text = row.get(text_field)
        if not isinstance(text, str):
            raise CulnigError(f"corpus {name!r}: {source!r} rows have no text field {text_field!r} "
                              f"(fields: {', '.join(row)}); pass --text-field")
        yield text


# --- BLEnD local-language corpora --------------------------------------------------------------

def _blend_rows(blend_dir: Path, key: str) -> list[tuple[str, str, list[str]]]:
    """(id, local question, local answers by vote count) for one BLEnD country key."""
    qfile = blend_dir / "questions" / f"{key}_questions.csv"
    afile = blend_dir / "annotations" / f"{key}_data.json"
    if not qfile.is_file() or not afile.is_file():
        raise CulnigError(f"BLEnD files for {key!r} not found under {blend_dir} "
                          f"({qfile.name}, {afile.name})")
    annotations = json.loads(afile.read_text(encoding="utf-8"))
    rows = []
    with open(qfile, encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            qid, question = r["ID"], (r.get("Question") or "").strip()
            ann = annotations.get(qid) or {}
            answers = [a for entry in sorted(ann.get("annotations") or [], key=lambda e: -e["count"])
                       for a in entry.get("answers", []) if a and a.strip()]
            if question:
                rows.append((qid, question, answers))
    return rows


def blend_local_corpora(blend_dir: str | Path, out_dir: str | Path, countries: list[str], *,
                        eval_fraction: float = 0.4, per_paragraph: int = 10) -> dict[str, dict[str, Path]]:
    """Write ``out_dir/{train,eval}/<slug>.txt`` per country: ``question answer1, answer2, ...``
    per line in the country's local language, ``per_paragraph`` lines per paragraph (blank line
    between). The last ``eval_fraction`` of the questions (file order) go to ``eval``. Returns
    ``{slug: {"train": path, "eval": path}}``."""
    from culnig_tasks.countries import canonical, source_name

    blend_dir, out_dir = Path(blend_dir), Path(out_dir)
    if not 0 <= eval_fraction < 1:
        raise CulnigError(f"eval fraction must be in [0, 1), got {eval_fraction}")
    out: dict[str, dict[str, Path]] = {}
    for country in countries:
        canon = canonical(country)
        slug = re.sub(r"[^a-z0-9]+", "_", canon.lower()).strip("_")
        rows = _blend_rows(blend_dir, source_name(canon, "blend"))
        n_eval = int(round(len(rows) * eval_fraction))
        parts = {"train": rows[:len(rows) - n_eval], "eval": rows[len(rows) - n_eval:]}
        out[slug] = {}
        for part, part_rows in parts.items():
            lines = [q + (" " + ", ".join(dict.fromkeys(a)) if a else "") for _, q, a in part_rows]
            paragraphs = ["\n".join(lines[i:i + per_paragraph]) for i in range(0, len(lines), per_paragraph)]
            path = out_dir / part / f"{slug}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n\n".join(paragraphs) + ("\n" if paragraphs else ""), encoding="utf-8")
            out[slug][part] = path
    return out
