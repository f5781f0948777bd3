"""BLEnD (Myung et al., NeurIPS 2024): multiple-choice rows, their control form, short-answer items.

The builder of this folder's tasks (``mcq.py``, ``saq.py``) and of the BLEnD identification items
(``culnig data build``). Multiple-choice rows come from a local hub-schema file, else an offline
build from the annotations (:func:`build_mcq_offline`), else the hub; the first 5 per
(country, ID) are kept and split by topic. Rules and counts: ``README.md`` and docs/data.md.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
import re
from collections import Counter
from functools import lru_cache
from typing import Iterable

from culnig_tasks.countries import BLEND_COUNTRIES, blend_language, canonical, source_name
from culnig.paths import shared_data_dir
from culnig_tasks.data import DataUnavailable, data_file, load_split, local_file
from culnig_tasks.prompts import all_prompts

HUB_ID = "nayeon212/BLEnD"
MCQ_CONFIG = "multiple-choice-questions"
MCQ_LOCAL = ("blend/mc_questions_file.csv", "blend/mc_questions_file.jsonl",
             "blend/multiple-choice-questions.jsonl")
MCQ_COLUMNS = ("MCQID", "ID", "country", "prompt", "choices", "choice_countries", "answer_idx")

CATEGORIES = ("Food", "Work life", "Sport", "Education", "Family", "Holidays/Celebration/Leisure")
SPLIT_TOPICS = {"neur": CATEGORIES[:3], "test": CATEGORIES[3:]}
ROWS_PER_COUNTRY_ID = 5

# BLEnD's own culture order (its country/ISO table), used for MCQ file order and MCQIDs.
MCQ_FILE_ORDER = ("UK", "US", "South_Korea", "Algeria", "China", "Indonesia", "Spain", "Iran",
                  "Mexico", "Assam", "Greece", "Ethiopia", "Northern_Nigeria", "Azerbaijan",
                  "North_Korea", "West_Java")

ANSWER_PREFIX = '{"answer_choice":"'
SAQ_SEED = 42


def instruction() -> str:
    """The MCQ instruction that follows the question (leading space, two newlines)."""
    return all_prompts()["blend_mcq"]["instruction_suffix"]


def control_prompt(choices: dict[str, str]) -> str:
    """The control form: the same instruction and options without the question."""
    body = instruction().lstrip(" ")
    options = "".join(f"{letter}. {choices[letter]}\n" for letter in "ABCD")
    return f"{body}{options}\nAnswer:"


# --- raw BLEnD files ---------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _read_text(kind: str, filename: str, _base: str) -> str:
    path = data_file(HUB_ID, f"data/{kind}/{filename}", f"blend/{kind}/{filename}")
    return path.read_text(encoding="utf-8")


def _text(kind: str, filename: str) -> str:
    return _read_text(kind, filename, str(shared_data_dir()))  # cached per data folder


def annotations(key: str) -> dict:
    """``annotations/<key>_data.json``: question id -> {question, en_question, annotations, idks}."""
    return _parsed_json(_text("annotations", f"{key}_data.json"))


@lru_cache(maxsize=64)
def _parsed_json(text: str) -> dict:
    return json.loads(text)


def questions(key: str) -> tuple[dict, ...]:
    """``questions/<key>_questions.csv`` rows (``ID, Topic, Source, Question, Translation``)."""
    return tuple(csv.DictReader(io.StringIO(_text("questions", f"{key}_questions.csv"))))


def prompt_templates(key: str) -> tuple[dict, ...]:
    """``prompts/<key>_prompts.csv`` rows (``id, English, Translation``), templates with ``{q}``."""
    return tuple(csv.DictReader(io.StringIO(_text("prompts", f"{key}_prompts.csv"))))


def topics() -> dict[str, str]:
    """Question id -> topic, from ``US_questions.csv`` (as the reference)."""
    return {row["ID"]: row["Topic"] for row in questions("US")}


def split_ids(split: str) -> set[str]:
    if split not in SPLIT_TOPICS:
        raise ValueError(f"unknown BLEnD split {split!r}; use neur or test")
    wanted = SPLIT_TOPICS[split]
    return {qid for qid, topic in topics().items() if topic in wanted}


# --- offline MCQ build -------------------------------------------------------------------------
def _words(text: str) -> set[str]:
    return {w for part in text.casefold().split("/") for w in part.split()}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _overlaps(a: str, b: str) -> bool:
    """Two answers count as the same when numerically equal, one contains the other, or they
    share a word (split on whitespace and ``/``), case-insensitively."""
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    a_, b_ = a.casefold(), b.casefold()
    return a_ in b_ or b_ in a_ or bool(_words(a) & _words(b))


def _votes(entry: dict) -> dict[str, int]:
    """English answer -> votes for one question of one culture (``en_answers[0]``, first wins)."""
    votes: dict[str, int] = {}
    for ann in entry.get("annotations", []):
        en = ann.get("en_answers") or []
        if en and en[0] and en[0] not in votes:
            votes[en[0]] = int(ann.get("count", 0))
    return votes


def _rejected(entry: dict) -> bool:
    """No English answer at all, or more than 2 annotators (a majority of 5) said not-applicable."""
    idks = entry.get("idks") or {}
    na = idks.get("not-applicable", 0)
    return not _votes(entry) or (isinstance(na, (int, float)) and na > 2)


def _question_for(template: str, key: str) -> str:
    place = f"the {key}" if key in ("US", "UK") else key.replace("_", " ")
    return re.sub(r"\b(?:the )?US\b", place, template)


def build_mcq_offline(limit_per_pair: int | None = ROWS_PER_COUNTRY_ID) -> list[dict]:
    """Hub-schema MCQ rows built from the annotation files (rules: docs/data.md).

    ``limit_per_pair`` stops after that many rows per (country, ID); since selection keeps the
    first 5 in file order, the default gives the same selected rows as building everything.
    """
    data = {key: annotations(key) for key in MCQ_FILE_ORDER}
    rows: list[dict] = []
    for qrow in questions("US"):
        qid = qrow["ID"]
        if any(qid not in data[key] or _rejected(data[key][qid]) for key in MCQ_FILE_ORDER):
            continue
        votes = {key: _votes(data[key][qid]) for key in MCQ_FILE_ORDER}
        gold: dict[str, list[str]] = {}
        distractors: dict[str, dict[str, str]] = {}
        for key in MCQ_FILE_ORDER:
            top = max(votes[key].values())
            gold[key] = [a for a, v in votes[key].items() if v == top]
            pool = sorted(((v, i, j, a, other)
                           for i, other in enumerate(MCQ_FILE_ORDER) if other != key
                           for j, (a, v) in enumerate(votes[other].items()) if v >= 2),
                          key=lambda t: (-t[0], t[1], t[2]))
            chosen: dict[str, str] = {}
            for _, _, _, answer, other in pool:
                if other in chosen:
                    continue
                if any(_overlaps(answer, own) for own in votes[key]):
                    continue
                if any(_overlaps(answer, c) for c in chosen.values()):
                    continue
                chosen[other] = answer
            distractors[key] = chosen
        if min(len(d) for d in distractors.values()) < 3:
            continue  # BLEnD pads with GPT-4 dummy options here; offline the question is dropped
        counter = 0
        for key in MCQ_FILE_ORDER:
            head = _question_for(qrow["Question"], key) + instruction()
            made = 0
            for answer in gold[key]:
                for combo in itertools.combinations(distractors[key].items(), 3):
                    options = sorted([(text, other) for other, text in combo] + [(answer, key)])
                    letters = "ABCD"
                    choices = {letters[i]: text for i, (text, _) in enumerate(options)}
                    countries = {letters[i]: c for i, (_, c) in enumerate(options)}
                    gold_letter = letters[[t for t, _ in options].index(answer)]
                    body = "".join(f"{letters[i]}. {text}\n" for i, (text, _) in enumerate(options))
                    rows.append({
                        "MCQID": f"{qid}_{counter}", "ID": qid, "country": key,
                        "prompt": head + body + "\nAnswer:",
                        "choices": json.dumps(choices, indent=4, ensure_ascii=False),
                        "choice_countries": json.dumps(countries, indent=4, ensure_ascii=False),
                        "answer_idx": gold_letter,
                    })
                    counter += 1
                    made += 1
                    if limit_per_pair is not None and made >= limit_per_pair:
                        break
                if limit_per_pair is not None and made >= limit_per_pair:
                    break
    return rows


@lru_cache(maxsize=4)
def _offline_cached(_base: str) -> tuple[dict, ...]:
    return tuple(build_mcq_offline())


def _annotations_local() -> bool:
    return local_file("blend/annotations/US_data.json") is not None and \
        local_file("blend/questions/US_questions.csv") is not None


def mcq_rows(source: str = "auto") -> tuple[list[dict], str]:
    """All MCQ rows in hub schema and where they came from: ``local``, ``offline`` or ``hub``."""
    if source not in ("auto", "hub", "offline", "local"):
        raise ValueError(f"blend_mcq_source must be auto, local, hub or offline, not {source!r}")
    if source in ("auto", "local"):
        for relative in MCQ_LOCAL:
            if local_file(relative) is not None:
                ds = load_split(HUB_ID, MCQ_CONFIG, "test", relative)["test"]
                return [dict(r) for r in ds], "local"
        if source == "local":
            raise DataUnavailable(f"no local BLEnD MCQ file ({' or '.join(MCQ_LOCAL)}) under "
                                  "CULNIG_DATA_DIR")
    if source == "offline" or (source == "auto" and _annotations_local()):
        return [dict(r) for r in _offline_cached(str(shared_data_dir()))], "offline"
    ds = load_split(HUB_ID, MCQ_CONFIG, "test", MCQ_LOCAL)["test"]
    return [dict(r) for r in ds], "hub"


def select_mcq(rows: Iterable[dict], split: str | None,
               per_pair: int = ROWS_PER_COUNTRY_ID) -> list[dict]:
    """The first ``per_pair`` rows per (country, ID) in file order, then the split's topics."""
    wanted = split_ids(split) if split else None
    seen: Counter = Counter()
    out = []
    for row in rows:
        pair = (row["country"], row["ID"])
        if seen[pair] >= per_pair:
            continue
        seen[pair] += 1
        if wanted is None or row["ID"] in wanted:
            out.append(row)
    return out


