"""The lm-eval task suite: every benchmark of the paper, its prompts, its data and its scoring.

Real data from ../shared/data (BLEnD, CountryRC, CommonsenseQA, GLUE, WorldValuesBench question
metadata); schema-exact synthetic fixtures for the hub-only CulturalBench and NormAd and for the
WorldValuesBench participant TSVs (tests/fixtures/). All of them are put in one data folder
(symlinks) that CULNIG_DATA_DIR points to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, REPO, run_culnig, single_error

GROUPS = {
    "culnig_blendmcq": ["blendmcq_paper_v1"],
    "culnig_blendsaq": ["blendsaq_paper_v1"],
    "culnig_culturalbench": [f"culturalbench_paper_v{k}" for k in range(1, 5)],
    "culnig_normad": [f"normad_paper_v{k}" for k in range(1, 5)],
    "culnig_worldvaluesbench": [f"worldvaluesbench_paper_v{k}" for k in range(1, 5)],
    "culnig_countryrc": [f"countryrc_paper_v{k}" for k in range(1, 5)],
    "culnig_commonsenseqa": [f"commonsenseqa_paper_v{k}" for k in range(1, 5)],
    "culnig_qnli": [f"qnli_paper_v{k}" for k in range(1, 5)],
    "culnig_mrpc": [f"mrpc_paper_v{k}" for k in range(1, 5)],
}
LEAVES = [leaf for leaves in GROUPS.values() for leaf in leaves]


def _samples(out: Path, task: str) -> list[dict]:
    files = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    assert files, f"no samples for {task} under {out}"
    return [json.loads(line) for line in files[-1].read_text().splitlines()]


def _results(out: Path) -> dict:
    return json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())


# --- task registry -----------------------------------------------------------------------------
def test_task_manager_finds_every_task_and_groups_match_only_groups():
    from lm_eval.tasks import TaskManager

    from culnig.paths import tasks_dir

    tm = TaskManager(include_path=str(tasks_dir()))
    matched = tm.match_tasks(["culnig_*"])
    assert sorted(matched) == sorted(GROUPS), matched  # each benchmark once, no leaf
    assert set(LEAVES) <= set(tm.all_subtasks)
    assert not [leaf for leaf in LEAVES if leaf.startswith("culnig_")]
    assert set(GROUPS) <= set(tm.all_groups)
    import yaml

    for path in tasks_dir().glob("*/culnig_*.yaml"):
        group = yaml.safe_load(path.read_text())
        assert group["task"] == GROUPS[group["group"]], path
        assert group["aggregate_metric_list"][0]["weight_by_size"] is False


def test_lm_eval_validate_accepts_every_task():
    from culnig.paths import tasks_dir

    proc = subprocess.run(
        [str(Path(sys.executable).with_name("lm-eval")), "validate", "--tasks",
         ",".join([*GROUPS, *LEAVES]), "--include_path", str(tasks_dir())],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "All tasks found and valid" in proc.stdout


# --- prompts, exactly (Tables 4-11) --------------------------------------------------------------
EXPECTED = {
    # BLEnD MCQ test, first row (offline build): the row's own prompt (Table 4 format).
    "blendmcq_paper_v1": (
        "What is a popular afterschool sport for elementary schools in the UK? Without any "
        "explanation, choose only one from the given alphabet choices(e.g., A, B, C). Provide as "
        'JSON format: {"answer_choice":""}\n\n'
        "A. basketball\nB. football\nC. hide and seek\nD. soccer\n\nAnswer:", "D"),
    # BLEnD SAQ, first item (USA, Al-en-16): template inst-6 drawn with seed 42.
    "blendsaq_paper_v1": (
        "Provide a single answer to the following short-answer question in default, or up to "
        "three if needed, without explanations.\n\n"
        "Question: At what age do kids start preschool in the US? (Provide Arabic numerals "
        "(e.g., 12) only.)\nAnswer:", "4 | April | 3 | March"),
    # CulturalBench fixture row 0 (answer A = "Roast turkey"), options reshuffled by the seed.
    "culturalbench_paper_v1": (
        "To answer the following multiple-choice question, you should choose one option only "
        "among A,B,C,D. Do not output any other things.\n"
        "Question: In the United States, what do people usually eat on Thanksgiving?\n"
        "A. Dumplings\nB. Roast turkey\nC. Kimchi stew\nD. Paella", "B"),
    # NormAd fixture row 0 (gold yes): numbers permuted by the seed, listed in numeric order.
    "normad_paper_v1": (
        "You will be given a short story involving 2 or more characters about everyday "
        "situations. You will also be given a country of relevance. Read the story and determine "
        "if the character\u2019s behavior aligns with the social norms of that country.\n"
        "Only consider the provided context and country. Do not include any outside assumptions. "
        "Respond **only** with the number 1, 2, or 3.\n\n"
        "country: united_states_of_america\n"
        "Story: At a dinner at her friend's house, Emma offered to help clear the table after the "
        "meal. Was what Emma did socially acceptable?\n"
        "Options: 1: neutral, 2: no, 3: yes\n", "3"),
    # WorldValuesBench variant 4 = system[1] + user[1]; China's top-KL question (Q2), majority 1.
    "worldvaluesbench_paper_v4": (
        "Question: On a scale of 1 to 4, 1 meaning 'Very important' and 4 meaning 'Not at all "
        "important', how important are friends in your life?\n"
        "Your answer should be a single digit between 1 and 4. Do not add any other information.",
        "1"),
    # CountryRC variant 3 (numbered), record 25, China.
    "countryrc_paper_v3": (
        "From the information provided in the passage, choose the best answer to the question. "
        "You must select a single choice: 1, 2, 3, or 4, and do not include any other text.\n\n"
        "passage: Oliver spent the fall semester abroad at a university in China. He took courses "
        "in economics and statistics, and made many international friends. The academic "
        "environment helped him broaden his perspective.\n"
        "question: Where did Oliver study during the fall semester?\n"
        "1. China\n2. Algeria\n3. Greece\n4. Nigeria\n", "1"),
    "commonsenseqa_paper_v2": (
        "Choose one answer among A, B, C, D, and E for the question below. Do not include any "
        "explanation or extra content.\n"
        "Question: A revolving door is convenient for two direction travel, but it also serves as "
        "a security measure at a what?\n"
        "A. bank\nB. library\nC. department store\nD. mall\nE. new york", "A"),
    "qnli_paper_v2": (
        "Classify the relationship between the following question and context.\n"
        "Question: What came into force after the new constitution was herald?\n"
        "Context: As of that day, the new constitution heralding the Second Republic came into "
        "force.\n"
        "Label as:\n0: entailment \u2013 the question is supported by the context\n"
        "1: not_entailment \u2013 the question is not supported by the context\n"
        "Please respond with either 0 or 1 only.", "0"),
    "mrpc_paper_v4": (
        "Compare the following two sentences. If they convey the same meaning regardless of "
        "differences in wording, classify them as paraphrases.\n"
        "Sentence 1: PCCW 's chief operating officer , Mike Butcher , and Alex Arena , the chief "
        "financial officer , will report directly to Mr So .\n"
        "Sentence 2: Current Chief Operating Officer Mike Butcher and Group Chief Financial "
        "Officer Alex Arena will report to So .\n"
        "Respond with:\n1 \u2013 if they are semantically equivalent (paraphrase)\n"
        "0 \u2013 if they are not semantically equivalent\nOnly use 0 or 1 as your answer.", "1"),
}


@pytest.fixture(scope="session")
def loaded_tasks(data_dir):
    from lm_eval.tasks import TaskManager

    from culnig.paths import tasks_dir

    with pytest.MonkeyPatch.context() as mp:  # documents load when the tasks are built
        mp.setenv("CULNIG_DATA_DIR", str(data_dir))
        tm = TaskManager(include_path=str(tasks_dir()))
        extra = ["countryrc_paper_v1", "worldvaluesbench_paper_v1"]
        return tm.load([*EXPECTED, *extra])["tasks"]


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_rendered_prompt_is_exact(loaded_tasks, task):
    t = loaded_tasks[task]
    doc = next(iter(t.eval_docs))
    text, target = EXPECTED[task]
    # What the model sees without a chat template (no few-shot, no description for these).
    if task != "worldvaluesbench_paper_v4":
        ctx = t.fewshot_context(doc, 0, gen_prefix=t.doc_to_prefix(doc))
        assert ctx == text + (t.doc_to_prefix(doc) or "")
    assert t.doc_to_text(doc) == text
    assert str(t.doc_to_target(doc)) == target


def test_countryrc_dummy_country_prompt(loaded_tasks):
    t = loaded_tasks["countryrc_paper_v1"]
    doc = next(d for d in t.eval_docs if d["country_dummy"])
    assert (doc["id"], doc["country"], doc["country_dummy"]) == ("40", "China", "Azerbaijan")
    assert t.doc_to_text(doc) == (
        "Read the passage carefully and choose a single option from A, B, C, D to answer the "
        "question. Do not output any other text.\n\n"
        "passage: Chloe had family in both Azerbaijan and China. For the holidays, she chose to "
        "visit her relatives in China, since she hadn\u2019t seen them in years.\n"
        "question: Which country did Chloe visit for the holidays?\n"
        "A. Azerbaijan\nB. Nigeria\nC. USA\nD. China\n")
    assert t.doc_to_target(doc) == "D"


def _hf_like_template(tok):
    """How lm-eval's HF/vLLM wrappers render chat histories."""
    def render(history, add_generation_prompt=True):
        return tok.apply_chat_template(history, tokenize=False,
                                       add_generation_prompt=add_generation_prompt,
                                       continue_final_message=not add_generation_prompt)
    return render


