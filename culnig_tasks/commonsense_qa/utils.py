"""CommonsenseQA (``tau/commonsense_qa``, validation, 1,221 rows), paper Table 9.

Options in dataset order lettered A-E; gold = ``answerKey``. Paper protocol: the greedy first
generated token must equal the gold letter exactly.
"""

from functools import partial

from culnig_tasks import loglik
from culnig_tasks.data import load_split
from culnig_tasks.lmeval import as_dataset
from culnig_tasks.prompts import variants
from culnig_tasks.scoring import exact_first_token


def load(**kwargs):
    rows = load_split("tau/commonsense_qa", None, "validation", "commonsense_qa/validation.jsonl")
    return as_dataset([dict(r) for r in rows["validation"]], "validation", meta=kwargs)


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


# Option log-likelihood protocol (culnigll_commonsenseqa): the rows rendered per variant, as options.
def doc_to_choices(doc: dict) -> list[str]:
    return list(doc["option_labels"])


def load_rendered(variant: int, **kwargs):
    """The paper task's documents with the rendered prompt and gold label as fields."""
    docs = [{"id": r["id"], "question": r["question"], "options": r["choices"]["text"],
             "option_labels": r["choices"]["label"], "answerKey": r["answerKey"], "country": "",
             "variant": variant, "prompt": render(variant, r), "gold": doc_to_target(r)}
            for r in load(**kwargs)["validation"]]
    return as_dataset(docs, "validation")  # load() has drawn any subsample already


load_ll_v1, load_ll_v2, load_ll_v3, load_ll_v4 = (partial(loglik.load, load_rendered, doc_to_choices, k)
                                                  for k in (1, 2, 3, 4))
