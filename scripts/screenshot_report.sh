#!/usr/bin/env bash
# Render a study's report and take a full-page screenshot of it with headless
# Chromium (Debian: apt-get install chromium), or without a browser through
# scripts/report_png.py (WeasyPrint; SHOT_PYTHON names a python that has
# weasyprint and pypdfium2). Not used by the tests.
#   bash scripts/screenshot_report.sh [STUDY] [ROOT] [OUT_PNG]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
study="${1:-quickstart}"
root="${2:-results/store}"
png="${3:-docs/report.png}"
out="results/report-${study}"
.venv/bin/steer-sweep -q report "$study" --root "$root" --out "$out"
mkdir -p "$(dirname "$png")"
if ! command -v chromium >/dev/null; then
    exec "${SHOT_PYTHON:-python3}" scripts/report_png.py "$out/report.html" "$png"
fi
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --screenshot="$png" --window-size=1200,5600 "file://$PWD/$out/report.html" 2>/dev/null
echo "wrote $png"