def test_chat_template_places_prefix_and_system_as_the_reference(loaded_tasks):
    """BLEnD: template(user) + '{"answer_choice":"'; WVB: template(system, user)."""
    from culnig.testing.tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    render = _hf_like_template(tok)
    t = loaded_tasks["blendmcq_paper_v1"]
    doc = next(iter(t.eval_docs))
    ctx = t.fewshot_context(doc, 0, apply_chat_template=True, chat_template=render,
                            gen_prefix=t.doc_to_prefix(doc))
    reference = tok.apply_chat_template([{"role": "user", "content": doc["prompt"]}],
                                        tokenize=False, add_generation_prompt=True)
    assert ctx == reference + '{"answer_choice":"'
    t = loaded_tasks["worldvaluesbench_paper_v4"]
    doc = next(iter(t.eval_docs))
    assert doc["system"] == "Behave as if you are from China."
    ctx = t.fewshot_context(doc, 0, apply_chat_template=True, chat_template=render)
    reference = tok.apply_chat_template(
        [{"role": "system", "content": doc["system"]}, {"role": "user", "content": doc["prompt"]}],
        tokenize=False, add_generation_prompt=True)
    assert ctx == reference


def test_without_chat_template_blend_has_no_prefix_and_wvb_no_system(use_data):
    """The reference uses the plain user prompt for template-less models."""
    import importlib.util

    from culnig.paths import tasks_dir

    def utils(hooks):
        spec = importlib.util.spec_from_file_location(f"u_{hooks}", tasks_dir() / hooks)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    off = {"culnig_chat_template": False}
    assert {d["answer_prefix"] for d in utils("blend/mcq.py").load(1, **off)["test"]} == {""}
    assert {d["answer_prefix"] for d in utils("blend/mcq.py").load(1)["test"]} == {'{"answer_choice":"'}
    assert {d["system"] for d in utils("worldvaluesbench/utils.py").load(3, **off)["test"]} == {""}
    assert {d["system"] for d in utils("worldvaluesbench/utils.py").load(3)["test"]} == {
        "Behave as if you are from China.", "Behave as if you are from Great Britain.",
        "Behave as if you are from United States."}


