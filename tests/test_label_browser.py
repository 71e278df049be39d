"""The labeling app in a real headless Chromium (Debian's), driven by Playwright.

Run by ``.ci/run`` (``pytest -m browser``), which installs the browser when it is missing.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from label_support import CHROMIUM, CHROMIUM_ARGS, start_server_process, threaded_server, write_samples
from lit_rlhf.cli import main
from lit_rlhf.label.storage import LabelStore
from lit_rlhf.sandbox.paths import BASE_MODEL_DIR, DATA_DIR

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install -y chromium (.ci/run does this)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 1600})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    yield page
    context.close()


def login(page, url: str, name: str) -> None:
    page.goto(url + "/")
    page.fill("#login-name", name)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#cards .card")


def card_order(page) -> list[int]:
    return [int(i) for i in page.eval_on_selector_all("#cards .card", "cards => cards.map(c => c.dataset.index)")]


def current_item(page) -> int:
    return int(page.text_content("#item-meta").split("item ")[1].split(" ")[0])


def wait_for_next(page, previous_item: int) -> None:
    page.wait_for_function(
        "previous => { const m = document.querySelector('#item-meta'); return !document.querySelector('#task').hidden"
        " && m && !m.textContent.includes(`item ${previous} `) || !document.querySelector('#done').hidden }",
        arg=previous_item,
    )


def stored(db: Path) -> dict[int, dict]:
    """Judgments of 'ann' as a fresh reader sees them on disk."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM judgments WHERE labeler = 'ann'").fetchall()
    return {row["item_id"]: dict(row) for row in rows}