def mcq_docs(split: str = "test", source: str = "auto") -> list[dict]:
    """Evaluation/identification documents: the hub row plus canonical country, topic, split,
    the parsed options and the control prompt."""
    rows, origin = mcq_rows(source)
    docs = []
    topic_of = topics()
    for row in select_mcq(rows, split):
        choices = row["choices"]
        choices = json.loads(choices) if isinstance(choices, str) else dict(choices)
        docs.append({
            "MCQID": row["MCQID"], "ID": row["ID"], "country": canonical(row["country"]),
            "blend_country": row["country"], "topic": topic_of.get(row["ID"], ""),
            "split": split, "prompt": row["prompt"], "answer_idx": row["answer_idx"],
            "choices": json.dumps(choices, ensure_ascii=False),
            "control_prompt": control_prompt(choices), "source": origin,
        })
    return docs


# --- short-answer items ------------------------------------------------------------------------
def saq_answers(entry: dict) -> list[str]:
    """Local-language answers of annotations with count > 0, de-duplicated, first-seen order."""
    out: list[str] = []
    for ann in entry.get("annotations", []):
        if ann.get("count", 0) > 0:
            for a in ann.get("answers", []):
                if a not in out:
                    out.append(a)
    return out


_PLACEHOLDER = re.compile(r"\{[^{}\s]{1,3}\}")


