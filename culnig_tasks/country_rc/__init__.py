"""CountryRC (the CULNIG paper's reading comprehension): items with options and gold.

The builder of this folder's task (``utils.py``) and of the CountryRC identification items
(``culnig data build``): per (record, variant, country) the reference's md5 seed draws three
distractor countries and the option order (:func:`build_item`). Records 0-24 are the
identification half, 25-49 the test half. Rules: ``README.md`` and docs/data.md.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import lru_cache

from culnig_tasks.countries import BLEND_COUNTRIES, COUNTRYRC_EVAL_COUNTRIES, canonical
from culnig_tasks.data import DataUnavailable, local_file
from culnig_tasks.prompts import variants

HUB_ID = "ynklab/CULNIG"  # the records live in the paper's repository (data/CountryRC/data.json)
LOCAL = "countryrc/data.json"
SPLITS = {"neur": slice(0, 25), "test": slice(25, 50)}


@lru_cache(maxsize=1)
def records() -> tuple[dict, ...]:
    path = local_file(LOCAL)
    if path is None:
        raise DataUnavailable(
            f"dataset {HUB_ID} data/CountryRC/data.json is not available; set CULNIG_DATA_DIR to "
            f"a folder holding {LOCAL}")
    return tuple(json.loads(path.read_text(encoding="utf-8")))


def stable_seed(text: str) -> int:
    """The reference's per-item seed: first 8 hex digits of md5, as an int, mod 2**32."""
    return int(hashlib.md5(text.encode()).hexdigest()[:8], 16) % (2**32)


def labels(variant: int) -> tuple[str, ...]:
    return ("A", "B", "C", "D") if variant in (1, 2) else ("1", "2", "3", "4")


def build_item(record: dict, variant: int, country: str) -> dict:
    """One CountryRC item: prompt, options, gold label, for a record, variant (1-4) and country."""
    country = canonical(country)
    if country not in BLEND_COUNTRIES:
        raise ValueError(f"{country!r} is not one of the 16 CountryRC countries")
    instruction = variants("countryrc")[variant - 1]
    context, question = record["context"], record["question"]
    rng = random.Random(stable_seed(f"{context}_{question}_{instruction}_{country}"))
    options = rng.sample([c for c in BLEND_COUNTRIES if c != country], 3)
    options.append(country)
    rng.shuffle(options)
    if "{country_dummy}" in context:
        dummy = rng.choice([c for c in options if c != country])
        passage = context.format(country=country, country_dummy=dummy)
    else:
        dummy = None
        passage = context.format(country=country)
    names = labels(variant)
    prompt = instruction.format(passage=passage, question=question, option_a=options[0],
                                option_b=options[1], option_c=options[2], option_d=options[3])
    return {
        "id": str(record["id"]), "country": country, "variant": variant, "prompt": prompt,
        "passage": passage, "question": question, "options": list(options),
        "country_dummy": dummy or "", "gold": names[options.index(country)],
    }


def items(split: str = "test", variant: int = 1,
          countries: tuple[str, ...] = COUNTRYRC_EVAL_COUNTRIES) -> list[dict]:
    """Items of a split for one prompt variant: countries in the given order, records in file
    order within each country (as the reference)."""
    if split not in SPLITS:
        raise ValueError(f"unknown CountryRC split {split!r}; use neur or test")
    chosen = records()[SPLITS[split]]
    return [build_item(r, variant, c) for c in countries for r in chosen]