def test_rank_by_mouse_and_keyboard_survive_sigkill_then_export_trains_the_rm(in_scratch_dir, page):
    samples = in_scratch_dir / "runs/comparisons/samples.jsonl"
    main(["sample", "--model", str(BASE_MODEL_DIR), "--prompts", str(DATA_DIR / "prompts_train.jsonl"),
          "--out", str(samples), "--k", "4", "--limit", "16", "--max_new_tokens", "16", "--seed", "1"])
    # A tiny base model often repeats itself: keep the lines with at least 3 distinct responses, so every
    # gesture below (a drag past two cards, a tie between the 2nd and 3rd) applies.
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    lines = [line for line in lines if len({r for r in line["responses"] if r.strip()}) >= 3]
    assert len(lines) >= 4
    write_samples(samples, lines)
    db = in_scratch_dir / "labels.db"
    server, url = start_server_process(db, samples)
    try:
        login(page, url, "ann")
        # Item A, with the mouse: drag the last card to the top, tie the third with the second, score, flag.
        item_a, order = current_item(page), card_order(page)
        cards = page.locator("#cards .card")
        source = cards.nth(len(order) - 1).locator(".grip").bounding_box()
        target = cards.nth(0).bounding_box()
        page.mouse.move(source["x"] + source["width"] / 2, source["y"] + source["height"] / 2)
        page.mouse.down()
        page.mouse.move(target["x"] + 60, target["y"] + 4, steps=15)
        page.mouse.up()
        order_a = [order[-1]] + order[:-1]
        assert card_order(page) == order_a
        cards.nth(0).locator(".score button").nth(5).click()  # score 6 for the new best
        cards.nth(0).locator("details.flags summary").click()
        cards.nth(0).get_by_label("Hallucination").check()
        cards.nth(2).locator("button.tie").click()
        assert page.text_content("#cards .card:nth-child(3) .rank") == "=2"
        page.click("#submit")
        wait_for_next(page, item_a)

        # Item B, keyboard only: select card 2, move it to the top, tie the next one to it, score it 3,
        # flag it (F opens its flags, Space ticks the first, Esc goes back to the cards), Enter.
        item_b, order = current_item(page), card_order(page)
        for key in ("2", "Shift+ArrowUp", "ArrowDown", "Equal", "Shift+Digit3", "f", "Space", "Escape", "Enter"):
            page.keyboard.press(key)
        wait_for_next(page, item_b)
        groups_b = [[order[1], order[0]], *[[i] for i in order[2:]]]

        # Item C: start work, then the server dies (SIGKILL) before it is submitted.
        item_c = current_item(page)
        page.keyboard.press("Shift+ArrowDown")
        on_disk = stored(db)
        assert set(on_disk) == {item_a, item_b}
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        on_disk = stored(db)  # read from the file after the kill: every acknowledged judgment is there
        expected_a = [[order_a[0]], [order_a[1], order_a[2]], *[[i] for i in order_a[3:]]]
        assert json.loads(on_disk[item_a]["ranking"]) == [sorted(g) for g in expected_a]
        assert json.loads(on_disk[item_a]["scores"])[order_a[0]] == 6
        assert json.loads(on_disk[item_a]["flags"])[order_a[0]] == ["hallucination"]
        assert json.loads(on_disk[item_b]["ranking"]) == [sorted(g) for g in groups_b]
        assert json.loads(on_disk[item_b]["scores"])[order[0]] == 3
        assert json.loads(on_disk[item_b]["flags"])[order[0]] == ["fails_instruction"]

        # Restart on another port: the session cookie still works and ann is back on item C.
        server, url = start_server_process(db)
        page.goto(url + "/")
        page.wait_for_selector("#cards .card")
        assert current_item(page) == item_c
        page.wait_for_function("document.querySelectorAll('#history li').length === 2")  # A and B, in the history

        # Back to B (its judgment is shown), undo the tie, resubmit: revision 2; then rank C and skip D.
        page.keyboard.press("b")
        page.wait_for_selector("#editing:not([hidden])")
        assert current_item(page) == item_b and card_order(page) == [i for g in groups_b for i in sorted(g)]
        assert page.text_content("#cards .card:nth-child(2) .rank") == "=1"
        for key in ("2", "Equal", "Enter"):
            page.keyboard.press(key)
        page.wait_for_selector("#editing", state="hidden")
        assert current_item(page) == item_c
        page.click("details.rewrite summary")  # C also gets a rewrite: an SFT demonstration
        page.fill("#rewrite", "A better answer, written by ann")
        page.keyboard.press("Escape")  # from the text box back to the cards; Enter submits
        page.keyboard.press("Enter")
        wait_for_next(page, item_c)
        item_d = current_item(page)
        page.keyboard.press("s")
        wait_for_next(page, item_d)
        assert page.text_content("#progress-text").startswith("3 ranked · 1 skipped")
        assert page.errors == []
    finally:
        server.kill()
        server.wait(timeout=30)

    on_disk = stored(db)
    assert on_disk[item_b]["revision"] == 2 and len(json.loads(on_disk[item_b]["ranking"])) == len(order)
    assert on_disk[item_c]["status"] == "ranked" and on_disk[item_d]["status"] == "skipped"

    main(["label", "export", "--db", str(db), "--out", "runs/comparisons/train.jsonl",
          "--val_out", "runs/comparisons/val.jsonl", "--val_fraction", "0.34", "--demonstrations_out", "demos_from_ann.jsonl"])
    (demo,) = [json.loads(line) for line in open("demos_from_ann.jsonl")]
    assert demo["response"] == "A better answer, written by ann" and demo["prompt"]
    exported = [json.loads(line) for name in ("train", "val") for line in open(f"runs/comparisons/{name}.jsonl")]
    assert len(exported) == 3 and all(r["labeler"] == "ann" for r in exported)
    os.makedirs("runs/sft")
    os.symlink(BASE_MODEL_DIR, "runs/sft/model")
    demos = [json.loads(line) for line in open(DATA_DIR / "sft_train.jsonl")][:50]
    write_samples(in_scratch_dir / "demos.jsonl", demos)
    # configs/rm.yaml as shipped; only its data paths point elsewhere (train/val are its defaults already).
    main(["fit", "--config", "configs/rm.yaml", "--data.init_args.center_on", "demos.jsonl",
          "--data.init_args.batch_size", "1", "--trainer.enable_progress_bar", "false"])
    assert json.loads(open("runs/rm/model/config.json").read())["reward_bias"] != 0.0


def test_hostile_responses_are_shown_literally_and_never_run(tmp_path, page):
    hostile = [
        "<script>window.__pwned = 1; alert('xss')</script>",
        '<img src=x onerror="window.__pwned = 2; alert(2)">',
        "**not bold** <b>not bold</b> [link](javascript:alert(3))",
    ]
    prompt = "<svg onload=alert(4)> Say hello"
    store = LabelStore(tmp_path / "labels.db")
    store.import_samples(str(write_samples(tmp_path / "samples.jsonl", [{"prompt": prompt, "responses": hostile}])))
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    with threaded_server(store) as url:
        login(page, url, '<b onmouseover="alert(5)">mallory</b>')
        texts = page.eval_on_selector_all("#cards .card .text", "nodes => nodes.map(n => n.textContent)")
        assert sorted(texts) == sorted(hostile)  # shown exactly as written
        assert page.text_content("#prompt") == prompt
        assert page.text_content("#who") == '<b onmouseover="alert(5)">mallory</b>'
        for selector in ("#cards img", "#cards script", "#cards b", "#prompt svg", ".who b"):
            assert page.locator(selector).count() == 0, selector
        page.hover("#who")
        page.click("#cards .card:nth-child(2) .text")
        assert page.evaluate("window.__pwned") is None
        page.click("#submit")
        page.wait_for_selector("#done:not([hidden])")
    assert dialogs == [] and page.errors == []
