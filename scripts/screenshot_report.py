#!/usr/bin/env python3
"""Look at the report as a reader does: headless Chromium screenshots of the top of index.html and of chosen
figures, to check before committing a report.

    python scripts/screenshot_report.py reports/index.html --out /tmp/shots --figures 'Dynamic minus static,Latency'

Needs Chromium (Debian: `apt-get install chromium`) and the `playwright` Python package (`pip install
playwright`; it drives the system Chromium, nothing is downloaded). Writes top.png (the first 1280x1400 px)
and one PNG per figure (the first image whose alt text contains the given words, as laid out on the
page); prints what it wrote and any image that failed to load.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("html", type=Path)
    p.add_argument("--out", type=Path, default=Path("/tmp/report_shots"))
    p.add_argument("--figures", default="",
                   help="comma-separated words of figure alt texts (the captions' first words)")
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    a = p.parse_args(argv)
    if not a.html.is_file():
        print(f"error: no report at {a.html}. Fix: build it with `robustdyn report --out DIR`", file=sys.stderr)
        return 2
    if not a.chromium:
        print("error: no Chromium found. Fix: `apt-get install chromium` or pass --chromium PATH", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    a.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(a.html.resolve().as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(a.out / "top.png"))
        print(a.out / "top.png")
        broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                               ".map(i => i.alt || i.src.slice(0, 60))")
        print(f"{page.evaluate('document.images.length')} images, {len(broken)} not loaded" +
              (f": {broken}" if broken else ""))
        for name in filter(None, (s.strip() for s in a.figures.split(","))):
            loc = page.locator(f"img[alt*='{name}']")
            if loc.count() == 0:
                print(f"no figure matching {name!r}")
                continue
            el = loc.first
            el.scroll_into_view_if_needed()
            path = a.out / (re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ".png")
            el.screenshot(path=str(path))
            print(path)
        browser.close()
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
