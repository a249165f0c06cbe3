"""reports/report.html: report.md as one self-contained page that opens offline, plots included.

report.md is rendered with markdown-it-py (CommonMark plus GFM pipe tables, raw HTML escaped), every
image it references is read from disk and embedded as a base64 ``data:`` URI, and the only style is
one inline ``<style>`` block. A Content-Security-Policy ``<meta>`` tells the browser to load nothing
from anywhere, so a reference that slipped in would show as broken instead of reaching the network.
The output depends only on report.md and the image bytes (no timestamps): equal inputs, equal bytes.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token

from cecl.io import write_text_atomic

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
# Nothing may be fetched: images are data: URIs, the style is inline (style attributes carry the
# tables' column alignment), no scripts, fonts, frames or connections.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #1b1b1b; }
table { border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #c8c8c8; padding: 0.25rem 0.6rem; }
thead th { background: #f0f0f0; }
tbody tr:nth-child(even) { background: #fafafa; }
img { max-width: 100%; height: auto; }
code { background: #f3f3f3; padding: 0 0.2rem; border-radius: 3px; }
""".strip()


def image_data_uri(src: str, base_dir: Path) -> str:
    """The image at ``src`` (relative to ``base_dir``) as a base64 data URI.

    Raises ValueError for a remote or absolute reference, an unknown image type or a missing file: the
    page must not depend on anything but itself.
    """
    parts = urlsplit(src)
    if parts.scheme or parts.netloc or src.startswith("/"):
        raise ValueError(f"report image {src!r} is not a relative file path; it cannot be embedded")
    path = base_dir / unquote(parts.path)
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"report image {src!r}: unsupported type {path.suffix!r} (one of {sorted(MIME)})")
    if not path.is_file():
        raise ValueError(f"report image {src!r} not found at {path}")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _embedded_image(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: Any, env: dict[str, Any]
) -> str:
    """markdown-it render rule: the default <img>, with its file replaced by a data URI."""
    token = tokens[idx]
    token.attrSet("src", image_data_uri(str(token.attrGet("src") or ""), env["base_dir"]))
    return RendererHTML.image(self, tokens, idx, options, env)


def _title(markdown_text: str) -> str:
    """The first level-1 heading, else a generic title."""
    found = re.search(r"^# (.+)$", markdown_text, flags=re.MULTILINE)
    return found.group(1).strip() if found else "Report"


def render_html(markdown_text: str, base_dir: Path) -> str:
    """The complete HTML document for ``markdown_text``, images resolved relative to ``base_dir``."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("image", _embedded_image)
    body = md.render(markdown_text, {"base_dir": Path(base_dir)})
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(_title(markdown_text))}</title>\n"
        f"<style>\n{STYLE}\n</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def write_html_report(report_md: Path, out: Path | None = None) -> Path:
    """Render ``report_md`` to ``out`` (default: report.html beside it) and return the path written."""
    report_md = Path(report_md)
    out = Path(out) if out is not None else report_md.with_suffix(".html")
    page = render_html(report_md.read_text(encoding="utf-8"), report_md.parent)
    write_text_atomic(out, page)
    return out
