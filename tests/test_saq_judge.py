"""The BLEnD SAQ judge: per-language cases in the reference's behaviour, the fallbacks when an
analyser (or the JVM) is missing, and re-judging logged samples without generating again."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys

import pytest

from culnig.errors import CulnigError
from culnig_tasks import saq_analysers, saq_judge
from culnig_tasks.saq_judge import analyse, is_correct, judge_name

# The judges culnig ran before the reference's analysers (moved from test_tasks.py).
JUDGES = {"en": "simplemma-en", "es": "simplemma-es", "el": "simplemma-el", "id": "simplemma-id",
          "fa": "simplemma-fa", "ar": "simplemma-ar", "zh": "jieba", "ko": "tokens",
          "su": "tokens", "ha": "tokens", "am": "tokens", "as": "tokens", "az": "tokens"}


@pytest.fixture(autouse=True)
def _fresh_choice():
    saq_judge.reset()
    yield
    saq_judge.reset()


def needs(lang: str, name: str, judges: str = "reference") -> None:
    if judge_name(lang, judges) != name:
        pytest.skip(f"{name} is not installed here (the {lang} judge is {judge_name(lang, judges)})")


def hide(monkeypatch, *modules: str) -> None:
    """Make ``modules`` unimportable, as on a machine without them."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)
    saq_judge.reset()


def test_saq_judge_names():
    assert {lang: judge_name(lang, "previous") for lang in JUDGES} == JUDGES


def test_reference_judges_are_the_reference_tools_where_installed():
    def has(*mods):
        return all(importlib.util.find_spec(m) is not None for m in mods)

    ref = saq_judge.judge_table("reference")
    for lang in ("en", "es", "el", "su", "am", "az"):  # no PyPI package runs without downloads
        assert ref[lang] == JUDGES[lang]
    assert ref["zh"] == "jieba"
    assert ref["ha"] == ("hausastemmer" if has("hausastemmer") else "tokens")
    assert ref["as"] == ("indicnlp-trivial" if has("indicnlp") else "tokens")
    assert ref["ar"] == ("qalsadi" if has("qalsadi") else "simplemma-ar")
    assert ref["fa"] == ("hazm" if has("hazm") else "simplemma-fa")
    assert ref["id"] == ("nlp_id" if has("nlp_id") else "simplemma-id")
    okt = has("konlpy", "jpype") and saq_analysers.jvm_available()
    kiwi = has("kiwipiepy", "kiwipiepy_model")
    assert ref["ko"] == ("konlpy-okt" if okt else "kiwipiepy" if kiwi else "tokens")
    literal = saq_judge.judge_table("reference-literal")
    assert all(literal[k] == v + "-literal" for k, v in ref.items()
               if v not in ("tokens", "jieba") and not v.startswith("simplemma-"))
    assert literal["zh"] == "jieba-literal"


def test_unknown_judge_set_is_a_user_error():
    with pytest.raises(CulnigError, match="judge set 'spacy'"):
        judge_name("en", "spacy")


# --- Korean -------------------------------------------------------------------------------------
@pytest.fixture(params=["konlpy-okt", "kiwipiepy"])
def korean(request, monkeypatch):
    if request.param == "kiwipiepy":  # as on a machine without a Java runtime
        monkeypatch.setattr(saq_analysers, "jvm_available", lambda: False)
        saq_judge.reset()
    needs("ko", request.param)
    return request.param


def test_korean_noun_with_particle_matches_its_bare_answer(korean):
    assert is_correct("저는 김치찌개를 좋아해요.", ["김치찌개"], "ko")
    assert is_correct("떡국은 설날 음식입니다", ["떡국"], "ko")
    assert not is_correct("저는 김치찌개를 좋아해요.", ["김치찌개"], "ko", "previous")
    # near miss: another dish that starts with the same noun
    assert not is_correct("김치를 먹어요", ["김치찌개"], "ko")
    assert "김치찌개" in analyse("김치찌개를", "ko") or "찌개" in analyse("김치찌개를", "ko")


def test_korean_okt_is_called_as_the_reference_calls_it():
    needs("ko", "konlpy-okt")
    # Okt().morphs(text) with its defaults: particles split off, verbs not stemmed.
    assert analyse("저는 김치를 먹어요.", "ko") == ["저", "는", "김치", "를", "먹어요"]
    assert analyse("저는 김치를 먹어요.", "ko", "reference-literal")[-1] == "."


