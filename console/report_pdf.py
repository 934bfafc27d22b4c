"""The alarm register as a PDF for filing: a title block (region, period, when and by
whom it was generated), the register table with its heading repeated on every page, and
page numbers. Laid out by reportlab with the CJK font WenQuanYi Micro Hei, which the
Debian package ``fonts-wqy-microhei`` installs (``make system-deps``)."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from console.labels import TITLES

CJK_FONT_PATH = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
CJK_FONT_PACKAGE = "fonts-wqy-microhei"
FONT = "WQY"
# Relative widths of the register's 16 columns (notes widest), scaled to the page.
_WIDTHS = (9, 6, 5, 6, 6, 7, 7, 5, 5, 5, 7, 5, 7, 6, 15, 4)
_registered: set[str] = set()
_register_lock = threading.Lock()


class ReportFontMissing(RuntimeError):
    """The CJK font file is absent; ``path`` and ``package`` say what to install."""

    def __init__(self, path: Path):
        super().__init__(f"the PDF font {path} is missing: install the Debian package "
                         f"{CJK_FONT_PACKAGE} (make system-deps)")
        self.path = path
        self.package = CJK_FONT_PACKAGE


@dataclass(frozen=True)
class ReportTitle:
    """What the title block says: region (name and adcode), period, generated at, by,
    and the zone every time is written in."""

    region: str
    period: str
    generated_at: str
    generated_by: str
    zone: str


def register_font(path: Path | None = None) -> str:
    """Register the CJK font at ``path`` (None: :data:`CJK_FONT_PATH`) with reportlab
    once; its reportlab name. :class:`ReportFontMissing` if the file is absent."""
    path = CJK_FONT_PATH if path is None else path
    if not path.is_file():
        raise ReportFontMissing(path)
    with _register_lock:
        if str(path) not in _registered:
            pdfmetrics.registerFont(TTFont(FONT, str(path), subfontIndex=0))
            _registered.add(str(path))
    return FONT


def _cell(text: str, style: ParagraphStyle) -> Paragraph:
    # Paragraph markup is XML-like: escape what an operator's note may contain.
    return Paragraph(escape(text).replace("\n", "<br/>"), style)


def to_pdf(table: list[list[str]], title: ReportTitle, lang: str, *,
           font_path: Path | None = None) -> bytes:
    """The register ``table`` (heading row first, see
    :func:`console.report.register_table`) as PDF bytes, A4 landscape."""
    font = register_font(font_path)
    words = TITLES[lang]
    cell = ParagraphStyle("cell", fontName=font, fontSize=6.5, leading=8, wordWrap="CJK")
    head = ParagraphStyle("head", parent=cell, textColor=colors.white)
    big = ParagraphStyle("title", fontName=font, fontSize=15, leading=19)
    line = ParagraphStyle("line", fontName=font, fontSize=9, leading=12)
    out = io.BytesIO()
    doc = SimpleDocTemplate(out, pagesize=landscape(A4), leftMargin=10 * mm,
                            rightMargin=10 * mm, topMargin=12 * mm, bottomMargin=14 * mm,
                            title=words["title"], author=title.generated_by)
    scale = doc.width / sum(_WIDTHS)
    rows = [[_cell(c, head) for c in table[0]]] + \
        [[_cell(c, cell) for c in row] for row in table[1:]]
    grid = Table(rows, colWidths=[w * scale for w in _WIDTHS], repeatRows=1)
    grid.setStyle(TableStyle([
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#334155")),
        ("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]))
    story = [Paragraph(escape(words["title"]), big), Spacer(1, 2 * mm)] + [
        Paragraph(escape(f"{words[k]}：{v}"), line) for k, v in (
            ("region", title.region), ("period", title.period),
            ("generated", title.generated_at), ("by", title.generated_by),
            ("zone", title.zone), ("count", str(len(table) - 1)))] + [Spacer(1, 3 * mm), grid]

    def number(canvas, document) -> None:
        canvas.saveState()
        canvas.setFont(font, 8)
        canvas.drawCentredString(landscape(A4)[0] / 2, 7 * mm,
                                 words["page"].format(n=document.page))
        canvas.restoreState()

    doc.build(story, onFirstPage=number, onLaterPages=number)
    return out.getvalue()

