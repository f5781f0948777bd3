"""One canonical spelling per country, for every benchmark and for the neuron files.

Every benchmark spells countries its own way: BLEnD file keys (``North_Korea``, ``West_Java``,
``Northern_Nigeria``, ``UK``, ``US``), CountryRC's display names (``USA``, ``UK``, ``Nigeria``),
CulturalBench's full names (``United States``, ``South Korea``), NormAd's snake_case
(``united_states_of_america``), the World Values Survey's names (``Great Britain``,
``United States``). culnig stores the **canonical** name in every document (``doc["country"]``),
in identification items and in neuron-set files. The canonical names are the reference
implementation's display names (``USA``, ``UK``, ``South Korea``, ``Nigeria`` for BLEnD's Northern
Nigeria, ...).

:func:`canonical` maps any known spelling to the canonical name and raises :class:`UnknownCountry`
(one line, with the known names) for anything else. CulturalBench and NormAd cover many more
countries than the paper's; :func:`canonical_open` keeps those too, deriving a display name by a
fixed rule (documented there) instead of failing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from culnig.errors import CulnigError


class UnknownCountry(CulnigError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


@dataclass(frozen=True)
class Country:
    canonical: str
    blend: str | None = None          # BLEnD file key (annotations/<key>_data.json)
    culturalbench: str | None = None  # kellycyy/CulturalBench `country`
    normad: str | None = None         # akhilayerukola/NormAd `Country`
    wvs: str | None = None            # WorldValuesBench B_COUNTRY (WVS codebook name)
    language: str | None = None       # BLEnD local language (ISO 639-1) for SAQ


COUNTRIES: tuple[Country, ...] = (
    # The 16 BLEnD / CountryRC cultures, in the order of the reference's country table (the
    # order matters: CountryRC draws its distractors with rng.sample from this list, and the
    # BLEnD SAQ prompt templates are drawn country by country in this order).
    Country("USA", "US", "United States", "united_states_of_america", "United States", "en"),
    Country("UK", "UK", "United Kingdom", "united_kingdom", "Great Britain", "en"),
    Country("South Korea", "South_Korea", "South Korea", "south_korea", "South Korea", "ko"),
    Country("Algeria", "Algeria", None, "algeria", None, "ar"),
    Country("Indonesia", "Indonesia", "Indonesia", "indonesia", "Indonesia", "id"),
    Country("Spain", "Spain", "Spain", "spain", None, "es"),
    Country("Iran", "Iran", "Iran", "iran", "Iran", "fa"),
    Country("Mexico", "Mexico", "Mexico", "mexico", "Mexico", "es"),
    Country("Assam", "Assam", None, None, None, "as"),
    Country("Greece", "Greece", None, "greece", "Greece", "el"),
    Country("Ethiopia", "Ethiopia", None, "ethiopia", "Ethiopia", "am"),
    Country("Nigeria", "Northern_Nigeria", "Nigeria", "nigeria", "Nigeria", "ha"),
    Country("North Korea", "North_Korea", None, None, None, "ko"),
    Country("West Java", "West_Java", None, None, None, "su"),
    Country("China", "China", "China", "china", "China", "zh"),
    Country("Azerbaijan", "Azerbaijan", None, None, None, "az"),
    # The other countries the reference names for CulturalBench / NormAd.
    Country("Germany", None, "Germany", "germany", "Germany"),
    Country("Japan", None, "Japan", "japan", "Japan"),
    Country("India", None, "India", "india", "India"),
    Country("Russia", None, "Russia", "russia", "Russia"),
    Country("Brazil", None, "Brazil", "brazil", "Brazil"),
    Country("Zimbabwe", None, "Zimbabwe", "zimbabwe", "Zimbabwe"),
)

BY_CANONICAL: dict[str, Country] = {c.canonical: c for c in COUNTRIES}

# The 16 BLEnD cultures (CountryRC's option pool), in the reference's order.
BLEND_COUNTRIES: tuple[str, ...] = tuple(c.canonical for c in COUNTRIES if c.blend)
# Evaluation subsets of the paper.
COUNTRYRC_EVAL_COUNTRIES: tuple[str, ...] = (
    "China", "Indonesia", "Iran", "Mexico", "South Korea", "Spain", "UK", "USA")
WVB_COUNTRIES: tuple[str, ...] = (
    "China", "Indonesia", "Iran", "Mexico", "South Korea", "UK", "USA")

SOURCES = ("blend", "culturalbench", "normad", "wvs")
# The paper's culture-specific countries (Table 2, Figure 4): one culture-specific set each.
PAPER_COUNTRIES = ("China", "Indonesia", "Iran", "Mexico", "South Korea", "Spain", "UK", "USA")


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip()).casefold()


def _build_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for c in COUNTRIES:
        for spelling in (c.canonical, c.blend, c.culturalbench, c.normad, c.wvs):
            if spelling:
                index.setdefault(_key(spelling), c.canonical)
    # Other common spellings of the same countries.
    for alias, canon in (("United States of America", "USA"), ("US", "USA"), ("U.S.", "USA"),
                         ("America", "USA"), ("United Kingdom", "UK"), ("Great Britain", "UK"),
                         ("Britain", "UK"), ("Korea", "South Korea"),
                         ("Republic of Korea", "South Korea"), ("Northern Nigeria", "Nigeria"),
                         ("Persia", "Iran")):
        index.setdefault(_key(alias), canon)
    return index


_INDEX = _build_index()


def canonical(name: str) -> str:
    """The canonical name for any known spelling (case, ``_``/``-``/space insensitive)."""
    try:
        return _INDEX[_key(name)]
    except KeyError:
        raise UnknownCountry(
            f"unknown country {name!r}; known: {', '.join(BY_CANONICAL)} (and their BLEnD, "
            "CulturalBench, NormAd and WVS spellings)") from None


_SMALL_WORDS = {"and", "of", "the", "da", "de", "del"}


def canonical_open(name: str) -> str:
    """:func:`canonical` for the known countries; any other name by a fixed display rule.

    For the open-world benchmarks (CulturalBench, NormAd): NormAd's snake_case becomes words in
    title case with small words lower-cased (``bosnia_and_herzegovina`` -> ``Bosnia and
    Herzegovina``); a name that already has capitals (CulturalBench) is kept as is.
    """
    try:
        return canonical(name)
    except UnknownCountry:
        pass
    text = name.strip()
    if "_" in text or text == text.lower():
        words = text.replace("_", " ").split()
        text = " ".join(w if (i and w in _SMALL_WORDS) else w[:1].upper() + w[1:]
                        for i, w in enumerate(words))
    return text


def source_name(canonical_name: str, source: str) -> str:
    """The spelling ``source`` (blend, culturalbench, normad, wvs, countryrc) uses for a country."""
    if source == "countryrc":
        if canonical_name in BLEND_COUNTRIES:
            return canonical_name
        raise UnknownCountry(f"{canonical_name!r} is not a CountryRC country; use one of "
                             f"{', '.join(BLEND_COUNTRIES)}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    entry = BY_CANONICAL.get(canonical(canonical_name))
    value = getattr(entry, source) if entry else None
    if not value:
        raise UnknownCountry(f"{canonical_name!r} has no {source} spelling in culnig's table")
    return value


def blend_language(canonical_name: str) -> str:
    """ISO 639-1 code of the language BLEnD's local questions use for a culture."""
    lang = BY_CANONICAL[canonical(canonical_name)].language
    if not lang:
        raise UnknownCountry(f"{canonical_name!r} is not a BLEnD culture")
    return lang