# --- real data ---------------------------------------------------------------------------------
def test_blend_mcq_offline_counts_and_selection(use_data):
    from culnig_tasks import blend

    neur, test = blend.mcq_docs("neur"), blend.mcq_docs("test")
    assert (len(neur), len(test)) == (13404, 9851)
    assert (len({d["ID"] for d in neur}), len({d["ID"] for d in test})) == (171, 126)
    assert {d["source"] for d in test} == {"offline"}
    assert {d["topic"] for d in test} == {"Education", "Family", "Holidays/Celebration/Leisure"}
    assert {d["topic"] for d in neur} == {"Food", "Work life", "Sport"}
    per_country = Counter(d["country"] for d in test)
    assert len(per_country) == 16 and min(per_country.values()) == 595
    assert max(Counter((d["country"], d["ID"]) for d in neur + test).values()) == 5
    for d in test:
        choices = json.loads(d["choices"])
        assert sorted(choices) == ["A", "B", "C", "D"] and len(set(choices.values())) == 4
        assert d["answer_idx"] in choices
        assert d["prompt"].endswith("".join(f"{k}. {v}\n" for k, v in choices.items()) + "\nAnswer:")
        question = d["prompt"].split(" Without any explanation")[0]
        assert question and question not in d["control_prompt"]
        assert d["control_prompt"] == (
            "Without any explanation, choose only one from the given alphabet choices(e.g., A, B, "
            'C). Provide as JSON format: {"answer_choice":""}\n\n'
            + "".join(f"{k}. {v}\n" for k, v in choices.items()) + "\nAnswer:")


