"""NormAd (``akhilayerukola/NormAd``, split ``train``): does a story's behaviour fit a country's norms?

The builder of this folder's task (``utils.py``): per row and variant the reference's md5 seed
permutes the numbers 1-3 over yes/no/neutral (:func:`build_item`). Hub only, or a local copy in
the hub's schema (``normad/train.jsonl`` or ``.csv``). Details: ``README.md``.
"""

from __future__ import annotations

import random
from collections import defaultdict

from culnig_tasks.countries import canonical_open
from culnig_tasks.country_rc import stable_seed
from culnig_tasks.data import load_split
from culnig_tasks.prompts import variants

HUB_ID = "akhilayerukola/NormAd"
SPLIT = "train"
LOCAL = ("normad/train.jsonl", "normad/train.csv")
LABELS = ("yes", "no", "neutral")


def rows() -> list[dict]:
    return [dict(r) for r in load_split(HUB_ID, None, SPLIT, LOCAL)[SPLIT]]


def build_item(row: dict, variant: int) -> dict:
    instruction = variants("normad")[variant - 1]
    rng = random.Random(stable_seed(f"{row['ID']}_{instruction}"))
    numbers = [1, 2, 3]
    rng.shuffle(numbers)
    meaning = dict(zip(numbers, LABELS))
    options = ", ".join(f"{n}: {meaning[n]}" for n in (1, 2, 3))
    label = str(row["Gold Label"]).strip()
    if label not in LABELS:
        raise ValueError(f"NormAd row {row['ID']}: unknown gold label {label!r}")
    prompt = instruction.format(country=row["Country"], story=row["Story"], options=options)
    return {"id": str(row["ID"]), "country": canonical_open(str(row["Country"])),
            "source_country": str(row["Country"]), "variant": variant, "prompt": prompt,
            "options": options, "gold_label": label, "gold": str(numbers[LABELS.index(label)])}


def split_rows(all_rows: list[dict], split: str) -> list[dict]:
    if split == "all":
        return list(all_rows)
    if split not in ("neur", "test"):
        raise ValueError(f"unknown NormAd split {split!r}; use neur, test or all")
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, row in enumerate(all_rows):
        groups[(str(row["Country"]), str(row["Gold Label"]).strip())].append(i)
    keep = set()
    for idxs in groups.values():
        half = len(idxs) // 2
        keep.update(idxs[:half] if split == "neur" else idxs[half:])
    return [row for i, row in enumerate(all_rows) if i in keep]


def items(split: str = "all", variant: int = 1) -> list[dict]:
    return [build_item(r, variant) for r in split_rows(rows(), split)]
