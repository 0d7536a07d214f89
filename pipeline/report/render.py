"""Render the report's document model to HTML (self-contained, images inlined as base64 PNG)
and to Markdown (images referenced as `figures/<name>.png`, written beside it by `build.py`).

Usage (from `build.build_report`)::

    sections = [Section("results", "Results", [Text("..."), Table(df, "caption")])]
    html = render_html(sections, subtitle)
    md = render_markdown(sections, subtitle)

A section builder returns blocks (`Text`, `Code`, `Table`, `Image`); a `Text` that starts
with "not available" is shown as a missing source.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

DASH = "–"
SUMMARY_LIMIT = 6   # longer lists are summarised in one cell
ROWS_LIMIT = 20     # nested mappings up to this size get a row per key, larger ones one row


# --------------------------------------------------------------------------- document model


@dataclasses.dataclass(frozen=True)
class Text:
    text: str


@dataclasses.dataclass(frozen=True)
class Code:
    text: str


@dataclasses.dataclass(frozen=True)
class Table:
    df: pd.DataFrame
    caption: str = ""


@dataclasses.dataclass(frozen=True)
class Image:
    name: str  # file stem under figures/
    png: bytes
    caption: str


Block = Text | Code | Table | Image


@dataclasses.dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    blocks: list[Block]


# --------------------------------------------------------------------------- cell values


def summarise(value: object) -> str:
    """A JSON value as one table cell: integers as integers, floats to 4 significant digits,
    long lists and mappings summarised."""
    match value:
        case None:
            return DASH
        case bool():
            return "true" if value else "false"
        case int():
            return str(value)
        case float():
            return DASH if np.isnan(value) else f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
        case list() if len(value) > SUMMARY_LIMIT:
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                return (f"{len(value)} values, {summarise(value[0])} … {summarise(value[-1])} "
                        f"(min {summarise(min(value))}, max {summarise(max(value))})")
            return f"{len(value)} items: {', '.join(map(summarise, value[:2]))}, …"
        case list():
            return "[" + ", ".join(map(summarise, value)) + "]"
        case dict() if not value:
            return "none"
        case dict():
            shown = ", ".join(f"{k}: {summarise(v)}" for k, v in list(value.items())[:2])
            return f"{len(value)} entries: {shown}, …"
    return str(value)


def key_values(obj: Mapping, prefix: str = "") -> pd.DataFrame:
    """(key, value) rows of a JSON mapping: nested mappings of up to ROWS_LIMIT entries
    become dotted keys; larger ones (e.g. the skipped files) one summarised row."""
    rows = []
    for k, v in obj.items():
        if isinstance(v, dict) and 0 < len(v) <= ROWS_LIMIT:
            rows += key_values(v, f"{prefix}{k}.").itertuples(index=False, name=None)
        else:
            rows.append((f"{prefix}{k}", summarise(v)))
    return pd.DataFrame(rows, columns=["key", "value"])


# --------------------------------------------------------------------------- rendering

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
nav a { margin-right: 1em; }
div.table { overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; vertical-align: bottom; }
td:first-child, th:first-child { text-align: left; }
p.caption { color: #555; font-size: 13px; margin: 4px 0 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 13px; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }
p.na { color: #a33; }
"""


def _html_block(block: Block) -> str:
    match block:
        case Text(text):
            cls = ' class="na"' if text.startswith("not available") else ""
            return f"<p{cls}>{html.escape(text)}</p>"
        case Code(text):
            return f"<pre>{html.escape(text)}</pre>"
        case Table(df, caption):
            table = df.to_html(index=False, border=0, na_rep=DASH, escape=True)
            # Long dotted headers (tune.view_mask_ratio) may break after . and _; a table
            # still too wide scrolls inside its box instead of widening the page.
            table = re.sub(r"<th>(.*?)</th>",
                           lambda m: "<th>" + re.sub(r"([._])", r"\1<wbr>", m[1]) + "</th>",
                           table)
            note = f'\n<p class="caption">{html.escape(caption)}</p>' if caption else ""
            return f'<div class="table">\n{table}{note}\n</div>'
        case Image(name, png, caption):
            data = base64.b64encode(png).decode("ascii")
            return (f'<figure id="fig-{name}"><img src="data:image/png;base64,{data}" '
                    f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                    "</figcaption></figure>")
    raise TypeError(f"unknown block {block!r}")


def _md_cell(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return DASH
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block) -> str:
    match block:
        case Text(text):
            return text
        case Code(text):
            return f"```yaml\n{text.rstrip()}\n```"
        case Table(df, caption):
            lines = ["| " + " | ".join(_md_cell(c) for c in df.columns) + " |",
                     "|" + "---|" * len(df.columns)]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |"
                      for row in df.itertuples(index=False)]
            return "\n".join(lines) + (f"\n\n*{caption}*" if caption else "")
        case Image(name, _, caption):
            return f"![{caption}](figures/{name}.png)\n\n*{caption}*"
    raise TypeError(f"unknown block {block!r}")


def render_html(sections: list[Section], subtitle: str) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{s.anchor}">\n<h2>{html.escape(s.title)}</h2>\n'
                     + "\n".join(_html_block(b) for b in s.blocks) + "\n</section>"
                     for s in sections)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>STARS report</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>STARS report</h1>\n<p>{html.escape(subtitle)}</p>\n<nav>{nav}</nav>\n"
            f"{body}\n</body>\n</html>\n")


def render_markdown(sections: list[Section], subtitle: str) -> str:
    parts = ["# STARS report", subtitle]
    for s in sections:
        parts.append(f"## {s.title}")
        parts += [_md_block(b) for b in s.blocks]
    return "\n\n".join(parts) + "\n"