def test_blend_mcq_selection_keeps_first_five_per_country_and_id():
    from culnig_tasks import blend

    rows = [{"MCQID": f"Al-en-17_{i}", "ID": "Al-en-17", "country": c} for i, c in
            enumerate(["UK"] * 7 + ["US"] * 2)]
    rows += [{"MCQID": "Al-en-01_0", "ID": "Al-en-01", "country": "UK"}]  # Food: identification
    picked = blend.select_mcq(rows, None)
    assert [r["MCQID"] for r in picked] == [f"Al-en-17_{i}" for i in (0, 1, 2, 3, 4, 7, 8)] + \
        ["Al-en-01_0"]


def test_blend_saq_items(use_data):
    from culnig_tasks import blend

    items = blend.saq_items("test")
    counts = Counter(d["country"] for d in items)
    assert len(items) == 3676
    assert counts == {"Indonesia": 239, "Assam": 236, "USA": 235, "China": 235, "UK": 234,
                      "Spain": 234, "Mexico": 233, "Greece": 233, "Ethiopia": 232,
                      "Azerbaijan": 231, "South Korea": 230, "Iran": 229, "West Java": 224,
                      "Algeria": 220, "North Korea": 216, "Nigeria": 215}
    assert [d["prompt_id"] for d in items[:3]] == ["inst-6", "inst-2", "inst-1"]
    china = next(d for d in items if d["country"] == "China")
    assert (china["prompt_id"], china["language"]) == ("pers-1", "zh")
    assert china["prompt"] == "假设你来自中国。 在中国，孩子们几岁开始上幼儿园？（只提供阿拉伯数字（例如，12）。）"
    assert all(d["question"] in d["prompt"] and d["answers"] for d in items)
    # A culture's draws do not depend on which cultures are asked for.
    only = blend.saq_items("test", countries=["China"])
    assert [d["prompt"] for d in only] == [d["prompt"] for d in items if d["country"] == "China"]


def test_countryrc_items(use_data):
    from culnig_tasks import country_rc
    from culnig_tasks.countries import BLEND_COUNTRIES

    assert country_rc.stable_seed("abc") == 0x90015098  # md5("abc") = 90015098...
    for variant in (1, 2, 3, 4):
        items = country_rc.items("test", variant)
        assert len(items) == 200
        assert Counter(i["country"] for i in items) == {c: 25 for c in (
            "China", "Indonesia", "Iran", "Mexico", "South Korea", "Spain", "UK", "USA")}
        assert {i["id"] for i in items} == {str(k) for k in range(25, 50)}
        for i in items:
            assert i["options"].count(i["country"]) == 1 and len(set(i["options"])) == 4
            assert set(i["options"]) <= set(BLEND_COUNTRIES)
            labels = country_rc.labels(variant)
            assert i["gold"] == labels[i["options"].index(i["country"])]
            assert i["prompt"].count(f"\n{i['gold']}. {i['country']}\n") == 1
            if i["country_dummy"]:
                assert i["country_dummy"] in i["options"] and i["country_dummy"] != i["country"]
    neur = country_rc.items("neur", 1)
    assert {i["id"] for i in neur} == {str(k) for k in range(25)}
    assert country_rc.items("test", 2) == country_rc.items("test", 2)  # deterministic


