"""The per-language analysers behind the BLEnD SAQ judge, each optional at import.

An :class:`Analyser` names a tool, the modules it needs and how to build its text -> tokens
function; :mod:`culnig_tasks.saq_judge` picks, per language and judge set, the first one whose
modules are installed. How each follows the reference's ``lemma.py``: ``docs/saq.md``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

Tokeniser = Callable[[str], list[str]]

SIMPLEMMA_LANGS = ("en", "es", "el", "id", "fa", "ar")


def is_separator(ch: str) -> bool:
    """Whitespace, punctuation, symbols and controls (Unicode categories Z*, P*, S*, C*)."""
    return unicodedata.category(ch)[0] in "ZPSC"


def word_tokens(text: str) -> list[str]:
    """Maximal runs of characters that are not separators (combining marks stay inside words)."""
    out, cur = [], []
    for ch in text:
        if is_separator(ch):
            if cur:
                out.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


def jvm_available() -> bool:
    """A Java runtime that JPype can start (konlpy needs one); False without jpype or a JVM."""
    try:
        import jpype

        return bool(jpype.getDefaultJVMPath())
    except Exception:  # JVMNotFoundException, ImportError, a broken JAVA_HOME
        return False


@dataclass(frozen=True)
class Analyser:
    """A named analyser: ``build()`` returns its tokeniser. Its tokens are split at separators
    (``split``) or only separator-only tokens dropped; ``literal`` keeps the reference's token
    stream as it is (``lower_first``: lower case before NFKC as in its script; an answer analysed
    to no token matches every response, as the reference's loop does)."""

    name: str
    needs: tuple[str, ...]
    build: Callable[[], Tokeniser]
    requires_jvm: bool = False
    split: bool = True
    literal: bool = False
    lower_first: bool = False

    def available(self) -> bool:
        if not all(_importable(m) for m in self.needs):
            return False
        return jvm_available() if self.requires_jvm else True


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# --- builders ------------------------------------------------------------------------------------
def _tokens() -> Tokeniser:
    return word_tokens


def _simplemma(lang: str) -> Callable[[], Tokeniser]:
    def build() -> Tokeniser:
        from simplemma import lemmatize

        lemma = lru_cache(maxsize=1 << 16)(lambda t: lemmatize(t, lang=lang))
        return lambda text: [lemma(t) for t in word_tokens(text)]
    return build


def _jieba() -> Tokeniser:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return lambda text: list(jieba.cut(text))


@lru_cache(maxsize=1)
def _okt() -> Tokeniser:
    from konlpy.tag import Okt

    okt = Okt()  # starts the JVM
    # The reference's call: Okt().morphs(text) with its defaults (norm=False, stem=False).
    return lambda text: okt.morphs(text) if text.strip() else []


@lru_cache(maxsize=1)
def _kiwi() -> Tokeniser:
    from kiwipiepy import Kiwi

    kiwi = Kiwi()
    return lambda text: [t.form for t in kiwi.tokenize(text)] if text.strip() else []


@lru_cache(maxsize=1)
def _hazm_lemmatizer():
    from hazm import Lemmatizer

    return Lemmatizer()  # conjugates every known verb: seconds, so built once


def _hazm_words() -> Tokeniser:
    from hazm import WordTokenizer

    lemma, tok = lru_cache(maxsize=1 << 16)(_hazm_lemmatizer().lemmatize), WordTokenizer()
    return lambda text: [lemma(t) for t in tok.tokenize(text)]


def _hazm_literal() -> Tokeniser:
    lem = _hazm_lemmatizer()
    # The reference iterates over the string that lemmatize(text) returns: characters.
    return lambda text: list(lem.lemmatize(text))


@lru_cache(maxsize=1)
def _qalsadi_words() -> Callable[[str], tuple[str, ...]]:
    from qalsadi.lemmatizer import Lemmatizer

    lem = Lemmatizer()

    # Without tag guessing (qalsadi's default) each word is analysed on its own, so a lemma can
    # be cached per word: lemmatize_text(text) == [lemma of each of text_tokenize(text)].
    @lru_cache(maxsize=1 << 16)
    def word_lemmas(word: str) -> tuple[str, ...]:
        # arramooz prints "Fatal Error can't execute query" for a word with a quote (its SQL is
        # built by string formatting); the lemma is still returned: keep stdout clean.
        with contextlib.redirect_stdout(io.StringIO()):
            return tuple(str(x) for x in lem.lemmatize_text(word))

    def words(text: str) -> tuple[str, ...]:
        return tuple(lem.analexer.text_tokenize(text))

    word_lemmas.words = words  # type: ignore[attr-defined]
    return word_lemmas


def _qalsadi() -> Tokeniser:
    word_lemmas = _qalsadi_words()
    return lambda text: [x for w in word_lemmas.words(text) for x in word_lemmas(w)]


def _qalsadi_literal() -> Tokeniser:
    word_lemmas = _qalsadi_words()

    # Lemmatizer().lemmatize(text) returns the lemma of the text's first word only, and the
    # reference iterates over that string: the characters of the first word's lemma.
    def first_lemma_chars(text: str) -> list[str]:
        words = word_lemmas.words(text)
        lemmas = word_lemmas(words[0]) if words else ()
        return list(lemmas[0]) if lemmas else []
    return first_lemma_chars


@lru_cache(maxsize=1)
def _hausa_stem() -> Callable[[str], str]:
    import hausastemmer

    @lru_cache(maxsize=1 << 16)
    def stem(term: str) -> str:
        try:
            return hausastemmer.stem(term)
        except IndexError:  # the stemmer indexes past the end of some inputs; keep the term
            return term.strip().lower()
    return stem


def _hausastemmer() -> Tokeniser:
    stem = _hausa_stem()
    return lambda text: [stem(w) for w in word_tokens(text)]


def _hausastemmer_literal() -> Tokeniser:
    stem = _hausa_stem()
    # The reference stems the whole text as one term and iterates over the result: characters.
    return lambda text: list(stem(text.strip("-")))


def _indic() -> Tokeniser:
    from indicnlp.tokenize.indic_tokenize import trivial_tokenize

    return trivial_tokenize


@lru_cache(maxsize=1)
def _nlp_id() -> Tokeniser:
    from nlp_id.lemmatizer import Lemmatizer

    lem = Lemmatizer()
    return lambda text: lem.lemmatize(text).split()


def _analysers() -> dict[str, Analyser]:
    items = [
        Analyser("tokens", (), _tokens),
        Analyser("jieba", ("jieba",), _jieba, split=False),
        Analyser("jieba-literal", ("jieba",), _jieba, literal=True),
        Analyser("konlpy-okt", ("konlpy", "jpype"), _okt, requires_jvm=True),
        Analyser("konlpy-okt-literal", ("konlpy", "jpype"), _okt, requires_jvm=True, literal=True),
        Analyser("kiwipiepy", ("kiwipiepy", "kiwipiepy_model"), _kiwi),
        Analyser("kiwipiepy-literal", ("kiwipiepy", "kiwipiepy_model"), _kiwi, literal=True),
        Analyser("hazm", ("hazm",), _hazm_words),
        Analyser("hazm-literal", ("hazm",), _hazm_literal, literal=True, lower_first=True),
        Analyser("qalsadi", ("qalsadi",), _qalsadi),
        Analyser("qalsadi-literal", ("qalsadi",), _qalsadi_literal, literal=True),
        Analyser("hausastemmer", ("hausastemmer",), _hausastemmer),
        Analyser("hausastemmer-literal", ("hausastemmer",), _hausastemmer_literal, literal=True,
                 lower_first=True),
        Analyser("indicnlp-trivial", ("indicnlp",), _indic),
        Analyser("indicnlp-trivial-literal", ("indicnlp",), _indic, literal=True,
                 lower_first=True),
        # nlp_id's lemmatize() keeps only [a-zA-Z0-9-] words: no separator token to keep or drop.
        Analyser("nlp_id", ("nlp_id",), _nlp_id),
        Analyser("nlp_id-literal", ("nlp_id",), _nlp_id, literal=True),
    ]
    items += [Analyser(f"simplemma-{lang}", ("simplemma",), _simplemma(lang))
              for lang in SIMPLEMMA_LANGS]
    return {a.name: a for a in items}


ANALYSERS: dict[str, Analyser] = _analysers()
