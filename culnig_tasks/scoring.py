"""Scoring rules shared by the tasks."""

from __future__ import annotations


def exact_first_token(gold: str, results: list[str]) -> dict:
    """The paper's rule: the decoded first generated token equals the gold label exactly.

    No strip and case-sensitive: ``" A"`` is wrong; a special token decodes to ``""`` (HF) or to
    its own text (vLLM keeps special tokens) and is wrong either way, so both backends agree.
    """
    return {"acc": float(results[0] == gold)}
