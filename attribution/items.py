"""Attribution items: the JSONL rows that ``culnig attribute`` consumes.

One row per line::

    {"id": "blend-US-Al-en-12", "dataset": "blend_neur", "country": "US",
     "prompt": "..." | "messages": [{"role": "user", "content": "..."}],
     "answer": "A", "answer_prefix": "{\\"answer_choice\\":\\"", "control": false}

``id``, ``dataset``, ``country`` and ``answer`` are required, and one of ``prompt`` (a string, the
user turn) or ``messages`` (a chat). ``answer_prefix`` (default empty) opens the assistant turn
after the chat template; ``control`` (default false) marks control items (BLEnD_ctrl), whose
per-item scores may be clamped at 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from culnig.errors import CulnigError
from culnig.hashing import sha256_file as file_sha256  # noqa: F401  (re-exported)

REQUIRED = ("id", "dataset", "country", "answer")


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


def _row_to_item(row: dict, where: str) -> Item:
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
        id=str(row["id"]), dataset=str(row["dataset"]), country=str(row["country"]),
        answer=answer, prompt=prompt if messages is None else None, messages=messages,
        answer_prefix=str(row.get("answer_prefix") or ""), control=bool(row.get("control", False)),
    )


def read_items(path: str | Path) -> list[Item]:
    """Parse and validate an items file; errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise CulnigError(f"{path}: no such items file")
    items: list[Item] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CulnigError(f"{where}: not valid JSON ({exc.msg})") from None
            item = _row_to_item(row, where)
            if item.id in seen:
                raise CulnigError(f"{where}: duplicate id {item.id!r}")
            seen.add(item.id)
            items.append(item)
    if not items:
        raise CulnigError(f"{path}: the items file is empty")
    return items


