"""CulturalBench-Easy (``kellycyy/CulturalBench``, config ``CulturalBench-Easy``, split ``test``).

The builder of this folder's task (``utils.py``): per row and variant the reference's md5 seed
shuffles the four options, re-lettered A-D (:func:`build_item`). Hub only, or a local copy in the
hub's schema (``culturalbench/CulturalBench-Easy.csv`` or ``.jsonl``). Details: ``README.md``.
"""

from __future__ import annotations

import random
from collections import defaultdict

from culnig_tasks.countries import canonical_open
from culnig_tasks.country_rc import stable_seed
from culnig_tasks.data import load_split
from culnig_tasks.prompts import variants

HUB_ID = "kellycyy/CulturalBench"
CONFIG = "CulturalBench-Easy"
SPLIT = "test"
LOCAL = ("culturalbench/CulturalBench-Easy.csv", "culturalbench/CulturalBench-Easy.jsonl")


def rows() -> list[dict]:
    return [dict(r) for r in load_split(HUB_ID, CONFIG, SPLIT, LOCAL)[SPLIT]]


def build_item(row: dict, variant: int) -> dict:
    instruction = variants("culturalbench")[variant - 1]
    rng = random.Random(stable_seed(f"{row['data_idx']}_{instruction}"))
    options = [row[f"prompt_option_{k}"] for k in "abcd"]
    rng.shuffle(options)
    gold_text = row[f"prompt_option_{str(row['answer']).strip().lower()}"]
    gold = "ABCD"[options.index(gold_text)]
    prompt = instruction.format(question=row["prompt_question"], option_a=options[0],
                                option_b=options[1], option_c=options[2], option_d=options[3])
    return {"id": str(row["data_idx"]), "question_idx": str(row.get("question_idx", "")),
            "country": canonical_open(str(row["country"])), "source_country": str(row["country"]),
            "variant": variant, "prompt": prompt, "options": options, "gold": gold}


def split_rows(all_rows: list[dict], split: str) -> list[dict]:
    if split == "all":
        return list(all_rows)
    if split not in ("neur", "test"):
        raise ValueError(f"unknown CulturalBench split {split!r}; use neur, test or all")
    by_country: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(all_rows):
        by_country[str(row["country"])].append(i)
    keep = set()
    for idxs in by_country.values():
        half = len(idxs) // 2
        keep.update(idxs[:half] if split == "neur" else idxs[half:])
    return [row for i, row in enumerate(all_rows) if i in keep]


def items(split: str = "all", variant: int = 1) -> list[dict]:
    return [build_item(r, variant) for r in split_rows(rows(), split)]
