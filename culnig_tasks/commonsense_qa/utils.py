"""CommonsenseQA (``tau/commonsense_qa``, validation, 1,221 rows), paper Table 9.

Options in dataset order lettered A-E; gold = ``answerKey``. Paper protocol: the greedy first
generated token must equal the gold letter exactly.
"""

from functools import partial

from culnig_tasks.data import load_split
from culnig_tasks.prompts import variants
from culnig_tasks.scoring import exact_first_token


def load(**_):
    return load_split("tau/commonsense_qa", None, "validation", "commonsense_qa/validation.jsonl")


def render(variant: int, doc: dict) -> str:
    options = dict(zip("abcde", doc["choices"]["text"]))
    fields = {f"option_{k}": v for k, v in options.items()}
    return variants("commonsenseqa")[variant - 1].format(question=doc["question"], **fields)


doc_to_text_v1 = partial(render, 1)
doc_to_text_v2 = partial(render, 2)
doc_to_text_v3 = partial(render, 3)
doc_to_text_v4 = partial(render, 4)


def doc_to_target(doc: dict) -> str:
    return doc["answerKey"]


def process_results(doc: dict, results: list[str]) -> dict:
    return exact_first_token(doc_to_target(doc), results)