def test_countries_canonical_table():
    from culnig_tasks.countries import UnknownCountry, canonical, canonical_open, source_name

    for name, canon in [("North_Korea", "North Korea"), ("West_Java", "West Java"),
                        ("Northern_Nigeria", "Nigeria"), ("UK", "UK"), ("US", "USA"),
                        ("USA", "USA"), ("United States", "USA"), ("South Korea", "South Korea"),
                        ("united_states_of_america", "USA"), ("united_kingdom", "UK"),
                        ("south_korea", "South Korea"), ("Great Britain", "UK")]:
        assert canonical(name) == canon
    with pytest.raises(UnknownCountry, match="unknown country 'Atlantis'"):
        canonical("Atlantis")
    assert canonical_open("bosnia_and_herzegovina") == "Bosnia and Herzegovina"
    assert canonical_open("Czech Republic") == "Czech Republic"
    assert source_name("USA", "blend") == "US" and source_name("UK", "wvs") == "Great Britain"
    assert source_name("Nigeria", "blend") == "Northern_Nigeria"


def test_glue_sizes(use_data):
    import importlib.util

    from culnig.paths import tasks_dir

    for hooks, n in (("qnli", 5463), ("mrpc", 1713)):
        spec = importlib.util.spec_from_file_location(f"u_{hooks}", tasks_dir() / "glue" / f"{hooks}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert len(mod.rows()) == n


# --- WorldValuesBench ----------------------------------------------------------------------------
def test_wvs_majority_command_on_synthetic_tsvs(data_dir):
    recs = [json.loads(x) for x in
            (data_dir / "worldvaluesbench" / "country_majority.jsonl").read_text().splitlines()]
    got = {(r["country"], r["question_id"]): (r["majority"], r["n_answers"], r["rank"]) for r in recs}
    assert got == {
        # China: Q1 is a 5/5 tie between 1 and 2 -> the answer seen first (1).
        ("China", "Q2"): (1, 12, 0), ("China", "Q3"): (2, 12, 1), ("China", "Q1"): (1, 12, 2),
        # Great Britain answered Q3 only 6 times (< 10): dropped.
        ("UK", "Q2"): (4, 12, 0), ("UK", "Q1"): (2, 12, 1),
        ("USA", "Q2"): (2, 12, 0), ("USA", "Q1"): (1, 12, 1), ("USA", "Q3"): (1, 11, 2),
    }
    assert {r["wvs_country"] for r in recs} == {"China", "Great Britain", "United States"}
    assert {r["split"] for r in recs} == {"neur"}  # fewer than 40 questions each
    # KL(country || all) for UK Q2 (all answers 4; overall: 4 appears 12 of 48 times) = log 4.
    uk_q2 = next(r for r in recs if (r["country"], r["question_id"]) == ("UK", "Q2"))
    assert uk_q2["kl"] == pytest.approx(1.3862943611198906)


def test_wvs_majority_missing_is_one_clear_error(tmp_path, monkeypatch):
    from culnig_tasks import worldvaluesbench
    from culnig_tasks.data import DataUnavailable

    monkeypatch.setenv("CULNIG_DATA_DIR", str(tmp_path))
    monkeypatch.delenv(worldvaluesbench.MAJORITY_ENV, raising=False)
    with pytest.raises(DataUnavailable, match="culnig data wvs-majority") as err:
        worldvaluesbench.majority_path()
    assert "Demon702/WorldValuesBench" in str(err.value) and "CULNIG_WVB_MAJORITY" in str(err.value)


@pytest.mark.parametrize("pred,gold,lo,hi,expected", [
    ("3", 3, 1, 4, 1.0),          # the majority answer
    ("1", 3, 1, 4, 1 - 2 / 2),    # farthest end from gold 3 on 1..4 is 1 (distance 2)
    ("4", 3, 1, 4, 1 - 1 / 2),
    ("2", 3, 1, 4, 1 - 1 / 2),
    ("1", 1, 1, 10, 1.0),
    ("10", 1, 1, 10, 0.0),        # farthest possible
    ("4", 1, 1, 10, 1 - 3 / 9),
    ("0", 1, 0, 2, 1 - 1 / 1),
    ("5", 3, 1, 4, 0.0),          # out of range
    (" 3", 3, 1, 4, 0.0),         # not a digit string (no strip)
    ("three", 3, 1, 4, 0.0),
    ("", 3, 1, 4, 0.0),
    ("\u00b2", 2, 1, 4, 0.0),     # superscript two: isdigit() but not a number
])
def test_score_c(pred, gold, lo, hi, expected):
    from culnig_tasks.worldvaluesbench import score_c

    assert score_c(pred, gold, lo, hi) == pytest.approx(expected)


# --- SAQ judge (judge names and per-language cases: tests/test_saq_judge.py) --------------------
def test_saq_judge_per_culture_on_real_annotations(use_data):
    """For every culture: a response quoting an annotated answer inside a sentence is correct,
    one quoting another culture's unrelated answer is not."""
    from culnig_tasks import blend, saq_judge
    from culnig_tasks.countries import BLEND_COUNTRIES

    items = blend.saq_items("test")
    for country in BLEND_COUNTRIES:
        mine = [d for d in items if d["country"] == country]
        item = next(d for d in mine if any(len(a) > 1 for a in d["answers"]))
        answer = next(a for a in item["answers"] if len(a) > 1)
        lang = item["language"]
        assert saq_judge.is_correct(f"I think: {answer}.", item["answers"], lang), (country, answer)
        assert saq_judge.is_correct(f"«{answer}»\n", item["answers"], lang), (country, answer)
        assert not saq_judge.is_correct("Xyzzy plugh 12345678.", item["answers"], lang), country


def test_saq_judge_analysers():
    from culnig_tasks.saq_judge import analyse, is_correct

    # English lemmatising: plural and case do not matter; a different word does.
    assert is_correct("People mostly eat Turkeys and pies.", ["turkey"], "en")
    assert not is_correct("People mostly eat turkeys and pies.", ["ham"], "en")
    # Multi-word answers must match contiguously.
    assert is_correct("They play American football.", ["american football"], "en")
    assert not is_correct("American food and football.", ["american football"], "en")
    # Spanish lemmas; Chinese word segmentation (no spaces).
    assert is_correct("Comemos tamales en Navidad.", ["tamal"], "es")
    assert is_correct("我认为是苹果。", ["苹果"], "zh")
    assert not is_correct("我认为是香蕉。", ["苹果"], "zh")
    # The token fallback keeps combining marks inside words (Assamese) and splits punctuation.
    assert analyse("ভাত, মাছ।", "as") == ["ভাত", "মাছ"]
    assert is_correct("김치, 불고기", ["김치"], "ko")
    # NFKC normalisation: full-width digits equal ASCII ones.
    assert is_correct("答案：４", ["4"], "zh")


# --- every task runs on a tiny model (HF backend) ---------------------------------------------
def test_every_task_runs_on_tiny_llama_hf(data_dir, tiny_llama, tmp_path):
    out = tmp_path / "out"
    proc = run_culnig("eval", "--model", str(tiny_llama), "--tasks", "culnig_*", "--backend", "hf",
                      "--dtype", "float32", "--limit", "3", "--output", str(out),
                      env={"CULNIG_DATA_DIR": str(data_dir)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = _results(out)
    assert set(GROUPS) <= set(res["groups"])
    from lm_eval.utils import sanitize_model_name

    assert [p.name for p in out.iterdir()] == [sanitize_model_name(str(tiny_llama))]
    for leaf in LEAVES:
        samples = _samples(out, leaf)
        assert len(samples) == 3, leaf
        prompt = samples[0]["arguments"]["gen_args_0"]["arg_0"]
        assert prompt.startswith("<bos><|user|>\n") or prompt.startswith("<bos><|system|>\n"), leaf
        if not leaf.startswith(("commonsenseqa", "qnli", "mrpc")):
            assert samples[0]["doc"]["country"], leaf
        assert "acc" in samples[0], leaf
    assert "score_c,none" in res["results"]["worldvaluesbench_paper_v1"]
    saq = res["results"]["blendsaq_paper_v1"]
    assert "acc_USA__simplemma-en,none" in saq
    blend_prompt = _samples(out, "blendmcq_paper_v1")[0]["arguments"]["gen_args_0"]["arg_0"]
    assert blend_prompt.endswith('\nAnswer:<eos>\n<|assistant|>\n{"answer_choice":"')


def test_harness_configs_are_accepted(data_dir, tiny_llama, tmp_path):
    """lm-eval 0.4.13 parses all three --config files; the HF one runs."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    for name in ("vllm-gpu", "vllm-cpu", "hf"):
        cfg = EvaluatorConfig.from_config(REPO / "harness_configs" / f"{name}.yaml")
        assert cfg.apply_chat_template is True and cfg.log_samples is True
        assert cfg.seed == [0, 1234, 1234, 1234] and cfg.include_path == "culnig_tasks"
        assert cfg.tasks == "culnig_*"
    out = tmp_path / "runs"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("lm-eval")), "run", "--config",
         "harness_configs/hf.yaml", "--model_args",
         f"pretrained={tiny_llama},dtype=float32,enable_thinking=False",
         "--tasks", "countryrc_paper_v1", "--limit", "2", "--output_path", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "CULNIG_DATA_DIR": str(data_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_samples(out, "countryrc_paper_v1")) == 2
    assert len(list(out.iterdir())) == 1  # one folder per checkpoint


def test_missing_hub_only_data_is_one_clear_error(tiny_llama, tmp_path):
    proc = run_culnig("eval", "--model", str(tiny_llama), "--tasks", "culnig_normad",
                      "--backend", "hf", "--limit", "1",
                      env={"CULNIG_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1",
                           "HF_DATASETS_OFFLINE": "1"})
    line = single_error(proc)
    assert "akhilayerukola/NormAd" in line and "CULNIG_DATA_DIR" in line


# --- vLLM agrees with HF on the demo model -----------------------------------------------------
MCQ_VLLM_TASKS = ["blendmcq_paper_v1", "culturalbench_paper_v2", "normad_paper_v3",
                  "worldvaluesbench_paper_v4", "countryrc_paper_v3", "commonsenseqa_paper_v1",
                  "qnli_paper_v1", "mrpc_paper_v2"]
# The option log-likelihood family rides on the same engine start.
LL_VLLM_TASKS = ["blendmcq_loglik_v1", "countryrc_loglik_v3", "commonsenseqa_loglik_v1",
                 "qnli_loglik_v2", "worldvaluesbench_loglik_v4"]


@pytest.mark.vllm
def test_vllm_and_hf_agree_on_demo_model(demo_model, data_dir, tmp_path):
    """`culnig eval` on each backend: every MCQ-style benchmark and the option log-likelihoods.

    BLEnD SAQ generation is checked against transformers on the shared engine
    (tests/test_vllm_lm.py)."""
    outs = {}
    tasks = [*MCQ_VLLM_TASKS, *LL_VLLM_TASKS]
    for backend in ("vllm", "hf"):
        out = tmp_path / backend
        proc = run_culnig("eval", "--model", str(demo_model), "--tasks", ",".join(tasks),
                          "--backend", backend, "--dtype", "float32", "--limit", "3",
                          "--output", str(out), env={"CULNIG_DATA_DIR": str(data_dir)})
        assert proc.returncode == 0, proc.stderr[-4000:]
        # The demo model has no chat template: culnig says so once, and uses the plain prompt.
        assert proc.stderr.count("has no chat template") == 1, proc.stderr[-4000:]
        outs[backend] = out
    for task in MCQ_VLLM_TASKS:
        hf, vl = _samples(outs["hf"], task), _samples(outs["vllm"], task)
        assert len(hf) == len(vl) == 3
        for a, b in zip(hf, vl):
            assert a["doc"] == b["doc"]
            prompt = a["arguments"]["gen_args_0"]["arg_0"]
            assert prompt == b["arguments"]["gen_args_0"]["arg_0"]
            # No chat template: no BLEnD prefix, no WVB persona (as the reference).
            assert not prompt.endswith('{"answer_choice":"')
            assert "Behave as if" not in prompt
            ra, rb = a["resps"][0][0], b["resps"][0][0]
            # HF skips special tokens when decoding ("" then), vLLM keeps their text.
            if ra != "":
                assert ra == rb, (task, a["doc_id"], ra, rb)
            for metric in ("acc", "score_c"):
                if metric in a:
                    assert a[metric] == b[metric], (task, metric)

    for task in LL_VLLM_TASKS:
        hf, vl = _samples(outs["hf"], task), _samples(outs["vllm"], task)
        assert len(hf) == len(vl) == 3
        for a, b in zip(hf, vl):
            assert a["doc"] == b["doc"] and a["arguments"] == b["arguments"]
            la = [float(r[0]) for r in a["filtered_resps"]]
            lb = [float(r[0]) for r in b["filtered_resps"]]
            assert max(abs(x - y) for x, y in zip(la, lb)) < 2e-3, (task, la, lb)
            assert a["acc"] == b["acc"] and a["acc_norm"] == b["acc_norm"], (task, la, lb)
