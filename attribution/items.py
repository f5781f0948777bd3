"""Attribution items: the JSONL rows that ``culnig attribute`` consumes.

One row per line::

    {"id": "blend-US-Al-en-12", "dataset": "blend_neur", "country": "US",
     "prompt": "..." | "messages": [{"role": "user", "content": "..."}],
     "answer": "A", "answer_prefix": "{\\"answer_choice\\":\\"", "control": false}

``id``, ``dataset``, ``country`` and ``answer`` are required, and one of ``prompt`` (a string, the
user turn) or ``messages`` (a chat). ``answer_prefix`` (default empty) opens the assistant turn
after the chat template; ``control`` (default false) marks control items (BLEnD_ctrl), whose
per-item scores may be clamped at 0.

``country`` must be a known spelling (:func:`culnig_tasks.countries.canonical`); the canonical
name is used, so ``US`` and ``USA`` are one country. A file about other countries declares them
on its first line, ``{"countries": ["Atlantis", "Lemuria"]}``: those names are then accepted as
written, and any other unknown name is still an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from culnig.errors import CulnigError
from culnig.hashing import sha256_file as file_sha256  # noqa: F401  (re-exported)

REQUIRED = ("id", "dataset", "country", "answer")
DECLARE_KEY = "countries"  # the optional first line {"countries": [...]}


@dataclass(frozen=True)
class Item:
    id: str
    dataset: str
    country: str
    answer: str
    prompt: str | None = None
    messages: tuple[dict, ...] | None = None
    answer_prefix: str = ""
    control: bool = False
    # Where the item was read ("file:line"), for error messages; not part of its identity.
    source: str | None = field(default=None, compare=False)


def _country(value, where: str, declared: frozenset[str]) -> str:
    from culnig_tasks.countries import UnknownCountry, canonical

    if not isinstance(value, str) or not value.strip():
        raise CulnigError(f"{where}: field 'country' must be a non-empty string")
    if value in declared:
        return value
    try:
        return canonical(value)
    except UnknownCountry as exc:
        raise CulnigError(f"{where}: {exc}; items about other countries declare them on the "
                          f'first line: {{"{DECLARE_KEY}": ["{value}", ...]}}') from None


def _row_to_item(row: dict, where: str, declared: frozenset[str] = frozenset()) -> Item:
    if not isinstance(row, dict):
        raise CulnigError(f"{where}: a row must be a JSON object")
    for key in REQUIRED:
        if key not in row or row[key] is None:
            raise CulnigError(f"{where}: missing field '{key}'")
    if "prompt" not in row and "messages" not in row:
        raise CulnigError(f"{where}: missing field 'prompt' (or 'messages')")
    messages = row.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise CulnigError(f"{where}: field 'messages' must be a list of {{role, content}} objects")
        messages = tuple(messages)
    prompt = row.get("prompt")
    if messages is None and not isinstance(prompt, str):
        raise CulnigError(f"{where}: field 'prompt' must be a string")
    answer = row["answer"]
    if not isinstance(answer, str) or answer == "":
        raise CulnigError(f"{where}: field 'answer' must be a non-empty string")
    return Item(
        id=str(row["id"]), dataset=str(row["dataset"]), country=_country(row["country"], where, declared),
        answer=answer, prompt=prompt if messages is None else None, messages=messages,
        answer_prefix=str(row.get("answer_prefix") or ""), control=bool(row.get("control", False)),
        source=where,
    )


def _declaration(row, where: str) -> frozenset[str] | None:
    """The names of a first line ``{"countries": [...]}``; None when the line is an item."""
    if not isinstance(row, dict) or set(row) != {DECLARE_KEY}:
        return None
    names = row[DECLARE_KEY]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip()
                                                           for n in names):
        raise CulnigError(f"{where}: '{DECLARE_KEY}' must be a non-empty list of country names")
    return frozenset(names)


def read_items(path: str | Path) -> list[Item]:
    """Parse and validate an items file; errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise CulnigError(f"{path}: no such items file")
    items: list[Item] = []
    seen: set[str] = set()
    declared: frozenset[str] | None = None
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CulnigError(f"{where}: not valid JSON ({exc.msg})") from None
                if declared is None:  # the first non-empty line may declare the countries
                    declared = _declaration(row, where)
                    if declared is not None:
                        continue
                    declared = frozenset()
                elif isinstance(row, dict) and set(row) == {DECLARE_KEY}:
                    raise CulnigError(f"{where}: the countries must be declared on the first line")
                item = _row_to_item(row, where, declared)
                if item.id in seen:
                    raise CulnigError(f"{where}: duplicate id {item.id!r}")
                seen.add(item.id)
                items.append(item)
    except UnicodeDecodeError:
        raise CulnigError(f"{path}: not a UTF-8 text file") from None
    if not items:
        raise CulnigError(f"{path}: the items file is empty")
    return items
