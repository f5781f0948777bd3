"""WorldValuesBench, 7 countries, paper Table 7: a system persona and a user question.

Documents come from the per-country majority answers (``culnig data wvs-majority``) and the
question metadata (``culnig_tasks.wvs``). The persona is the system message (lm-eval
``description``); without a chat template the reference drops it, and so does this task when
``culnig_chat_template`` is false. Metrics: ``score_c`` (paper Eq. 11) and exact ``acc``.
"""

from functools import partial

from culnig_tasks import wvs
from culnig_tasks.lmeval import as_dataset, chat_template_on
from culnig_tasks.scoring import exact_first_token


def render(variant: int, record: dict) -> tuple[str, str]:
    """(system, user) texts of a majority record for a variant."""
    item = wvs.build_item(record, variant, wvs.question_metadata())
    return item["system"], item["prompt"]


def doc_to_choices(doc: dict) -> list[str]:
    return [str(k) for k in range(doc["min_option"], doc["max_option"] + 1)]


def load(variant: int, split: str = "all", **kwargs):
    docs = wvs.items(split, variant)
    if not chat_template_on(kwargs):
        for d in docs:
            d["system"] = ""
    return as_dataset(docs)


load_v1, load_v2, load_v3, load_v4 = (partial(load, k) for k in (1, 2, 3, 4))


def process_results(doc: dict, results: list[str]) -> dict:
    return {"score_c": wvs.score_c(results[0], doc["gold"], doc["min_option"], doc["max_option"]),
            **exact_first_token(doc["gold"], results)}
