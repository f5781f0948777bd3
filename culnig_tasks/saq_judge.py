"""Judging BLEnD short answers: is an annotated answer in the response?

BLEnD's rule (and the reference's): analyse the response and every annotated answer (count > 0)
into tokens with a per-language analyser, normalise each token (Unicode NFKC, lower case), and call
the response correct when the token sequence of some answer occurs contiguously in the response's.

The reference uses a different heavy analyser per language (spaCy, konlpy, Spark NLP, hazm,
indic-nlp, ...), several of which need Java, model downloads or git clones. culnig uses what
installs from PyPI as pure Python:

| judge | languages (BLEnD cultures) |
| --- | --- |
| ``jieba`` (word segmentation) | zh (China) |
| ``simplemma-<lang>`` (dictionary lemmatiser on word tokens) | en (USA, UK), es (Spain, Mexico), el (Greece), id (Indonesia), fa (Iran), ar (Algeria) |
| ``tokens`` (documented fallback) | ko (South/North Korea), su (West Java), ha (Nigeria), am (Ethiopia), as (Assam), az (Azerbaijan) |

The ``tokens`` fallback splits on whitespace, punctuation and symbols (Unicode categories Z*, P*,
S*, C*; combining marks stay inside words, so Indic and Ethiopic scripts are not torn apart) and
matches normalised tokens exactly, without lemmatising: an inflected form (a Korean particle
attached to a noun, an Azerbaijani suffix) does not match its bare answer. A language whose
package is missing falls back to ``tokens`` too; :func:`judge_name` says which judge runs, and
the SAQ task reports it in every per-country metric name.
"""

from __future__ import annotations

import logging
import unicodedata
from functools import lru_cache
from typing import Callable, Iterable

SIMPLEMMA_LANGS = ("en", "es", "el", "id", "fa", "ar")


def normalise(token: str) -> str:
    return unicodedata.normalize("NFKC", token).lower()


def _is_separator(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "ZPSC"


def word_tokens(text: str) -> list[str]:
    """Maximal runs of characters that are not whitespace, punctuation, symbols or controls."""
    out, cur = [], []
    for ch in text:
        if _is_separator(ch):
            if cur:
                out.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


@lru_cache(maxsize=None)
def _analyser(lang: str) -> tuple[str, Callable[[str], list[str]]]:
    if lang == "zh":
        try:
            import jieba

            jieba.setLogLevel(logging.WARNING)
            return "jieba", lambda text: [t for t in jieba.cut(text) if t.strip() and
                                          not all(_is_separator(c) for c in t)]
        except ImportError:
            pass
    if lang in SIMPLEMMA_LANGS:
        try:
            from simplemma import lemmatize

            return f"simplemma-{lang}", lambda text: [lemmatize(t, lang=lang)
                                                      for t in word_tokens(text)]
        except ImportError:
            pass
    return "tokens", word_tokens


def judge_name(lang: str) -> str:
    return _analyser(lang)[0]


def analyse(text: str, lang: str) -> list[str]:
    return [normalise(t) for t in _analyser(lang)[1](text) if t]


def contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    if n == 0:
        return False
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def is_correct(response: str, answers: Iterable[str], lang: str) -> bool:
    tokens = analyse(response, lang)
    return any(contains(tokens, analyse(a, lang)) for a in answers)
