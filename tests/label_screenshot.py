"""Regenerate docs/label.png, the labeling page (docs/labeling.md): ``python tests/label_screenshot.py docs/label.png``.

Serves a few example items from a scratch database, ranks two through the page, arranges the third
(a move, a tie, scores, an open flag list) and saves the page as a small palette PNG.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from label_support import CHROMIUM, CHROMIUM_ARGS, threaded_server, write_samples  # noqa: E402

EXAMPLES = [
    {"prompt": "Put these letters in alphabetical order: k h u p m\nAnswer:",
     "responses": [" h k m p u", " h k m p u, there you go", " k h u p m", " h k p u"]},
    {"prompt": "Compute 18 minus 6.\nAnswer:", "responses": [" 12", " 12, hope that helps!", " 24", " 11"]},
    {"prompt": "Explain in one sentence why the sky is blue, for a ten-year-old.",
     "responses": [
         "Sunlight is made of all colours, and the air scatters the blue part much more than the red, so blue light "
         "reaches your eyes from every direction of the sky.",
         "Because the ocean reflects onto it.",
         "Air scatters blue light more than other colours, so the sky looks blue. <b>Fun fact</b>: sunsets are red "
         "for the same reason.",
         "Light from the Sun bounces off tiny bits of air; blue bounces around the most, so that is the colour we see.",
     ]},
]


def main(out: str) -> None:
    from playwright.sync_api import sync_playwright
    from PIL import Image

    from lit_rlhf.label.storage import LabelStore

    with tempfile.TemporaryDirectory() as scratch:
        store = LabelStore(Path(scratch) / "labels.db")
        store.import_samples(str(write_samples(Path(scratch) / "samples.jsonl", EXAMPLES)))
        with threaded_server(store) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1180, "height": 960})
            page.goto(url + "/")
            page.fill("#login-name", "ann")
            page.click("#login-form button[type=submit]")
            page.wait_for_selector("#cards .card")
            for _ in range(2):
                item = page.text_content("#item-meta")
                page.keyboard.press("Enter")
                page.wait_for_function("m => document.querySelector('#item-meta').textContent !== m", arg=item)
            for key in ("4", "Shift+ArrowUp", "Shift+ArrowUp", "Shift+ArrowUp", "Shift+Digit7", "2", "Shift+Digit6",
                        "3", "Equal", "Shift+Digit6", "4", "Shift+Digit2", "1"):
                page.keyboard.press(key)
            page.locator("#cards .card").nth(3).locator("details.flags summary").click()
            page.locator("#cards .card").nth(3).get_by_label("Hallucination").check()
            page.locator("#cards .card").nth(3).get_by_label("Fails to follow the correct instruction / task").check()
            page.mouse.move(0, 0)
            png = Path(scratch) / "page.png"
            page.screenshot(path=str(png))
            browser.close()
        # A 256-colour palette keeps the file small; the page is flat colours and text.
        Image.open(png).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"wrote {out} ({Path(out).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/label.png")
