"""Render a report.html to one PNG without a browser: WeasyPrint lays the page
out on one tall PDF page, pypdfium2 rasterizes it, Pillow trims the blank
bottom and reduces the palette. Not a project dependency and not used by the
tests; in a scratch venv: ``pip install weasyprint pypdfium2``.

    python scripts/report_png.py results/report-quickstart/report.html docs/report.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image, ImageChops
from weasyprint import CSS, HTML

PAGE = "@page { size: 1150px 30000px; margin: 12px }"


def main(html: str, png: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pdf = Path(tmp) / "report.pdf"
        HTML(filename=html).write_pdf(pdf, stylesheets=[CSS(string=PAGE)])
        page = pdfium.PdfDocument(str(pdf))[0]
        im = page.render(scale=1.0).to_pil().convert("RGB")
    box = ImageChops.difference(im, Image.new("RGB", im.size, "white")).getbbox()
    if box is not None:
        im = im.crop((0, 0, im.width, min(im.height, box[3] + 20)))
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
    print(f"wrote {png} ({im.width}x{im.height})")


if __name__ == "__main__":
    main(*sys.argv[1:3])
