"""Self-contained HTML pages for study reports: figures embedded as base64 PNG, inline
CSS, no script and no external resource, so a page opens offline and anywhere.

A page is a title, a subtitle and sections; a section holds blocks: :class:`Figure`
(PNG bytes, also written next to the page by the caller if wanted), :class:`Table`
(a DataFrame, numbers formatted), :class:`Text` (escaped paragraph text).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #1b1b1b; line-height: 1.45; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2.2rem; }
.subtitle { color: #555; margin-top: 0; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; }
nav ul { columns: 2; } .note { color: #555; font-size: 0.92rem; }
"""


@dataclass(frozen=True)
class Figure:
    """A PNG figure with an id (anchor and file stem), a title and a caption."""

    id: str
    title: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class Table:
    title: str
    df: pd.DataFrame
    caption: str = ""
    float_format: str = "{:,.3f}"


@dataclass(frozen=True)
class Text:
    text: str


Block = Figure | Table | Text


def _table_html(t: Table) -> str:
    df = t.df
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for v in r.tolist():
            if isinstance(v, float):
                s = "" if pd.isna(v) else t.float_format.format(v)
            else:
                s = str(v)
            cells.append(f"<td>{html.escape(s)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<p class='note'>{html.escape(t.caption)}</p>" if t.caption else ""
    return (f"<h3>{html.escape(t.title)}</h3><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{cap}")


def _figure_html(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    cap = f"<figcaption>{html.escape(f.caption)}</figcaption>" if f.caption else ""
    return (f"<figure id='{html.escape(f.id)}'><h3>{html.escape(f.title)}</h3>"
            f"<img alt='{html.escape(f.title)}' src='data:image/png;base64,{data}'>{cap}</figure>")


def page(title: str, subtitle: str, sections: Sequence[tuple[str, Sequence[Block]]]) -> str:
    """The whole HTML document (UTF-8 text)."""
    nav = "".join(f"<li><a href='#s{i}'>{html.escape(name)}</a></li>" for i, (name, _) in enumerate(sections))
    body = []
    for i, (name, blocks) in enumerate(sections):
        body.append(f"<section id='s{i}'><h2>{html.escape(name)}</h2>")
        for b in blocks:
            if isinstance(b, Figure):
                body.append(_figure_html(b))
            elif isinstance(b, Table):
                body.append(_table_html(b))
            else:
                body.append(f"<p>{html.escape(b.text)}</p>")
        body.append("</section>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='subtitle'>{html.escape(subtitle)}</p><nav><ul>{nav}</ul></nav>{''.join(body)}"
            "</body></html>")
