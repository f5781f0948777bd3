"""CulturalBench-Easy (``kellycyy/CulturalBench``, test), paper Table 5, all rows.

Options shuffled per item and variant with the reference's stable seed and re-lettered A-D
(``culnig_tasks.culturalbench``).
"""

from functools import partial

from culnig_tasks import culturalbench, loglik
from culnig_tasks.lmeval import as_dataset, process_exact


def doc_to_choices(row: dict) -> list[str]:
    return ["A", "B", "C", "D"]


def load(variant: int, split: str = "all", **kwargs):
    return as_dataset(culturalbench.items(split, variant), meta=kwargs)


load_v1, load_v2, load_v3, load_v4 = (partial(load, k) for k in (1, 2, 3, 4))
process_results = process_exact


# Option log-likelihood protocol (culnigll_*): the same documents as options.
load_ll_v1, load_ll_v2, load_ll_v3, load_ll_v4 = (partial(loglik.load, load, doc_to_choices, k)
                                                  for k in (1, 2, 3, 4))
