"""MRPC (``nyu-mll/glue`` mrpc, **test** as the reference, 1,725 rows), paper Table 11;
gold = str(label), 1 = paraphrase."""

from functools import partial

from culnig_tasks import glue, loglik
from culnig_tasks.lmeval import as_dataset

CONFIG, SPLIT, FIELDS = "mrpc", "test", ("sentence1", "sentence2")
doc_to_choices = glue.doc_to_choices


def rows() -> list[dict]:
    return glue.rows(CONFIG, SPLIT)


def load(variant: int, **kwargs):
    return as_dataset(glue.docs(CONFIG, SPLIT, FIELDS, variant), meta=kwargs)


load_v1, load_v2, load_v3, load_v4 = (partial(load, k) for k in (1, 2, 3, 4))


# Option log-likelihood protocol (culnigll_*): the same documents as options.
load_ll_v1, load_ll_v2, load_ll_v3, load_ll_v4 = (partial(loglik.load, load, doc_to_choices, k)
                                                  for k in (1, 2, 3, 4))