# --- Hausa --------------------------------------------------------------------------------------
def test_hausa_plural_stems_to_its_singular():
    needs("ha", "hausastemmer")
    assert analyse("kujeru riguna", "ha") == ["kujera", "riga"]
    assert is_correct("Akwai kujeru a ɗaki.", ["kujera"], "ha")
    assert is_correct("Ina son riga", ["riguna"], "ha")
    assert not is_correct("Akwai kujeru a ɗaki.", ["kujera"], "ha", "previous")
    assert not is_correct("Akwai tebura.", ["kujera"], "ha")  # near miss: table, not chair
    assert not is_correct("Ina son gidaje", ["gida"], "ha")  # the stemmer keeps gidaje


def test_hausa_literal_stems_the_whole_text_and_matches_characters():
    needs("ha", "hausastemmer-literal", "reference-literal")
    # One stem over the whole response, compared character by character: a substring matches,
    # a plural inside the response is not stemmed.
    assert is_correct("Ina son gidaje", ["gida"], "ha", "reference-literal")
    assert not is_correct("Akwai kujeru a ɗaki.", ["kujera"], "ha", "reference-literal")
    assert analyse("Riga-", "ha", "reference-literal") == list("riga")


# --- Arabic -------------------------------------------------------------------------------------
def test_arabic_clitic_form_matches():
    needs("ar", "qalsadi")
    assert is_correct("نأكل بالكسكس في العيد", ["كسكس"], "ar")
    assert is_correct("نأكل بالكسكس في العيد", ["الكسكس"], "ar")
    assert is_correct("أحب الكتب", ["كتاب"], "ar")  # broken plural -> its singular lemma
    assert not is_correct("نأكل الكسرة", ["كسكس"], "ar")  # near miss


def test_arabic_literal_reads_the_first_word_only():
    needs("ar", "qalsadi-literal", "reference-literal")
    assert is_correct("بالكسكس طبعا", ["كسكس"], "ar", "reference-literal")
    assert not is_correct("نأكل بالكسكس في العيد", ["كسكس"], "ar", "reference-literal")


def test_qalsadi_per_word_cache_equals_the_whole_text_call(shared_data):
    needs("ar", "qalsadi")
    from qalsadi.lemmatizer import Lemmatizer

    from culnig_tasks import blend

    lem = Lemmatizer()
    texts = [d["question"] for d in blend.saq_items("test", countries=["Algeria"])[:20]]
    texts.append("أعتقد أن الكسكس، هو الطبق! Hello 123 (كسكس)")
    tok, lit = saq_analysers._qalsadi(), saq_analysers._qalsadi_literal()
    for t in texts:
        assert tok(t) == [str(x) for x in lem.lemmatize_text(t)], t
        assert lit(t) == list(lem.lemmatize(t)), t


# --- Persian, Indonesian, Assamese, Chinese -----------------------------------------------------
def test_persian_hazm_lemmas():
    needs("fa", "hazm")
    assert is_correct("من کتاب‌ها را خواندم.", ["کتاب"], "fa")
    assert is_correct("«کتاب‌ها»", ["کتاب"], "fa")
    assert not is_correct("من کباب دوست دارم", ["کتاب"], "fa")  # near miss: kabab, not book
    from hazm import Lemmatizer

    text = "من چلوکباب‌ها را دوست دارم"
    assert analyse(text, "fa", "reference-literal") == list(Lemmatizer().lemmatize(text))


def test_indonesian_nlp_id_lemmas():
    needs("id", "nlp_id")
    assert is_correct("Mereka memasak rendang", ["masak"], "id")
    assert not is_correct("Mereka memasak rendang", ["masak"], "id", "previous")
    assert is_correct("Makanan-makanan enak", ["makan"], "id")
    assert not is_correct("Mereka memasak rendang", ["minum"], "id")


def test_assamese_indic_tokens():
    needs("as", "indicnlp-trivial")
    assert analyse("ভাত, মাছ।", "as") == ["ভাত", "মাছ"]
    assert is_correct("«লুকা ভাকু»", ["লুকা ভাকু"], "as")
    # indic-nlp does not split «: the reference's tokens keep it on the word
    assert not is_correct("«লুকা ভাকু»", ["লুকা ভাকু"], "as", "reference-literal")
    assert analyse("ভাত, মাছ।", "as", "reference-literal") == ["ভাত", ",", "মাছ", "।"]


