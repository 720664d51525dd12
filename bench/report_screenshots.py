"""Screenshots of `loratune report` for a run or a study, taken in Debian's headless chromium.

    python bench/report_screenshots.py runs/demo2 bench/results/report_run_banking77
    python bench/report_screenshots.py runs/tune bench/results/report_study_banking77
    python bench/report_screenshots.py --scripted bench/results/report_study_scripted

writes <prefix>.html (the report itself), <prefix>.png (the whole page) and <prefix>-<section>.png
(one per section, easier to read). `--scripted` builds the study of the unit tests' scripted world
(no training) in a temporary directory first. Needs chromium (`apt-get install chromium`) and
playwright (the `test` extra); no browser is downloaded.

These files are generated, so git ignores them (.gitignore), except the few section images the
README shows (README_IMAGES): rebuild them here, and commit only those.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-dev-shm-usage"]


# the screenshots kept in git (the README shows them); everything else this script writes is ignored
README_IMAGES = ("report_run_banking77-summary.png", "report_run_banking77-curves.png",
                 "report_study_banking77-summary.png", "report_study_banking77-compute.png")


def scripted_study_dir() -> Path:
    """The unit tests' scripted study (the protocol on scripted trial outcomes), written to a temp dir."""
    import tempfile

    root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(root / "tests"), str(root / "tests" / "unit")]
    from test_report_model import scripted_study

    d = Path(tempfile.mkdtemp(prefix="loratune-scripted-")) / "study"
    scripted_study(d, run_dirs=True)
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", help="run directory or study directory (not with --scripted)")
    ap.add_argument("prefix", help="output prefix, e.g. bench/results/report_run_banking77")
    ap.add_argument("--scripted", action="store_true", help="shoot the scripted study of the unit tests")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--sections", nargs="*", default=None, help="section ids to shoot alone (default: all)")
    args = ap.parse_args(argv)
    if args.scripted == bool(args.path):
        ap.error("give a run or study directory, or --scripted")
    path = scripted_study_dir() if args.scripted else args.path

    from playwright.sync_api import sync_playwright

    from loratune.report import write_report

    prefix = Path(args.prefix)
    html = write_report(path, prefix.with_suffix(".html"))
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
