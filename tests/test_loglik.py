"""The option log-likelihood protocol (``culnigll_*``) beside the paper's first-token protocol.

lm-eval's per-option log-likelihoods are checked against an independent transformers computation
(the prompt and each label tokenised apart, one forward pass, summed log-probabilities of the
label's tokens); the HF-vs-vLLM check runs inside the shared vLLM test of test_tasks.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import run_culnig, single_error

LL_GROUPS = {
    "culnigll_blendmcq": ["blendmcq_loglik_v1"],
    "culnigll_culturalbench": [f"culturalbench_loglik_v{k}" for k in range(1, 5)],
    "culnigll_normad": [f"normad_loglik_v{k}" for k in range(1, 5)],
    "culnigll_worldvaluesbench": [f"worldvaluesbench_loglik_v{k}" for k in range(1, 5)],
    "culnigll_countryrc": [f"countryrc_loglik_v{k}" for k in range(1, 5)],
    "culnigll_commonsenseqa": [f"commonsenseqa_loglik_v{k}" for k in range(1, 5)],
    "culnigll_qnli": [f"qnli_loglik_v{k}" for k in range(1, 5)],
    "culnigll_mrpc": [f"mrpc_loglik_v{k}" for k in range(1, 5)],
}
N_DOCS = 20


def _samples(out: Path, task: str) -> list[dict]:
    files = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    assert files, f"no samples for {task} under {out}"
    return [json.loads(line) for line in files[-1].read_text().splitlines()]


# --- naming and protocol selection -------------------------------------------------------------
def test_loglik_groups_are_their_own_family():
    from lm_eval.tasks import TaskManager

    from culnig.paths import tasks_dir

    tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    assert sorted(tm.match_tasks(["culnigll_*"])) == sorted(LL_GROUPS)
    paper = tm.match_tasks(["culnig_*"])
    assert not [g for g in paper if g.startswith("culnigll_")] and len(paper) == 9
    import yaml

    for path in tasks_dir().glob("*/culnigll_*.yaml"):
        group = yaml.safe_load(path.read_text())
        assert group["task"] == LL_GROUPS[group["group"]], path
        assert {m["metric"] for m in group["aggregate_metric_list"]} >= {"acc", "acc_norm"}


def test_protocol_rewrites_paper_names():
    from culnig.errors import CulnigError
    from culnig.protocols import apply

    names = ["culnig_*", "commonsenseqa_paper_v2", "culnigll_qnli", "hellaswag", "culnig_blendsaq"]
    assert apply(names, "paper") == names
    assert apply(names[:4], "loglik") == ["culnigll_*", "commonsenseqa_loglik_v2", "culnigll_qnli",
                                          "hellaswag"]
    assert apply(names, "both") == ["culnigll_*", "culnig_*", "commonsenseqa_loglik_v2",
                                    "commonsenseqa_paper_v2", "culnigll_qnli", "hellaswag",
                                    "culnig_blendsaq"]
    with pytest.raises(CulnigError, match="culnig_blendsaq"):
        apply(["culnig_blendsaq"], "loglik")


def test_eval_protocol_error_is_one_line(tiny_llama, tmp_path):
    proc = run_culnig("eval", "--model", str(tiny_llama), "--tasks", "culnig_blendsaq",
                      "--protocol", "loglik", "--backend", "hf")
    line = single_error(proc)
    assert "culnig_blendsaq" in line and "--protocol paper or both" in line


# --- scoring --------------------------------------------------------------------------------
def test_wvs_score_c_from_the_most_likely_digit_including_ten():
    import importlib.util

    from culnig.paths import tasks_dir
    from culnig_tasks import loglik, worldvaluesbench

    spec = importlib.util.spec_from_file_location("wvs_utils", tasks_dir() / "worldvaluesbench" /
                                                  "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"prompt": "Question: q\nPlease respond ...", "gold": "10", "min_option": 1,
           "max_option": 10}
    loglik.to_multiple_choice([doc], lambda d: [str(k) for k in range(1, 11)], chat=True)
    assert doc["ll_choices"][-1] == "10" and doc["gold_index"] == 9
    lls = [(-5.0, False)] * 10
    lls[9] = (-1.0, False)  # "10" wins: exact, score_c 1
    assert utils.process_results_ll(doc, lls) == {"acc": 1.0, "acc_norm": 1.0, "score_c": 1.0}
    lls[9], lls[2] = (-5.0, False), (-0.5, False)  # "3" wins
    out = utils.process_results_ll(doc, lls)
    assert out["acc"] == 0.0 and math.isclose(out["score_c"],
                                              worldvaluesbench.score_c("3", "10", 1, 10))
    # acc_norm divides by the option's length: -3.0 over "10" (2 chars) beats -2.0 over "4".
    lls = [(-9.0, False)] * 10
    lls[3], lls[9] = (-2.0, False), (-3.0, False)
    out = utils.process_results_ll(doc, lls)
    assert out["acc"] == 0.0 and out["acc_norm"] == 1.0


def test_separator_only_without_chat_template():
    from culnig_tasks.loglik import separator

    assert separator("Answer with 0 or 1.", chat=True) == ""
    assert separator("Answer with 0 or 1.", chat=False) == "\n"
    assert separator("D. option\n", chat=False) == ""


def _reference_logliks(model, tok, context: str, continuations: list[str]) -> list[float]:
    """Sum of log P(label tokens | prompt), prompt and label tokenised apart, float64 softmax.

    lm-eval's convention: whitespace that ends the prompt (a chat template's newline after the
    assistant header) is scored as the start of every option. It adds the same log-probability
    to all options of a document, so the predicted option is the same either way."""
    import torch

    stripped = context.rstrip()
    context, continuations = stripped, [context[len(stripped):] + c for c in continuations]
    bos = tok.bos_token
    ctx_ids = tok(context, add_special_tokens=not (bos and context.startswith(bos)))["input_ids"]
    out = []
    for cont in continuations:
        cont_ids = tok(cont, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx_ids + cont_ids])
        with torch.no_grad():
            logits = model(ids).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        pos = torch.arange(len(ctx_ids) - 1, len(ctx_ids) + len(cont_ids) - 1)
        out.append(float(logp[pos, torch.tensor(cont_ids)].sum()))
    return out


@pytest.mark.parametrize("chat", ["on", "off"])
def test_option_logliks_equal_an_independent_transformers_computation(data_dir, tiny_llama,
                                                                      tmp_path, chat):
    """20 fixed documents per benchmark (first prompt variant), with and without chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    leaves = [v[0] for v in LL_GROUPS.values()]
    out = tmp_path / "out"
    proc = run_culnig("eval", "--model", str(tiny_llama), "--tasks", ",".join(leaves),
                      "--backend", "hf", "--dtype", "float32", "--limit", str(N_DOCS),
                      "--chat-template", chat, "--output", str(out),
                      env={"CULNIG_DATA_DIR": str(data_dir)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    for leaf in leaves:
        samples = _samples(out, leaf)
        assert len(samples) == min(N_DOCS, len(samples)) and len(samples) >= 3, leaf
        for s in samples:
            args = list(s["arguments"].values())
            context = args[0]["arg_0"]
            assert all(a["arg_0"] == context for a in args)
            conts = [a["arg_1"] for a in args]
            labels = s["doc"]["labels"]
            if chat == "on":
                assert conts == labels, (leaf, conts)  # the label opens the assistant turn
            else:
                assert conts == [("" if context[-1].isspace() else "\n") + x for x in labels]
                assert "<|assistant|>" not in context
            got = [float(r[0]) for r in s["filtered_resps"]]
            want = _reference_logliks(model, tok, context, conts)
            for g, w in zip(got, want):
                assert math.isclose(g, w, rel_tol=1e-4, abs_tol=1e-4), (leaf, s["doc_id"], got, want)
            best = max(range(len(got)), key=got.__getitem__)
            assert s["acc"] == float(best == s["doc"]["gold_index"]), (leaf, s["doc_id"])
            assert labels[s["doc"]["gold_index"]] == s["doc"]["gold"]
        if leaf == "blendmcq_loglik_v1" and chat == "on":
            assert samples[0]["arguments"]["gen_args_0"]["arg_0"].endswith('{"answer_choice":"')
        if leaf.startswith("worldvaluesbench"):
            assert all("score_c" in s for s in samples)
