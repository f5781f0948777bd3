"""NormAd (``akhilayerukola/NormAd``, train), paper Table 6, all rows.

Numbers 1/2/3 permuted over yes/no/neutral per item and variant with the reference's stable seed;
gold = the digit (``culnig_tasks.normad``).
"""

from functools import partial

from culnig_tasks import loglik, normad
from culnig_tasks.lmeval import as_dataset, process_exact


def doc_to_choices(row: dict) -> list[str]:
    return ["1", "2", "3"]


def load(variant: int, split: str = "all", **kwargs):
    return as_dataset(normad.items(split, variant), meta=kwargs)


load_v1, load_v2, load_v3, load_v4 = (partial(load, k) for k in (1, 2, 3, 4))
process_results = process_exact


# Option log-likelihood protocol (culnigll_*): the same documents as options.
load_ll_v1, load_ll_v2, load_ll_v3, load_ll_v4 = (partial(loglik.load, load, doc_to_choices, k)
                                                  for k in (1, 2, 3, 4))
