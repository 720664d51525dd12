"""Screenshots of `loratune report` for a run or a study, taken in Debian's headless chromium.

    python bench/report_screenshots.py runs/demo2 bench/results/report_run_banking77
    python bench/report_screenshots.py runs/tune bench/results/report_study_banking77

writes <prefix>.html (the report itself), <prefix>.png (the whole page) and <prefix>-<section>.png
(one per section, easier to read). Needs chromium (`apt-get install chromium`) and playwright
(the `test` extra); no browser is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-dev-shm-usage"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="run directory or study directory")
    ap.add_argument("prefix", help="output prefix, e.g. bench/results/report_run_banking77")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--sections", nargs="*", default=None, help="section ids to shoot alone (default: all)")
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from loratune.report import write_report

    prefix = Path(args.prefix)
    html = write_report(args.path, prefix.with_suffix(".html"))
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": 900}, device_scale_factor=1)
        page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(html.resolve().as_uri())
        page.wait_for_selector("html[data-ready='1']")
        page.screenshot(path=str(prefix.with_suffix(".png")), full_page=True)
        page.add_style_tag(content="nav.toc { position: static; }")  # no sticky bar over section shots
        ids = args.sections or page.eval_on_selector_all("main section.card[id]", "els => els.map(e => e.id)")
        for sid in ids:
            page.locator(f"#{sid}").screenshot(path=str(prefix.parent / f"{prefix.name}-{sid}.png"))
        browser.close()
    print(f"{html} ({html.stat().st_size / 1024:.0f} KiB), screenshots {prefix}*.png")
    for line in problems:
        print("browser:", line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
