"""lm-eval hooks of ``culnig_blendmcq``/``culnigll_blendmcq``: BLEnD multiple-choice, test half.

Rows (built by ``culnig_tasks.blend``) carry their own prompt; gold = ``answer_idx``. The answer
prefix ``{"answer_choice":"`` opens the assistant turn (lm-eval ``gen_prefix``) with a chat
template and is left out without one, as in the reference (``culnig_tasks.lmeval``).
"""

from functools import partial

from culnig_tasks import blend, loglik
from culnig_tasks.lmeval import as_dataset, chat_template_on, process_exact


def doc_to_choices(doc: dict) -> list[str]:
    return ["A", "B", "C", "D"]


def load(variant: int = 1, split: str = "test", **kwargs):
    prefix = blend.ANSWER_PREFIX if chat_template_on(kwargs) else ""
    docs = blend.mcq_docs(split, source=kwargs.get("blend_mcq_source", "auto"))
    for d in docs:
        d["gold"] = d["answer_idx"]
        d["answer_prefix"] = prefix
    meta = dict(kwargs)
    if kwargs.get("blend_mcq_max_docs") is not None:  # one variant only: may want more documents
        meta["culnig_max_docs"] = kwargs["blend_mcq_max_docs"]
    return as_dataset(docs, meta=meta)


load_v1 = partial(load, 1)
process_results = process_exact

# Option log-likelihood protocol (culnigll_blendmcq): the same documents as options.
load_ll_v1 = partial(loglik.load, load, doc_to_choices, 1)
