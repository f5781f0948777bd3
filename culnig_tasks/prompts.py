"""The paper's prompt texts (Tables 5-11) with their exact whitespace, from ``prompts.json``."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def all_prompts() -> dict:
    return json.loads((Path(__file__).with_name("prompts.json")).read_text(encoding="utf-8"))


def variants(benchmark: str) -> list[str]:
    """The four instruction templates of a benchmark; variant k is element k-1."""
    return all_prompts()[benchmark]
