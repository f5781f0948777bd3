"""CountryRC, test half (records 25-49) x 8 countries = 200 items per variant, paper Table 8.

Variants 1-2 letter the options A-D, 3-4 number them 1-4 (``culnig_tasks.country_rc``).
"""

from functools import partial

from culnig_tasks import country_rc, loglik
from culnig_tasks.lmeval import as_dataset, process_exact


def doc_to_choices(doc: dict) -> list[str]:
    return list(country_rc.labels(doc["variant"]))


def load(variant: int, split: str = "test", **kwargs):
    return as_dataset(country_rc.items(split, variant), meta=kwargs)


load_v1, load_v2, load_v3, load_v4 = (partial(load, k) for k in (1, 2, 3, 4))
process_results = process_exact


# Option log-likelihood protocol (culnigll_*): the same documents as options.
load_ll_v1, load_ll_v2, load_ll_v3, load_ll_v4 = (partial(loglik.load, load, doc_to_choices, k)
                                                  for k in (1, 2, 3, 4))
