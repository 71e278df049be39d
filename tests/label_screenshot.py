"""Regenerate the docs' screenshots of the labeling app: ``python tests/label_screenshot.py docs``.

Writes ``label.png`` and ``label_phone.png`` (the ranking page, desktop 1180x960 and phone 390x844) and
``label_pairs.png`` and ``label_pairs_phone.png`` (the side-by-side page) into the given directory (a
``.png`` path names its directory). Serves a few example items from a scratch database, judges some
through the page, arranges the next one and saves each page as a small palette PNG.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from label_support import CHROMIUM, CHROMIUM_ARGS, threaded_server, write_samples  # noqa: E402

DESKTOP = {"viewport": {"width": 1180, "height": 960}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 1}

EXAMPLES = [
    {
        "prompt": "Put these letters in alphabetical order: k h u p m\nAnswer:",
        "responses": [" h k m p u", " h k m p u, there you go", " k h u p m", " h k p u"],
    },
    {"prompt": "Compute 18 minus 6.\nAnswer:", "responses": [" 12", " 12, hope that helps!", " 24", " 11"]},
    {
        "prompt": "Explain in one sentence why the sky is blue, for a ten-year-old.",
        "responses": [
            "Sunlight is made of all colours, and the air scatters the blue part much more than the red, so blue light "
            "reaches your eyes from every direction of the sky.",
            "Because the ocean reflects onto it.",
            "Air scatters blue light more than other colours, so the sky looks blue. <b>Fun fact</b>: sunsets are red "
            "for the same reason.",
            "Light from the Sun bounces off tiny bits of air;\u200b blue bounces around the most, so that is the "
            "colour we see.",
        ],
    },
]


PAIRS = [
    {
        "id": "e1",
        "prompt": "Compute 7 times 8.\nAnswer:",
        "policy_a": "ppo",
        "response_a": " 56",
        "policy_b": "sft",
        "response_b": " 56, there you go",
    },
    {
        "id": "e2",
        "prompt": "Write a haiku about autumn leaves.",
        "policy_a": "ppo",
        "response_a": "Red leaves drift and fall\nthe maple lets go of them\nwind carries them home",
        "policy_b": "sft",
        "response_b": "Autumn leaves are falling down, they are red and yellow and brown. Here is a haiku:\n"
        "Leaves fall in autumn\nThey are red and also brown\nAutumn leaves fall down\u200b",
    },
]


def shoot(page, out: Path) -> None:
    from PIL import Image

    page.mouse.move(0, 0)
    png = out.with_suffix(".raw.png")
    page.screenshot(path=str(png))
    # A 256-colour palette keeps the file small; the page is flat colours and text.
    Image.open(png).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    png.unlink()
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


def login(page, url: str, name: str) -> None:
    page.goto(url + "/")
    page.fill("#login-name", name)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#cards .card")


def next_item(page, key: str = "Enter") -> None:
    item = page.text_content("#item-meta")
    page.keyboard.press(key)
    page.wait_for_function("m => document.querySelector('#item-meta').textContent !== m", arg=item)


def ranking_page(browser, url: str, out: Path, options: dict, name: str) -> None:
    context = browser.new_context(**options)
    page = context.new_page()
    login(page, url, name)
    for _ in range(2):
        next_item(page)
    for key in (
        "4",
        "Shift+ArrowUp",
        "Shift+ArrowUp",
        "Shift+ArrowUp",
        "Shift+Digit7",
        "2",
        "Shift+Digit6",
        "3",
        "Equal",
        "Shift+Digit6",
        "4",
        "Shift+Digit2",
        "1",
    ):
        page.keyboard.press(key)
    if options is DESKTOP:
        page.locator("#cards .card").nth(3).locator("details.flags summary").click()
        page.locator("#cards .card").nth(3).get_by_label("Hallucination").check()
        page.locator("#cards .card").nth(3).get_by_label("Fails to follow the correct instruction / task").check()
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, out)
    context.close()


def pairs_page(browser, url: str, out: Path, options: dict, name: str) -> None:
    context = browser.new_context(**options)
    page = context.new_page()
    login(page, url, name)
    page.keyboard.press("ArrowLeft")
    next_item(page)
    left_is_haiku = page.text_content("#cards .card:first-child .text").startswith("Red leaves")
    page.click(f"#choice button[data-choice={'left' if left_is_haiku else 'right'}]")  # the side is a coin toss
    page.locator("#cards .card").nth(0).locator(".score button").nth(5 if left_is_haiku else 2).click()
    page.locator("#cards .card").nth(1).locator(".score button").nth(2 if left_is_haiku else 5).click()
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, out)
    context.close()


def main(out: str) -> None:
    from playwright.sync_api import sync_playwright

    from lit_rlhf.label.storage import LabelStore

    folder = Path(out)
    if folder.suffix == ".png":
        folder = folder.parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        shots = [
            (ranking_page, "label.png", DESKTOP),
            (ranking_page, "label_phone.png", PHONE),
            (pairs_page, "label_pairs.png", DESKTOP),
            (pairs_page, "label_pairs_phone.png", PHONE),
        ]
        for n, (shot, name, options) in enumerate(shots):  # a fresh database each: the same labeler, the same page
            store = LabelStore(Path(scratch) / f"labels{n}.db")
            if shot is ranking_page:
                store.import_samples(str(write_samples(Path(scratch) / "samples.jsonl", EXAMPLES)))
            else:
                store.import_pairs(str(write_samples(Path(scratch) / "pairs.jsonl", PAIRS)))
            with threaded_server(store) as url:
                shot(browser, url, folder / name, options, "ann")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs")