def saq_items(split: str = "test", seed: int = SAQ_SEED,
              countries: Iterable[str] = BLEND_COUNTRIES, fix_placeholders: bool = True) -> list[dict]:
    """BLEnD short-answer items of ``split`` in each culture's language (docs/data.md).

    Two of Algeria's Arabic templates (``pers-1``, ``pers-2``) spell the placeholder ``{س}`` /
    ``{ف}`` instead of ``{q}``; the reference's ``replace("{q}", question)`` then leaves the
    question out (44 of Algeria's test items). culnig inserts the question there
    (``fix_placeholders=False`` reproduces the reference). The draws are the same either way.

    Draws happen for every culture in the reference order even when ``countries`` selects fewer,
    so a culture's prompts do not depend on which others are asked for.
    """
    wanted_ids = split_ids(split)
    selected = {canonical(c) for c in countries}
    rng = random.Random(seed)
    items = []
    for country in BLEND_COUNTRIES:
        key = source_name(country, "blend")
        templates = prompt_templates(key)
        texts = [t["Translation"] for t in templates]
        for qid, entry in annotations(key).items():
            if qid not in wanted_ids:
                continue
            answers = saq_answers(entry)
            if not answers:
                continue
            index = rng.choice(range(len(texts)))  # the same draw as rng.choice(texts)
            if country not in selected:
                continue
            template = texts[index]
            if "{q}" not in template and fix_placeholders:
                template = _PLACEHOLDER.sub("{q}", template, count=1)
            items.append({
                "ID": qid, "country": country, "blend_country": key,
                "language": blend_language(country), "topic": topics().get(qid, ""),
                "question": entry["question"], "en_question": entry.get("en_question", ""),
                "prompt_id": templates[index]["id"],
                "prompt": template.replace("{q}", entry["question"]),
                "answers": answers,
            })
    return items