def test_chinese_literal_keeps_punctuation_tokens():
    assert analyse("红烧肉，米饭。", "zh") == ["红烧肉", "米饭"]
    assert analyse("红烧肉，米饭。", "zh", "reference-literal") == ["红烧肉", ",", "米饭", "。"]  # NFKC: full-width comma
    assert is_correct("我认为是苹果。", ["苹果"], "zh", "reference-literal")


def test_literal_empty_answer_matches_like_the_reference_loop():
    # nlp_id keeps only [a-zA-Z0-9-] words: an answer without any is analysed to no token, and
    # the reference's loop finds the empty sequence in every response; culnig's judges do not.
    assert saq_judge.contains(["a"], [], empty_matches=True)
    assert not saq_judge.contains(["a"], [])
    needs("id", "nlp_id-literal", "reference-literal")
    assert analyse("«—»", "id", "reference-literal") == []
    assert is_correct("apa saja", ["«—»"], "id", "reference-literal")
    assert not is_correct("apa saja", ["«—»"], "id")


# --- fallbacks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("lang,modules,fallback", [
    ("ko", ("konlpy", "kiwipiepy"), "tokens"),
    ("fa", ("hazm",), "simplemma-fa"),
    ("ar", ("qalsadi",), "simplemma-ar"),
    ("id", ("nlp_id",), "simplemma-id"),
    ("ha", ("hausastemmer",), "tokens"),
    ("as", ("indicnlp",), "tokens"),
    ("zh", ("jieba",), "tokens"),
])
def test_missing_analyser_falls_back(monkeypatch, lang, modules, fallback):
    hide(monkeypatch, *modules)
    for judges in ("reference", "reference-literal"):
        assert judge_name(lang, judges) == fallback
    assert is_correct("I think: X-ray.", ["x-ray"], lang)
    assert not is_correct("I think: Y.", ["x-ray"], lang)


def test_without_jvm_korean_uses_kiwipiepy_or_tokens(monkeypatch):
    monkeypatch.setattr(saq_analysers, "jvm_available", lambda: False)
    saq_judge.reset()
    kiwi = importlib.util.find_spec("kiwipiepy") is not None
    assert judge_name("ko") == ("kiwipiepy" if kiwi else "tokens")
    hide(monkeypatch, "kiwipiepy")
    assert judge_name("ko") == "tokens"
    assert is_correct("김치, 불고기", ["김치"], "ko")


def test_jvm_probe_without_jpype(monkeypatch):
    hide(monkeypatch, "jpype")
    assert saq_analysers.jvm_available() is False
    assert judge_name("ko") != "konlpy-okt"


def test_installed_but_broken_analyser_is_a_clear_error(monkeypatch):
    def broken():
        raise OSError("libfoo.so: cannot open shared object file")

    fake = saq_analysers.Analyser("simplemma-en", (), broken)
    monkeypatch.setitem(saq_analysers.ANALYSERS, "simplemma-en", fake)
    saq_judge.reset()
    with pytest.raises(CulnigError, match="simplemma-en.*libfoo"):
        is_correct("x", ["x"], "en")


def test_task_metric_name_names_the_fallback(monkeypatch, shared_data):
    from culnig_tasks.blend import saq

    hide(monkeypatch, "hazm")
    docs = saq.load(blend_saq_countries=["Iran"], blend_saq_max_docs=2)["test"]
    assert {d["judge"] for d in docs} == {"simplemma-fa"}
    out = saq.process_results(docs[0], [docs[0]["answers"][0]])
    assert out == {"acc": 1.0, "acc_Iran__simplemma-fa": 1.0}


# --- re-judging logged samples ------------------------------------------------------------------
def _sample(doc_id, country, lang, answers, response, acc, judge):
    doc = {"ID": f"q{doc_id}", "country": country, "language": lang, "answers": answers,
           "judge": judge, "gold": " | ".join(answers), "prompt": "?"}
    return {"doc_id": doc_id, "doc": doc, "target": doc["gold"],
            "arguments": {"gen_args_0": {"arg_0": "?", "arg_1": {}}}, "resps": [[response]],
            "filtered_resps": [response], "filter": "none",
            "metrics": ["acc", f"acc_{country}__{judge}"], "acc": acc,
            f"acc_{country}__{judge}": acc}


