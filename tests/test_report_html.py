"""reports/report.html (cecl/report/html.py): every table as an HTML table, plots inline, nothing external."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from cecl.report.html import CSP, render_html, write_html_report

REPO = Path(__file__).resolve().parent.parent

BIAS_TABLE = """\
| method   |   bm unbiased |   bm conflicting |
|:---------|--------------:|-----------------:|
| ce       | 36.4 ± 10.8 (n=3) | 29.4 ± 12.1 (n=3) |
| cecl     | 73.5 ± 11.5 (n=3) | 70.7 ± 12.7 (n=3) |
"""
SWEEP_TABLE = """\
| τ / w | 0 | 0.5 | 1 |
|---:|---:|---:|---:|
| 0.05 | **47.6** | 12.0 | 11.0 |
| 0.1 | 30.1 | 13.5 | 17.2 |
"""


def write_png(path: Path, colour: tuple[int, int, int]) -> None:
    """A small non-uniform PNG (gradient plus a box), as the plots would be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (160, 90), "white")
    draw = ImageDraw.Draw(image)
    for x in range(160):
        draw.line([(x, 60), (x, 89)], fill=(x, 255 - x, 128))
    draw.rectangle([20, 10, 70, 50], fill=colour)
    image.save(path)


def sample_report(root: Path) -> tuple[Path, list[list[list[str]]], list[Path]]:
    """reports/report.md laid out as the aggregate stage writes it: (report.md, its tables, its plots).

    Two tables, the convergence plot beside report.md and the sweep's heatmap one folder up (the
    aggregate stage links it as ``../sweep/heatmap.png``), links to provenance.md.
    """
    reports = root / "reports"
    plots = [reports / "convergence.png", root / "sweep" / "heatmap.png"]
    write_png(plots[0], (200, 30, 30))
    write_png(plots[1], (30, 30, 200))
    text = (
        "# CECL reproduction report\n\nSeeds: 0, 1, 2. Provenance: [provenance.md](provenance.md).\n\n"
        f"## Bias benchmarks\n\nCaption.\n\n{BIAS_TABLE}\n## Convergence\n\n"
        "![Online-probe validation accuracy per pretraining epoch](convergence.png)\n\n"
        f"## Sweep\n\n{SWEEP_TABLE}\n![CECL validation accuracy over tau x w](../sweep/heatmap.png)\n"
    )
    report = reports / "report.md"
    report.write_text(text)
    return report, [markdown_table_cells(BIAS_TABLE), markdown_table_cells(SWEEP_TABLE)], plots


def markdown_table_cells(table: str) -> list[list[str]]:
    """Rows of cell texts of one pipe table as a reader sees them (bold and code marks, escapes gone, a
    link ``[text](target)`` read as its text: report.md's cells link to their runs)."""
    rows = [line for line in table.splitlines() if line.startswith("|")]
    del rows[1]  # the alignment row
    split = [re.split(r"(?<!\\)\|", row.strip().strip("|")) for row in rows]
    cells = [[c.strip().replace("\\|", "|").replace("**", "").replace("`", "") for c in row] for row in split]
    return [[re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", c) for c in row] for row in cells]


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table in a Markdown text."""
    blocks = re.findall(r"(?:^\|.*\n?)+", text, flags=re.MULTILINE)
    return [markdown_table_cells(block) for block in blocks]


class _Page(HTMLParser):
    """Collects tables (rows of cell texts), <img> attributes, every tag and attribute, and <style> text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[dict[str, str]] = []
        self.attributes: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self.style = ""
        self._cell: list[str] | None = None
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append({name: value or "" for name, value in attrs})
        elif tag == "style":
            self._in_style = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_style:
            self.style += data


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def test_every_table_is_an_html_table_and_every_plot_is_inline(tmp_path: Path) -> None:
    report, tables, plots = sample_report(tmp_path)
    out = write_html_report(report)
    assert out == report.parent / "report.html"
    page = parse(out.read_text(encoding="utf-8"))
    assert page.tables == tables
    assert len(page.images) == len(plots)
    for image, plot in zip(page.images, plots, strict=True):
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix) :]) == plot.read_bytes()
    assert page.images[0]["alt"] == "Online-probe validation accuracy per pretraining epoch"
    # Column alignment survives (numbers right-aligned as in the Markdown).
    assert ("td", "style", "text-align:right") in page.attributes


def test_nothing_is_loaded_from_outside_the_file(tmp_path: Path) -> None:
    report, _, _ = sample_report(tmp_path)
    text = write_html_report(report).read_text(encoding="utf-8")
    page = parse(text)
    assert not re.search(r"https?://", text), "a http(s) reference in the page"
    assert not {"script", "link", "iframe", "object", "embed", "video", "audio", "source"} & set(page.tags)
    resource_attributes = ("src", "srcset", "poster", "data", "background")
    for tag, name, value in page.attributes:
        if name in resource_attributes:
            assert value.startswith("data:image/"), (tag, name, value[:60])
        if name == "href":  # links navigate, they load nothing; they stay relative
            assert "://" not in value and not value.startswith("//"), value
    assert "url(" not in page.style and "@import" not in page.style
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in text
    assert "default-src 'none'" in CSP and "img-src data:" in CSP


def test_same_inputs_give_the_same_bytes_and_a_changed_plot_changes_them(tmp_path: Path) -> None:
    report, _, plots = sample_report(tmp_path)
    first = write_html_report(report, tmp_path / "a.html").read_bytes()
    second = write_html_report(report, tmp_path / "b.html").read_bytes()
    assert first == second
    write_png(plots[1], (0, 200, 0))
    assert write_html_report(report, tmp_path / "c.html").read_bytes() != first
    assert not list(tmp_path.glob("*.tmp")) and not list(report.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("https://example.org/plot.png", "not a relative file path"),
        ("//example.org/plot.png", "not a relative file path"),
        ("/etc/plot.png", "not a relative file path"),
        ("missing.png", "not found"),
        ("plot.svg", "unsupported type"),
    ],
)
def test_an_image_that_cannot_be_embedded_is_an_error(tmp_path: Path, reference: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_html(f"# R\n\n![plot]({reference})\n", tmp_path)


def test_raw_html_in_the_markdown_is_escaped(tmp_path: Path) -> None:
    page = render_html(
        '# R\n\n<script src="https://x.org/a.js"></script> <img src="http://x.org/p.png">\n', tmp_path
    )
    assert "<script" not in page and "<img" not in page and "&lt;script" in page
    assert parse(page).images == []


def test_title_is_the_first_heading(tmp_path: Path) -> None:
    assert "<title>CECL &amp; friends</title>" in render_html(
        "Intro\n\n# CECL & friends\n\n## Two\n", tmp_path
    )


def test_the_committed_report_renders_every_table(tmp_path: Path) -> None:
    """The repository's own reports/report.md: every table of reports/tables/*.md is in the page."""
    report = REPO / "reports" / "report.md"
    plots = [REPO / "reports" / "convergence.png", REPO / "sweep" / "heatmap.png"]
    if not report.is_file() or not all(p.is_file() for p in plots):
        pytest.skip("the pipeline's report and plots are not in this checkout (dvc pull or make repro)")
    page = parse(write_html_report(report, tmp_path / "report.html").read_text(encoding="utf-8"))
    assert page.tables == markdown_tables(report.read_text())
    tables = sorted((REPO / "reports" / "tables").glob("*.md"))
    assert tables
    for table in tables:
        for cells in markdown_tables(table.read_text()):
            assert cells in page.tables, table.name
    assert sum(img["src"].startswith("data:image/png;base64,") for img in page.images) == len(plots)
