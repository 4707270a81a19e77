"""HTML helpers of the report: escaped tables, inlined PNG images and thumbnail placeholders, the page template."""

from __future__ import annotations

import base64
import html
import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)


def html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An escaped HTML table that wraps long cells instead of scrolling sideways."""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='kv'><tbody>{body}</tbody></table>"


def img_tag(png: bytes, alt: str) -> str:
    return f'<img class="plot" src="{_data_uri(png)}" alt="{html.escape(alt)}">'


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def placeholder(key: str) -> str:
    return f"@@thumb:{html.escape(key)}@@"


def fill_thumbnails(body: str, thumbs: dict[str, bytes]) -> str:
    """Replace every thumbnail placeholder by its data URI (a 1x1 grey PNG where the image was not found)."""
    grey = _data_uri(_GREY_PIXEL)
    return _PLACEHOLDER_RE.sub(
        lambda m: _data_uri(thumbs[k]) if (k := html.unescape(m.group(1))) in thumbs else grey, body
    )


_PLACEHOLDER_RE = re.compile(r"@@thumb:([^@]*)@@")


def value_counts(arr: pa.ChunkedArray) -> dict[str, int]:
    return {str(d["values"]): int(d["counts"]) for d in pc.value_counts(arr).to_pylist()}


def finite(v: Any, default: float = float("nan")) -> float:
    if v is None:
        return default
    f = float(v)
    return f if np.isfinite(f) else default


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    f = float(v)
    return "—" if not np.isfinite(f) else f"{f:.3f}"


_GREY_PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;width:100%;table-layout:fixed;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;overflow-wrap:anywhere;word-break:break-word}
th{background:#f3f3f3}table.kv th{width:11em}
img.plot{max-width:100%;height:auto;display:block;margin:.5em 0}
.gallery,.cluster{display:flex;flex-wrap:wrap;gap:6px;margin:.3em 0}
.cluster{border:1px dashed #bbb;padding:4px;display:inline-flex;margin-right:8px}
figure{margin:0;width:100px;text-align:center}
figure img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#eee}
figcaption{font-size:.7em;overflow-wrap:anywhere}
.empty{color:#888;font-style:italic}
"""


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body>
{body}
</body></html>
"""
