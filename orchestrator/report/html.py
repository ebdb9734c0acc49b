"""HTML for the report: one page, inline CSS, no scripts, every text escaped."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 1.5em auto; color: #222;
       line-height: 1.4; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
.meta { color: #555; font-size: 0.9em; }
.missing { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.6em 1em; }
.caption { color: #444; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.gen { white-space: pre-wrap; font-family: ui-monospace, monospace; max-width: 32em; }
.gen-stop { color: #666; font-size: 0.85em; }
"""


@dataclass
class Section:
    """One part of the page: a figure (a file under the report folder) or a
    message saying what is missing, a caption, and optional extra HTML."""

    title: str
    figure: str | None = None  # path relative to the report folder
    missing: str = ""
    caption: str = ""
    extra: str = ""
    anchor: str = ""  # id of the section's heading, for links within the page


@dataclass(frozen=True)
class Markup:
    """A table cell that is already HTML, built from escaped parts (see
    ``link``, ``cell_html``); ``table`` puts it in as is."""

    html: str


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def link(anchor: str, text: object) -> Markup:
    """A link to the element with id ``anchor`` on this page."""
    return Markup(f'<a href="#{esc(anchor)}">{esc(text)}</a>')


def cell_html(x: Any) -> str:
    """The inside of a table cell: ``Markup`` as is, anything else formatted
    (``fmt``) and escaped."""
    return x.html if isinstance(x, Markup) else esc(fmt(x))


def fmt(x: Any) -> str:
    """A table cell: floats to 4 significant digits, missing values blank."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], headers: Sequence[str] = ()
) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in (headers or columns))
    body = []
    for row in rows:
        cells = []
        for x in row:
            num = isinstance(x, int | float) and not isinstance(x, bool)
            cells.append(f"<td{' class=num' if num else ''}>{cell_html(x)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def frame_table(frame: Any, columns: Sequence[str], headers: Sequence[str] = ()) -> str:
    cols = [c for c in columns if c in frame.columns]
    heads = [h for c, h in zip(columns, headers or columns, strict=True) if c in frame.columns]
    rows = [[_plain(x) for x in r] for r in frame[cols].itertuples(index=False)]
    return table(cols, rows, heads)


def _plain(x: Any) -> Any:
    """numpy scalars to Python ones, so cells format the same."""
    return x.item() if hasattr(x, "item") and not isinstance(x, str) else x


def message(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def render(
    *,
    title: str,
    meta: Sequence[str],
    notes: Sequence[str],
    sections: Sequence[Section],
    out_dir: Path,
    embed: bool,
) -> str:  # fmt: skip
    """The page. ``embed`` inlines the PNGs as data URIs (a single file);
    otherwise images are referenced relative to ``out_dir``."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        *(f'<p class="meta">{esc(m)}</p>' for m in meta),
        *(message(n) for n in notes),
    ]
    for s in sections:
        anchor = f' id="{esc(s.anchor)}"' if s.anchor else ""
        parts.append(f"<h2{anchor}>{esc(s.title)}</h2>")
        if s.figure:
            src = s.figure
            if embed:
                data = base64.b64encode((out_dir / s.figure).read_bytes()).decode()
                src = f"data:image/png;base64,{data}"
            parts.append(f'<img src="{esc(src)}" alt="{esc(s.title)}" data-file="{esc(s.figure)}">')
        elif s.missing:
            parts.append(message(s.missing))
        if s.caption:
            parts.append(f'<p class="caption">{esc(s.caption)}</p>')
        parts.append(s.extra)
    parts.append("</body></html>")
    return "\n".join(parts)
