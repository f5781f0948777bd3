"""MRPC (``nyu-mll/glue`` mrpc, **test** as the reference, 1,725 rows), paper Table 11;
gold = str(label), 1 = paraphrase."""

from functools import partial

from culnig_tasks import loglik
from culnig_tasks.data import load_split
from culnig_tasks.lmeval import as_dataset, process_exact
from culnig_tasks.prompts import variants


def rows() -> list[dict]:
    return [dict(r) for r in load_split("nyu-mll/glue", "mrpc", "test",
                                        "glue/mrpc_test.jsonl")["test"]]


def render(variant: int, doc: dict) -> str:
    return variants("mrpc")[variant - 1].format(sentence1=doc["sentence1"],
                                                sentence2=doc["sentence2"])


def gold(doc: dict) -> str:
    return str(doc["label"])


def doc_to_choices(doc: dict) -> list[str]:
    return ["0", "1"]


def load(variant: int, **kwargs):
    docs = [{"idx": r["idx"], "sentence1": r["sentence1"], "sentence2": r["sentence2"],
             "label": r["label"], "country": "", "variant": variant,
             "prompt": render(variant, r), "gold": gold(r)} for r in rows()]
    return as_dataset(docs, meta=kwargs)


load_v1, load_v2, load_v3, load_v4 = (partial(load, k) for k in (1, 2, 3, 4))
process_results = process_exact


# Option log-likelihood protocol (culnigll_*): the same documents as options.
load_ll_v1, load_ll_v2, load_ll_v3, load_ll_v4 = (partial(loglik.load, load, doc_to_choices, k)
                                                  for k in (1, 2, 3, 4))
