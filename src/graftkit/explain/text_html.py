"""Self-contained HTML for text explanations: one snippet per text, and an index page.

Words are highlighted by their signed attribution, scaled by the text's largest magnitude: red
for evidence *for* the explained class, blue for evidence against. Everything taken from the
user's text is HTML-escaped; styles are inline, so a snippet can be pasted into any page.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

POSITIVE = (220, 38, 38)  # red
NEGATIVE = (37, 99, 235)  # blue
MAX_ALPHA = 0.85


def _colour(value: float, scale: float) -> str:
    if scale <= 0 or value == 0:
        return "transparent"
    r, g, b = POSITIVE if value > 0 else NEGATIVE
    return f"rgba({r},{g},{b},{min(1.0, abs(value) / scale) * MAX_ALPHA:.3f})"


def _word(w: dict[str, Any], scale: float) -> str:
    return (f'<span style="background:{_colour(w["attribution"], scale)};border-radius:3px;'
            f'padding:0 1px" title="{w["attribution"]:+.4f}">{escape(w["word"])}</span>')


def highlight(text: str, words: list[dict[str, Any]]) -> str:
    """The text as written with its attributed words in coloured spans; a tail the model never
    saw (truncated) is shown grey."""
    scale = max((abs(w["attribution"]) for w in words), default=0.0)
    if not words or words[0]["start"] is None:  # no character offsets: the words alone
        return " ".join(_word(w, scale) for w in words)
    parts, pos = [], 0
    for w in words:
        parts += [escape(text[pos:w["start"]]), _word(w, scale)]
        pos = w["end"]
    tail = text[pos:]
    if tail.strip():
        parts.append(f'<span style="color:#999" title="truncated: not seen by the model">'
                     f'{escape(tail)}</span>')
    else:
        parts.append(escape(tail))
    return "".join(parts)


def snippet(record: dict[str, Any], text: str, words: list[dict[str, Any]]) -> str:
    """A ``<div>`` with the highlighted text, the prediction and the faithfulness score."""
    f = record["faithfulness"]
    verdict = "beats" if f["beats_random"] else "does not beat"
    top = ", ".join(f"{escape(t['label'])} {t['prob']:.2f}" for t in record["top"])
    return (
        '<div class="graft-explain" style="font-family:system-ui,sans-serif;max-width:60em;'
        'margin:0 0 1.2em 0">\n'
        f'<div style="font-size:0.9em;color:#333;margin-bottom:0.3em"><b>predicted: '
        f'{escape(record["predicted"])} ({record["prob"]:.2f})</b> · {escape(record["method"])}'
        f' of <b>{escape(record["target"])}</b> ({record["target_prob"]:.2f}) · top: {top}'
        '</div>\n'
        f'<div style="line-height:1.9;font-size:1.05em;white-space:pre-wrap">'
        f'{highlight(text, words)}</div>\n'
        f'<div style="font-size:0.8em;color:#666;margin-top:0.3em">'
        f'<span style="background:rgba({",".join(map(str, POSITIVE))},0.6)">&nbsp;red&nbsp;'
        f'</span> for {escape(record["target"])}, <span style="background:rgba('
        f'{",".join(map(str, NEGATIVE))},0.6)">&nbsp;blue&nbsp;</span> against · deletion AUC '
        f'{f["deletion_auc"]:.3f} vs random {f["deletion_auc_random"]:.3f} ({verdict} random'
        f'){" · truncated" if record.get("truncated") else ""}</div>\n</div>\n')


def page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{escape(title)}</title></head>\n<body style="margin:2em;font-family:'
            f'system-ui,sans-serif">\n<h1 style="font-size:1.3em">{escape(title)}</h1>\n{body}'
            '</body></html>\n')


def index(title: str, entries: list[tuple[dict[str, Any], str]]) -> str:
    """The index page: per text, a link to its files and its snippet inline."""
    body = []
    for record, html in entries:
        name, js = Path(record["html"]).name, Path(record["json"]).name
        body.append(f'<h2 style="font-size:1em;margin-bottom:0.2em"><a href="{escape(name)}">'
                    f'{escape(name)}</a> · <a href="{escape(js)}">JSON</a> · '
                    f'<span style="color:#666;font-weight:normal">{escape(record["input"])}'
                    f'</span></h2>\n{html}')
    return page(title, "".join(body))
