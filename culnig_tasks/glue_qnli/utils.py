"""QNLI (``nyu-mll/glue`` qnli, validation, 5,463 rows), paper Table 10; gold = str(label),
0 = entailment."""

from functools import partial

from culnig_tasks import loglik
from culnig_tasks.data import load_split
from culnig_tasks.lmeval import as_dataset, process_exact
from culnig_tasks.prompts import variants


def rows() -> list[dict]:
    return [dict(r) for r in load_split("nyu-mll/glue", "qnli", "validation",
                                        "glue/qnli_validation.jsonl")["validation"]]


def render(variant: int, doc: dict) -> str:
    return variants("qnli")[variant - 1].format(question=doc["question"], sentence=doc["sentence"])


def gold(doc: dict) -> str:
    return str(doc["label"])


def doc_to_choices(doc: dict) -> list[str]:
    return ["0", "1"]


def load(variant: int, **kwargs):
    docs = [{"idx": r["idx"], "question": r["question"], "sentence": r["sentence"],
             "label": r["label"], "country": "", "variant": variant,
             "prompt": render(variant, r), "gold": gold(r)} for r in rows()]
    return as_dataset(docs, meta=kwargs)


load_v1, load_v2, load_v3, load_v4 = (partial(load, k) for k in (1, 2, 3, 4))
process_results = process_exact


# Option log-likelihood protocol (culnigll_*): the same documents as options.
load_ll_v1, load_ll_v2, load_ll_v3, load_ll_v4 = (partial(loglik.load, load, doc_to_choices, k)
                                                  for k in (1, 2, 3, 4))
