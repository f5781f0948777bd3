"""Judging BLEnD short answers: is an annotated answer in the response?

BLEnD's rule (and the reference's): analyse the response and every annotated answer (count > 0)
into tokens with a per-language analyser, normalise each token (Unicode NFKC, lower case), and call
the response correct when the token sequence of some answer occurs contiguously in the response's.

Three judge sets (:data:`JUDGE_SETS`), each a per-language list of analysers tried in order (the
first whose packages are installed runs; konlpy only with a Java runtime):

- ``reference`` (default): the reference's own tool wherever a package ships it (zh jieba, ko
  konlpy Okt else kiwipiepy, fa hazm, ar qalsadi, ha hausastemmer, as indic-nlp, id nlp_id), word
  by word, its tokens split at separators; simplemma or plain tokens elsewhere.
- ``reference-literal``: the reference's ``lemma.py`` as written, quirks included (fa/ha/ar
  match characters; ar looks at the response's first word only).
- ``previous``: culnig's judges before the reference's tools (jieba, simplemma, tokens).

:func:`judge_name` says which judge runs; the SAQ task puts it in every per-culture metric name.
Per-language reasons and measurements: ``docs/saq.md``.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Iterable

from culnig.errors import CulnigError
from culnig_tasks.saq_analysers import (ANALYSERS, SIMPLEMMA_LANGS, Analyser, Tokeniser,
                                        is_separator, word_tokens)

__all__ = ["JUDGE_SETS", "DEFAULT_JUDGES", "judge_name", "judge_table", "analyse", "is_correct",
           "normalise", "word_tokens", "contains", "reset"]

JUDGE_SETS = ("reference", "reference-literal", "previous")
DEFAULT_JUDGES = "reference"
LANGS = ("en", "es", "el", "id", "fa", "ar", "zh", "ko", "su", "ha", "am", "as", "az")

_PREVIOUS = {**{lang: [f"simplemma-{lang}"] for lang in SIMPLEMMA_LANGS}, "zh": ["jieba"]}
_REFERENCE = {**_PREVIOUS, "ko": ["konlpy-okt", "kiwipiepy"], "fa": ["hazm", "simplemma-fa"],
              "ar": ["qalsadi", "simplemma-ar"], "ha": ["hausastemmer"],
              "as": ["indicnlp-trivial"], "id": ["nlp_id", "simplemma-id"]}
_LITERAL = {**_PREVIOUS, "zh": ["jieba-literal"], "ko": ["konlpy-okt-literal", "kiwipiepy-literal"],
            "fa": ["hazm-literal", "simplemma-fa"], "ar": ["qalsadi-literal", "simplemma-ar"],
            "ha": ["hausastemmer-literal"], "as": ["indicnlp-trivial-literal"],
            "id": ["nlp_id-literal", "simplemma-id"]}
# Every list ends in the plain token judge, which always runs.
CANDIDATES: dict[str, dict[str, list[str]]] = {
    "reference": _REFERENCE, "reference-literal": _LITERAL, "previous": _PREVIOUS}


def normalise(token: str) -> str:
    return unicodedata.normalize("NFKC", token).lower()


def _check_set(judges: str) -> None:
    if judges not in CANDIDATES:
        raise CulnigError(f"SAQ judge set {judges!r}: unknown; choose one of {', '.join(JUDGE_SETS)}")


@lru_cache(maxsize=None)
def _choose(lang: str, judges: str) -> Analyser:
    _check_set(judges)
    for name in CANDIDATES[judges].get(lang, []) + ["tokens"]:
        if ANALYSERS[name].available():
            return ANALYSERS[name]
    raise AssertionError("the tokens judge is always available")


@lru_cache(maxsize=None)
def _built(name: str) -> Tokeniser:
    try:
        return ANALYSERS[name].build()
    except Exception as exc:
        raise CulnigError(f"SAQ judge {name}: its package is installed but does not load ({exc}); "
                          "repair it (pip install culnig[saq]) or uninstall it to fall back") from exc


def judge_name(lang: str, judges: str = DEFAULT_JUDGES) -> str:
    """The judge that runs for ``lang`` in judge set ``judges`` (cheap: nothing is loaded)."""
    return _choose(lang, judges).name


def judge_table(judges: str = DEFAULT_JUDGES) -> dict[str, str]:
    """Language -> judge name for every BLEnD language."""
    return {lang: judge_name(lang, judges) for lang in LANGS}


def _tokens(text: str, analyser: Analyser) -> list[str]:
    raw = _built(analyser.name)(text)
    if analyser.literal:
        if analyser.lower_first:
            return [unicodedata.normalize("NFKC", t.lower()) for t in raw]
        return [normalise(t) for t in raw]
    if not analyser.split:  # jieba as culnig always ran it: separator-only tokens dropped
        return [normalise(t) for t in raw if t and not all(is_separator(c) for c in t)]
    # Split every token at separators, so that punctuation the tool leaves glued to a word
    # (« », quotes) does not hide it; separator-only tokens disappear.
    return [normalise(p) for t in raw for p in word_tokens(t)]


def analyse(text: str, lang: str, judges: str = DEFAULT_JUDGES) -> list[str]:
    """``text`` as the normalised token list the judge compares."""
    return _tokens(text, _choose(lang, judges))


def contains(haystack: list[str], needle: list[str], empty_matches: bool = False) -> bool:
    """``needle`` occurs contiguously in ``haystack``; an empty needle matches only when
    ``empty_matches`` (the reference's loop accepts an answer analysed to no token)."""
    n = len(needle)
    if n == 0:
        return empty_matches
    first = needle[0]
    return any(haystack[i] == first and haystack[i:i + n] == needle
               for i in range(len(haystack) - n + 1))


def is_correct(response: str, answers: Iterable[str], lang: str,
               judges: str = DEFAULT_JUDGES) -> bool:
    analyser = _choose(lang, judges)
    tokens = _tokens(response, analyser)
    return any(contains(tokens, _tokens(a, analyser), empty_matches=analyser.literal)
               for a in answers)


def reset() -> None:
    """Forget which judges were chosen and built (after installing or removing a package)."""
    _choose.cache_clear()
    _built.cache_clear()
