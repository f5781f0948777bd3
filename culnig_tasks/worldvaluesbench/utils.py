"""WorldValuesBench, 7 countries, paper Table 7: a system persona and a user question.

Documents come from the per-country majority answers (``culnig data wvs-majority``) and the
question metadata (``culnig_tasks.worldvaluesbench``). The persona is the system message (lm-eval
``description``); without a chat template the reference drops it, and so does this task when
``culnig_chat_template`` is false. Metrics: ``score_c`` (paper Eq. 11) and exact ``acc``.
"""

from functools import partial

from culnig_tasks import loglik, worldvaluesbench
from culnig_tasks.worldvaluesbench import score_c
from culnig_tasks.lmeval import as_dataset, chat_template_on
from culnig_tasks.scoring import exact_first_token


def doc_to_choices(doc: dict) -> list[str]:
    return [str(k) for k in range(doc["min_option"], doc["max_option"] + 1)]


def load(variant: int, split: str = "all", **kwargs):
    docs = worldvaluesbench.items(split, variant)
    if not chat_template_on(kwargs):
        for d in docs:
            d["system"] = ""
    return as_dataset(docs, meta=kwargs)


load_v1, load_v2, load_v3, load_v4 = (partial(load, k) for k in (1, 2, 3, 4))


def process_results(doc: dict, results: list[str]) -> dict:
    return {"score_c": score_c(results[0], doc["gold"], doc["min_option"], doc["max_option"]),
            **exact_first_token(doc["gold"], results)}


# Option log-likelihood protocol (culnigll_*): the same documents as options.
load_ll_v1, load_ll_v2, load_ll_v3, load_ll_v4 = (partial(loglik.load, load, doc_to_choices, k)
                                                  for k in (1, 2, 3, 4))


def process_results_ll(doc: dict, results: list) -> dict:
    """Option log-likelihood protocol: the scale digit with the highest log-likelihood answers.

    Scoring whole labels also handles scale points >= 10 ("10" is two tokens on digit-splitting
    tokenizers such as Llama's and Gemma's; the paper protocol's single generated token can only
    ever be "1" there). ``acc_norm`` divides each option's log-likelihood by its length in
    characters, as lm-eval does.
    """
    pred = doc["labels"][loglik.predicted_index(results)]
    normed = [(float(r[0]) / max(len(c), 1),) for r, c in zip(results, doc["ll_choices"])]
    pred_norm = doc["labels"][loglik.predicted_index(normed)]
    return {"acc": float(pred == doc["gold"]), "acc_norm": float(pred_norm == doc["gold"]),
            "score_c": score_c(pred, doc["gold"], doc["min_option"], doc["max_option"])}
