"""Rendering for every report: value formatting, Markdown/HTML tables (pandas), pages (one Jinja2
template, ``templates/page.html.j2``), embedded images and atomic output files.

A page is a title and a list of :class:`Section` (heading, Markdown, HTML); :func:`render_page`
gives its Markdown and its self-contained HTML (images as base64, optional sortable tables).
"""

from __future__ import annotations

import base64
import functools
import html
import math
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
import numpy as np
import pandas as pd

from culnig.atomic import atomic_write_bytes, atomic_write_text

EMPTY_MD = "_(nothing to show)_\n"
EMPTY_HTML = "<p><em>(nothing to show)</em></p>"


class Section(NamedTuple):
    title: str
    md: str
    html: str


class Image(NamedTuple):
    name: str      # file name beside the page (the Markdown links it)
    caption: str
    png: bytes     # embedded in the HTML page


# --- values -----------------------------------------------------------------------------------
def _as_float(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def pct(x: Any) -> str:
    """A share as points with one decimal (``0.123`` -> ``12.3``); NaN -> ``—``."""
    f = _as_float(x)
    if f is None:
        return str(x)
    return "—" if math.isnan(f) else f"{100 * f:.1f}"


def whole(x: Any) -> str:
    """A count without decimals; NaN -> ``—``."""
    f = _as_float(x)
    if f is None:
        return str(x)
    return "—" if math.isnan(f) else f"{f:.0f}"


def fmt(x: Any, digits: int = 3) -> str:
    """One table cell: booleans yes/no, integers as they are, floats with ``digits`` decimals."""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "—" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def _cells(df: pd.DataFrame, digits: int, index: bool) -> pd.DataFrame:
    """``df`` with every value formatted by :func:`fmt` and plain string column names."""
    if index:
        df = df.reset_index()
    out = df.astype(object).map(lambda v: fmt(v, digits))
    out.columns = [str(c) for c in df.columns]
    return out


# --- tables -----------------------------------------------------------------------------------
def md_table(df: pd.DataFrame, digits: int = 3, index: bool = False) -> str:
    """A Markdown (pipe) table of ``df``; ``index``: the index becomes the first column(s)."""
    if df.empty:
        return EMPTY_MD
    cells = _cells(df, digits, index)
    cells = cells.map(lambda s: s.replace("|", "\\|"))
    cells.columns = [c.replace("|", "\\|") for c in cells.columns]
    return cells.to_markdown(index=False, tablefmt="pipe", disable_numparse=True) + "\n"


def html_table(df: pd.DataFrame, digits: int = 3, sortable: bool = False, index: bool = False,
               table_id: str | None = None) -> str:
    """An HTML table of ``df``; ``sortable``: a click on a header sorts (the page's script)."""
    if df.empty:
        return EMPTY_HTML
    return _cells(df, digits, index).to_html(index=False, border=0, table_id=table_id,
                                             classes="sortable" if sortable else None)


# --- sections, images, pages ------------------------------------------------------------------
def notice_section(title: str, items: list[tuple[str | None, str]]) -> Section:
    """A list of warnings or notes, each ``(label or None, text)``, highlighted on the page."""
    def md_item(label, text):
        return f"- **{label}:** {text}" if label else f"- {text}"

    def html_item(label, text):
        return (f"<li><b>{html.escape(label)}:</b> {html.escape(text)}</li>" if label
                else f"<li>{html.escape(text)}</li>")

    return Section(title, "\n".join(md_item(k, v) for k, v in items) + "\n",
                   '<div class="warn"><ul>' + "".join(html_item(k, v) for k, v in items)
                   + "</ul></div>")


def md_images(images: list[Image]) -> str:
    return "".join(f"![{im.caption}]({im.name})\n\n" for im in images)


def html_images(images: list[Image]) -> str:
    return "".join(f'<figure><img alt="{html.escape(im.caption)}" src="data:image/png;base64,'
                   f'{base64.b64encode(im.png).decode()}"><figcaption>{html.escape(im.caption)}'
                   "</figcaption></figure>" for im in images)


def md_bold_to_html(text: str) -> str:
    """Escape ``text`` for HTML, turning its ``**bold**`` spans into ``<b>``."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def text_table(df: pd.DataFrame) -> str:
    """``df`` as aligned plain text (what a command prints)."""
    cols = list(df.columns)
    widths = [max(len(str(c)), *(len(str(v)) for v in df[c])) for c in cols]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(cols, widths)),
             "  ".join("-" * w for w in widths)]
    for _, r in df.iterrows():
        lines.append("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))
    return "\n".join(lines)


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("culnig.reports", "templates"),
                             autoescape=True, keep_trailing_newline=True, trim_blocks=True)
    return env.get_template("page.html.j2")


def render_page(title: str, sections: list[Section], intro: str = "", *,
                heading: str | None = None, sortable: bool = False) -> tuple[str, str]:
    """(Markdown, self-contained HTML) of a page; ``heading`` (default: ``title``) tops both."""
    heading = heading or title
    md = f"# {heading}\n\n" + (f"{intro}\n\n" if intro else "") + "\n".join(
        f"## {s.title}\n\n{s.md}" for s in sections)
    page = _template().render(title=title, heading=heading, intro=intro, sortable=sortable,
                              sections=[Section(*s) for s in sections])
    return md, page


# --- output files -----------------------------------------------------------------------------
def write(path: Path, data: bytes | str) -> None:
    """Write a report file atomically (text as UTF-8)."""
    if isinstance(data, str):
        atomic_write_text(Path(path), data)
    else:
        atomic_write_bytes(Path(path), data)


class OutputDir:
    """A report's output folder: :meth:`save` writes a file there and remembers it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files: list[Path] = []

    def save(self, name: str, data: bytes | str) -> str:
        write(self.path / name, data)
        self.files.append(self.path / name)
        return name

    def image(self, name: str, caption: str, png: bytes) -> Image:
        return Image(self.save(name, png), caption, png)
