"""BLEnD short-answer questions of the test half, in each culture's own language.

One prompt template per item, drawn with seed 42 from that culture's BLEnD templates
(``culnig_tasks.blend.saq_items``). Greedy generation up to 512 tokens; a response is correct when
an annotated answer (count > 0) appears in it after per-language analysis
(``culnig_tasks.saq_judge``). Besides ``acc``, every document reports
``acc_<Country>__<judge>`` so the results name, per culture, the judge that ran.

Subsample keys (lm-eval ``--metadata``): ``blend_saq_countries`` and ``blend_saq_max_docs`` choose
the SAQ documents (``culnig_max_docs``, meant for the one-token tasks, does not apply here).
"""

from functools import partial

from culnig_tasks import blend, saq_judge
from culnig_tasks.lmeval import as_dataset


def load(variant: int = 1, split: str = "test", **kwargs):
    docs = blend.saq_items(split)
    for d in docs:
        d["judge"] = saq_judge.judge_name(d["language"])
        d["gold"] = " | ".join(d["answers"])
    # The SAQ's own subsample keys (generation is costly): blend_saq_countries, blend_saq_max_docs.
    meta = dict(kwargs)
    meta.pop("culnig_max_docs", None)
    if kwargs.get("blend_saq_countries"):
        meta["culnig_countries"] = kwargs["blend_saq_countries"]
    if kwargs.get("blend_saq_max_docs") is not None:
        meta["culnig_max_docs"] = kwargs["blend_saq_max_docs"]
    return as_dataset(docs, meta=meta)


load_v1 = partial(load, 1)


def metric_name(doc: dict) -> str:
    return f"acc_{doc['country'].replace(' ', '_')}__{doc['judge']}"


def process_results(doc: dict, results: list[str]) -> dict:
    ok = float(saq_judge.is_correct(results[0], doc["answers"], doc["language"]))
    return {"acc": ok, metric_name(doc): ok}
