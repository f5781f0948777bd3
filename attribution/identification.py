"""Identification datasets (paper Sec. 3.3, App. A, Tables 1 and 4) as attribution items.

Built with the same BLEnD and CountryRC builders as the evaluation tasks
(:mod:`culnig_tasks.blend`, :mod:`culnig_tasks.country_rc`: one implementation, two uses):

* ``blend_neur``: BLEnD MCQ rows of the identification topics (Food, Work life, Sport), at most
  5 per (country, question id) in file order; the row's own prompt, answer prefix
  ``{"answer_choice":"``, answer = the gold letter;
* ``blend_ctrl``: the same rows without the question (instruction and options kept), marked
  ``control: true``;
* ``crc_neur``: CountryRC records 0-24 for each target country and prompt variant; answer = the
  target's letter (variants 1-2) or number (3-4).

Every item carries the canonical country name (:mod:`culnig_tasks.countries`).
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from culnig.atomic import atomic_write_text
from culnig.errors import CulnigError

FILES = {"blend_neur": "blend_neur.jsonl", "blend_ctrl": "blend_ctrl.jsonl", "crc_neur": "crc_neur.jsonl"}


def _subsample(rows: list[dict], max_per_country: int | None, seed: int) -> list[dict]:
    """At most ``max_per_country`` rows per country, drawn with ``seed``, file order kept."""
    if max_per_country is None:
        return rows
    by_country: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_country[r["country"]].append(i)
    rng = random.Random(seed)
    keep = set()
    for country in sorted(by_country):
        idx = by_country[country]
        keep.update(idx if len(idx) <= max_per_country else rng.sample(idx, max_per_country))
    return [r for i, r in enumerate(rows) if i in keep]


def blend_items(*, source: str = "auto", countries: Iterable[str] | None = None,
                max_per_country: int | None = None, seed: int = 0) -> tuple[list[dict], list[dict], str]:
    """``(neur, ctrl, origin)`` items from the BLEnD MCQ identification half."""
    from culnig_tasks import blend
    from culnig_tasks.countries import canonical

    docs = blend.mcq_docs("neur", source=source)
    origin = docs[0]["source"] if docs else source
    if countries is not None:
        wanted = {canonical(c) for c in countries}
        docs = [d for d in docs if d["country"] in wanted]
    docs = _subsample(docs, max_per_country, seed)
    neur, ctrl = [], []
    for d in docs:
        base = {"country": d["country"], "answer": d["answer_idx"], "answer_prefix": blend.ANSWER_PREFIX}
        neur.append({"id": f"blend-{d['MCQID']}", "dataset": "blend_neur", "prompt": d["prompt"],
                     "control": False, **base})
        ctrl.append({"id": f"blendctrl-{d['MCQID']}", "dataset": "blend_ctrl",
                     "prompt": d["control_prompt"], "control": True, **base})
    return neur, ctrl, origin


def countryrc_items(*, countries: Sequence[str] | None = None, variants: Sequence[int] = (1, 2, 3, 4),
                    split: str = "neur") -> list[dict]:
    from culnig_tasks import country_rc
    from culnig_tasks.countries import COUNTRYRC_EVAL_COUNTRIES, canonical

    targets = tuple(canonical(c) for c in countries) if countries else COUNTRYRC_EVAL_COUNTRIES
    out = []
    for variant in variants:
        if variant not in (1, 2, 3, 4):
            raise CulnigError(f"CountryRC variant {variant} does not exist; use 1-4")
        for it in country_rc.items(split, variant, targets):
            out.append({"id": f"crc-{split}-{it['id']}-v{variant}-{it['country']}", "dataset": f"crc_{split}",
                        "country": it["country"], "prompt": it["prompt"], "answer": it["gold"],
                        "answer_prefix": "", "control": False})
    return out


def write_items(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def counts_by_country(rows: list[dict]) -> Counter:
    return Counter(r["country"] for r in rows)


def build(out_dir: Path, *, source: str = "auto", countries: Iterable[str] | None = None,
          crc_countries: Sequence[str] | None = None, crc_variants: Sequence[int] = (1, 2, 3, 4),
          max_per_country: int | None = None, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Write the three items files into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    targets = {name: out_dir / f for name, f in FILES.items()}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise CulnigError(f"{existing[0]} already exists; pass --force to replace the items files")
    neur, ctrl, origin = blend_items(source=source, countries=countries,
                                     max_per_country=max_per_country, seed=seed)
    if not neur:
        raise CulnigError("no BLEnD identification rows were found for the chosen countries")
    crc = countryrc_items(countries=crc_countries, variants=crc_variants)
    crc = _subsample(crc, max_per_country, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("blend_neur", neur), ("blend_ctrl", ctrl), ("crc_neur", crc)):
        write_items(targets[name], rows)
    targets_meta = {"blend_source": origin, "counts": {k: len(v) for k, v in
                                                        (("blend_neur", neur), ("blend_ctrl", ctrl), ("crc_neur", crc))}}
    atomic_write_text(out_dir / "items_meta.json", json.dumps(targets_meta, indent=1) + "\n")
    return targets