@pytest.fixture
def run_dir(tmp_path):
    """A sweep-like run folder with one checkpoint's logged SAQ samples (English only, so the
    verdicts do not depend on optional packages) and its lm-eval results file."""
    folder = tmp_path / "run" / "results" / "tiny" / "baseline"
    folder.mkdir(parents=True)
    rows = [
        _sample(0, "USA", "en", ["turkey"], "People mostly eat Turkeys.", 0.0, "tokens"),
        _sample(1, "USA", "en", ["turkey"], "Ham, mostly.", 1.0, "tokens"),
        _sample(2, "UK", "en", ["tea"], "Tea, of course.", 1.0, "tokens"),
        _sample(3, "UK", "en", ["american football"], "American food and football.", 0.0,
                "tokens"),
    ]
    name = "2026-01-01T00-00-00.000001"
    (folder / f"samples_blendsaq_paper_v1_{name}.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / f"results_{name}.json").write_text(
        json.dumps({"total_evaluation_time_seconds": "12.5"}), encoding="utf-8")
    return tmp_path / "run"


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}


def test_rejudge_writes_changed_verdicts_per_language(run_dir):
    from culnig_tasks.saq_rejudge import rejudge

    before = _digest(run_dir)
    done = rejudge(run_dir, judges="previous")
    assert done.out == run_dir / "saq_rejudge-previous"
    assert _digest(run_dir / "results") == before  # originals untouched
    t = done.table
    assert len(t) == 1 and t.loc[0, "language"] == "en" and t.loc[0, "countries"] == "UK, USA"
    assert (t.loc[0, "n"], t.loc[0, "changed"], t.loc[0, "to_correct"], t.loc[0, "to_wrong"]) \
        == (4, 2, 1, 1)
    assert t.loc[0, "acc_before"] == 0.5 and t.loc[0, "acc_after"] == 0.5
    assert t.loc[0, "judge_before"] == "tokens" and t.loc[0, "judge_after"] == "simplemma-en"
    assert sorted(done.changed["ID"]) == ["q0", "q1"]
    md = (done.out / "by_language.md").read_text(encoding="utf-8")
    assert all(saq_rejudge_width(line) <= 100 for line in md.splitlines())
    assert "12 s" in md and "wrong -> correct" in md and "correct -> wrong" in md
    import pandas as pd

    csv = pd.read_csv(done.out / "by_language.csv")
    assert list(csv["changed"]) == [2]
    assert len(pd.read_csv(done.out / "changed.csv")) == 2


def saq_rejudge_width(line):
    from culnig_tasks.saq_rejudge import _width

    return _width(line)


def test_rejudge_refuses_to_overwrite_and_to_write_into_results(run_dir):
    from culnig_tasks.saq_rejudge import rejudge

    rejudge(run_dir, judges="previous")
    with pytest.raises(CulnigError, match="already exists"):
        rejudge(run_dir, judges="previous")
    rejudge(run_dir, judges="previous", force=True)
    with pytest.raises(CulnigError, match="holds the logged results"):
        rejudge(run_dir, judges="previous", out=run_dir / "results" / "tiny", force=True)
    with pytest.raises(CulnigError, match="no samples_blendsaq"):
        rejudge(run_dir / "saq_rejudge-previous")
    with pytest.raises(CulnigError, match="same as --judges"):
        rejudge(run_dir, judges="previous", baseline="previous")


def test_rejudge_against_another_judge_set(run_dir):
    from culnig_tasks.saq_rejudge import rejudge

    done = rejudge(run_dir, judges="reference", baseline="previous")
    assert done.out.name == "saq_rejudge-reference-vs-previous"
    assert done.table.loc[0, "changed"] == 0  # English: the same judge in both sets


def test_rejudge_rejects_other_samples(tmp_path):
    from culnig_tasks.saq_rejudge import rejudge

    (tmp_path / "samples_blendsaq_x_1.jsonl").write_text('{"doc": {}}\n', encoding="utf-8")
    with pytest.raises(CulnigError, match=r"samples_blendsaq_x_1.jsonl:1: not a BLEnD SAQ"):
        rejudge(tmp_path)


def test_cli_saq_rejudge(run_dir, capsys):
    from culnig.cli import main

    assert main(["saq", "rejudge", str(run_dir), "--judges", "previous"]) == 0
    out = capsys.readouterr()
    assert "# BLEnD SAQ re-judged: previous vs logged" in out.out
    assert "saq_rejudge-previous" in out.err
    assert main(["saq", "rejudge", str(run_dir), "--judges", "previous"]) == 2
    assert capsys.readouterr().err.startswith("culnig: error: ")
    assert main(["saq", "judges"]) == 0
    assert "simplemma-en" in capsys.readouterr().out
