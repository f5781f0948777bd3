"""WorldValuesBench: per-country majority answers to WVS Wave 7 value questions, and score_c.

The builder of this folder's task (``utils.py``) and of ``culnig data wvs-majority``
(:func:`build_majority`: majority answers and KL ranking from the public TSVs, since the WVS
answers cannot be shipped). :func:`score_c` is paper Eq. 11 in [0, 1]. Rules: ``README.md`` and
docs/data.md.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

from culnig_tasks.countries import WVB_COUNTRIES, canonical, source_name
from culnig_tasks.data import DataUnavailable, local_file
from culnig_tasks.prompts import all_prompts

HUB_ID = "Demon702/WorldValuesBench"
METADATA_LOCAL = "worldvaluesbench/question_metadata.json"
MAJORITY_LOCAL = "worldvaluesbench/country_majority.jsonl"
MAJORITY_ENV = "CULNIG_WVB_MAJORITY"
MIN_ANSWERS = 10
N_IDENTIFICATION = 40


def question_metadata(path: str | Path | None = None) -> dict:
    p = Path(path) if path else local_file(METADATA_LOCAL)
    if p is None or not p.is_file():
        raise DataUnavailable(
            f"dataset {HUB_ID} question_metadata.json is not available; set CULNIG_DATA_DIR to "
            f"a folder holding {METADATA_LOCAL}")
    return json.loads(p.read_text(encoding="utf-8"))


def value_questions(metadata: dict) -> list[str]:
    """Q1 .. Q259 present in the metadata, in question-number order (the reference's loop)."""
    return [f"Q{i}" for i in range(1, 260) if f"Q{i}" in metadata]


def kl_divergence(country: Counter, overall: Counter) -> float:
    """KL(country || overall) over answers, skipping answers missing on either side."""
    nc, na = sum(country.values()), sum(overall.values())
    total = 0.0
    for answer in set(country) | set(overall):
        p, q = country.get(answer, 0) / nc, overall.get(answer, 0) / na
        if p > 0 and q > 0:
            total += p * math.log(p / q)
    return total


def _answers(column) -> list[int]:
    """Integer answers of a value column in row order (blank/NaN dropped, "1.0" -> 1)."""
    out = []
    for value in column:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        text = str(value).strip()
        if not text:
            continue
        try:
            out.append(int(float(text)))
        except ValueError:
            continue
    return out


def _majority(answers: list[int]) -> int:
    counts = Counter(answers)  # insertion order = first appearance in file order
    return max(counts, key=counts.get)


def build_majority(value_tsv: str | Path, demographic_tsv: str | Path,
                   metadata: dict | None = None, countries=WVB_COUNTRIES,
                   min_answers: int = MIN_ANSWERS,
                   n_identification: int = N_IDENTIFICATION) -> list[dict]:
    """Per-country majority answers and KL ranking (rules: docs/data.md)."""
    import pandas as pd

    metadata = metadata if metadata is not None else question_metadata()
    values = pd.read_csv(value_tsv, sep="\t", dtype=str, keep_default_na=True)
    demo = pd.read_csv(demographic_tsv, sep="\t", dtype=str, usecols=["D_INTERVIEW", "B_COUNTRY"])
    if "D_INTERVIEW" not in values.columns:
        raise DataUnavailable(f"{value_tsv}: no D_INTERVIEW column; expected a WorldValuesBench "
                              "<split>_value_qa.tsv")
    qids = [q for q in value_questions(metadata) if q in values.columns]
    overall = {q: Counter(_answers(values[q])) for q in qids}
    overall = {q: c for q, c in overall.items() if sum(c.values()) >= min_answers}
    out: list[dict] = []
    for country in countries:
        name = source_name(country, "wvs")
        interviews = set(demo.loc[demo["B_COUNTRY"] == name, "D_INTERVIEW"])
        part = values[values["D_INTERVIEW"].isin(interviews)]
        per_q = []
        for q in qids:
            answers = _answers(part[q])
            if len(answers) < min_answers or q not in overall:
                continue
            dist = Counter(answers)
            per_q.append((q, dist, kl_divergence(dist, overall[q]), _majority(answers)))
        per_q.sort(key=lambda t: -t[2])  # stable: ties keep question order
        for rank, (q, dist, kl, major) in enumerate(per_q):
            out.append({
                "country": canonical(country), "wvs_country": name, "question_id": q,
                "majority": major, "n_answers": sum(dist.values()), "kl": kl, "rank": rank,
                "split": "neur" if rank < n_identification else "test",
                "distribution": {str(k): v for k, v in sorted(dist.items())},
            })
    return out


def write_majority(records: list[dict], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                   encoding="utf-8")
    tmp.replace(out)
    return out


def majority_path() -> Path:
    env = os.environ.get(MAJORITY_ENV)
    path = Path(env).expanduser() if env else local_file(MAJORITY_LOCAL)
    if path is None or not path.is_file():
        raise DataUnavailable(
            f"dataset {HUB_ID}: per-country majority answers not found; build them from the "
            "WorldValuesBench TSVs with `culnig data wvs-majority --wvb-dir DIR --out FILE` and "
            f"set {MAJORITY_ENV}=FILE (or put it at CULNIG_DATA_DIR/{MAJORITY_LOCAL})")
    return path


def load_majority(path: str | Path | None = None) -> list[dict]:
    p = Path(path) if path else majority_path()
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def system_and_user(variant: int) -> tuple[str, str]:
    """Variant k = 2 * system index + user index + 1 (prompts.json)."""
    p = all_prompts()["worldvaluesbench"]
    s, u = divmod(variant - 1, 2)
    return p["system"][s], p["user"][u]


def build_item(record: dict, variant: int, metadata: dict) -> dict:
    q = metadata[record["question_id"]]
    lo, hi = int(q["answer_scale_min"]), int(q["answer_scale_max"])
    system, user = system_and_user(variant)
    return {
        "id": record["question_id"], "country": canonical(record["country"]),
        "wvs_country": record["wvs_country"], "variant": variant, "split": record.get("split", ""),
        "system": system.format(country=record["wvs_country"]),
        "prompt": user.format(question=q["question"], min_option=lo, max_option=hi),
        "min_option": lo, "max_option": hi, "gold": str(record["majority"]),
    }


def items(split: str = "all", variant: int = 1, path: str | Path | None = None) -> list[dict]:
    metadata = question_metadata()
    recs = load_majority(path)
    if split != "all":
        recs = [r for r in recs if r["split"] == split]
    return [build_item(r, variant, metadata) for r in recs]


def score_c(prediction: str, gold: int | str, lo: int, hi: int) -> float:
    """Paper Eq. 11 (README.md); the raw decoded output, no strip."""
    if not prediction.isdigit():
        return 0.0
    try:
        p = int(prediction)
    except ValueError:  # e.g. superscript digits pass isdigit() but are no number
        return 0.0
    g = int(gold)
    if p < lo or p > hi:
        return 0.0
    return 1.0 - abs(p - g) / max(abs(lo - g), abs(hi - g))
