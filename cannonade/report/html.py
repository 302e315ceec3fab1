"""The report page: plain HTML with inline CSS, relative links only, every text escaped.

The page works offline and from any copy of the report folder: no script, no web font, no
remote resource; images are the PNG files beside ``index.html`` and the table of contents
links to anchors of the page. Builders here return HTML fragments (str); :func:`page`
assembles them into a document.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["esc", "fmt", "table_html", "mapping_table", "figure_html", "Section", "page", "CSS"]

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 0 1.2em 3em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-top: 1em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.4em; }
nav ol { columns: 2; font-size: .95em; } nav a { text-decoration: none; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.tw { overflow-x: auto; max-width: 100%; } td { overflow-wrap: anywhere; }
caption { caption-side: top; text-align: left; font-weight: bold; padding-bottom: .3em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #333; } pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .8em; }
.note { color: #7a4b00; background: #fff6e0; border-left: 4px solid #e0a400; padding: .4em .8em; }
.meta { color: #555; font-size: .9em; }
"""


def esc(text):
    """``text`` as HTML text (``&``, ``<``, ``>`` and quotes escaped)."""
    return html.escape("" if text is None else str(text), quote=True)


def fmt(value, digits=4):
    """A cell value as text: floats to ``digits`` significant digits, NaN/None as an en dash, bytes decoded."""
    if value is None:
        return "–"
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "–"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v, digits)}" for k, v in value.items())
    return str(value)


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def table_html(columns, rows, caption=None, digits=4):
    """An HTML table.

    Parameters
    ----------
    columns : sequence of str
        Header cells (no header row when all are empty).
    rows : iterable of sequences
        One sequence of cell values per row (formatted with :func:`fmt`, numbers right-aligned).
    caption : str, optional
    digits : int
        Significant digits of floats.
    """
    out = ['<div class="tw"><table>']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    if any(str(c) for c in columns):
        out.append("<thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        cells = []
        for v in row:
            cls = ' class="num"' if _is_number(v) else ""
            cells.append(f"<td{cls}>{esc(fmt(v, digits))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def mapping_table(mapping, key_header="", value_header="", caption=None):
    """A two-column HTML table of a dict's items."""
    return table_html([key_header, value_header], [(k, v) for k, v in mapping.items()], caption=caption)


def figure_html(src, caption, number, anchor):
    """A figure: the image (linked to itself at full size) and its numbered one-line caption.

    Parameters
    ----------
    src : str
        The image's file name, relative to the page.
    caption : str
    number : int
    anchor : str
        The figure's id (for links to it).
    """
    return (f'<figure id="{esc(anchor)}"><a href="{esc(src)}"><img src="{esc(src)}" alt="{esc(caption)}"></a>'
            f"<figcaption><b>Figure {int(number)}.</b> {esc(caption)}</figcaption></figure>")


@dataclass
class Section:
    """A section of the page: its anchor, heading and HTML body."""

    anchor: str
    title: str
    body: str


def page(title, sections, subtitle=""):
    """The whole HTML document: title, table of contents (anchor links), the sections.

    Parameters
    ----------
    title : str
    sections : sequence of Section
    subtitle : str, optional
        A line under the title (escaped).
    """
    toc = "".join(f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>' for s in sections)
    body = "\n".join(f'<section><h2 id="{esc(s.anchor)}">{esc(s.title)}</h2>\n{s.body}\n</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f'<h1 id="top">{esc(title)}</h1>\n<p class="meta">{esc(subtitle)}</p>\n'
        f"<nav><ol>{toc}</ol></nav>\n{body}\n</body>\n</html>\n"
    )
