"""The labeling app in a real headless Chromium (Debian's), driven by Playwright.

Run by ``.ci/run`` (``pytest -m browser``), which installs the browser when it is missing.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import torch
from label_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    HttpsProxy,
    pair_rows,
    start_server_process,
    synthetic_samples,
    threaded_server,
    write_samples,
)

from lit_rlhf.algorithms.win_rate import win_rate
from lit_rlhf.cli import main
from lit_rlhf.label.stats import format_stats
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
    main(
        [
            "sample",
            "--model",
            str(BASE_MODEL_DIR),
            "--prompts",
            str(DATA_DIR / "prompts_train.jsonl"),
            "--out",
            str(samples),
            "--k",
            "4",
            "--limit",
            "16",
            "--max_new_tokens",
            "16",
            "--seed",
            "1",
        ]
    )
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

    main(
        [
            "label",
            "export",
            "--db",
            str(db),
            "--out",
            "runs/comparisons/train.jsonl",
            "--val_out",
            "runs/comparisons/val.jsonl",
            "--val_fraction",
            "0.34",
            "--demonstrations_out",
            "demos_from_ann.jsonl",
        ]
    )
    (demo,) = [json.loads(line) for line in open("demos_from_ann.jsonl")]
    assert demo["response"] == "A better answer, written by ann" and demo["prompt"]
    exported = [json.loads(line) for name in ("train", "val") for line in open(f"runs/comparisons/{name}.jsonl")]
    assert len(exported) == 3 and all(r["labeler"] == "ann" for r in exported)
    os.makedirs("runs/sft")
    os.symlink(BASE_MODEL_DIR, "runs/sft/model")
    demos = [json.loads(line) for line in open(DATA_DIR / "sft_train.jsonl")][:50]
    write_samples(in_scratch_dir / "demos.jsonl", demos)
    # configs/rm.yaml as shipped; only its data paths point elsewhere (train/val are its defaults already).
    main(
        [
            "fit",
            "--config",
            "configs/rm.yaml",
            "--data.init_args.center_on",
            "demos.jsonl",
            "--data.init_args.batch_size",
            "1",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
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


def new_page(browser, **options):
    context = browser.new_context(**options)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    return page


def one_item_store(tmp_path, rows) -> LabelStore:
    store = LabelStore(tmp_path / "labels.db")
    store.import_samples(str(write_samples(tmp_path / "samples.jsonl", rows)))
    return store


def test_login_and_ranking_through_an_https_proxy_then_a_revoked_session_is_refused(tmp_path, browser):
    store = one_item_store(tmp_path, synthetic_samples(3))
    token = store.add_labeler("ann", with_token=True)
    with HttpsProxy(tmp_path) as proxy, threaded_server(store, require_tokens=True, public_url=proxy.url) as backend:
        proxy.backend = backend
        page = new_page(browser, viewport={"width": 1200, "height": 1000}, ignore_https_errors=True)
        page.goto(proxy.url + "/")
        page.fill("#login-token", token)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#cards .card")
        (cookie,) = page.context.cookies()
        assert cookie["name"].startswith("__Host-lit_rlhf_label_") and cookie["secure"] and cookie["httpOnly"]
        first, order = current_item(page), card_order(page)
        for key in ("2", "Shift+ArrowUp", "Enter"):  # rank it through the proxy: every POST passes the origin check
            page.keyboard.press(key)
        wait_for_next(page, first)
        assert store.judgment("ann", first)["ranking"] == [[order[1]], [order[0]], *[[i] for i in order[2:]]]
        assert proxy.requests > 0

        main(["label", "add-labeler", "--db", str(store.path), "--name", "ann", "--revoke", "true"])
        second = current_item(page)
        page.keyboard.press("Enter")
        page.wait_for_selector("#status.error")
        assert "session has ended" in page.text_content("#status") and page.locator("#status button").count() == 1
        assert store.judgment("ann", second) is None  # nothing stored
        page.click("#status button")  # "Log in again": back to the login form, where the old token is refused
        page.wait_for_selector("#login-token")
        page.fill("#login-token", token)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#login-error:has-text('unknown access token')")
        assert page.errors == []
        page.context.close()


def test_a_tie_belongs_to_its_slot_when_cards_move(tmp_path, page):
    store = one_item_store(tmp_path, synthetic_samples(2))
    with threaded_server(store) as url:
        login(page, url, "ann")
        order = card_order(page)
        for key in ("2", "Equal"):  # slot 2 ties with slot 1
            page.keyboard.press(key)
        assert page.text_content("#cards .card:nth-child(2) .rank") == "=1"
        page.keyboard.press("Shift+ArrowDown")  # move the card in slot 2 down: the tie stays with slot 2
        assert card_order(page) == [order[0], order[2], order[1], order[3]]
        ranks = page.eval_on_selector_all("#cards .card .rank", "nodes => nodes.map(n => n.textContent)")
        assert ranks == ["1", "=1", "2", "3"]
        assert page.get_attribute("#cards .card:nth-child(3) button.tie", "aria-pressed") == "false"
        # Drag the last card to the top: slot 2 still ties with slot 1, now holding the old first card.
        cards = page.locator("#cards .card")
        source = cards.nth(3).locator(".grip").bounding_box()
        target = cards.nth(0).bounding_box()
        page.mouse.move(source["x"] + source["width"] / 2, source["y"] + source["height"] / 2)
        page.mouse.down()
        page.mouse.move(target["x"] + 60, target["y"] + 4, steps=10)
        page.mouse.up()
        moved = [order[3], order[0], order[2], order[1]]
        assert card_order(page) == moved
        assert page.eval_on_selector_all("#cards .card .rank", "nodes => nodes.map(n => n.textContent)") == [
            "1",
            "=1",
            "2",
            "3",
        ]
        item = current_item(page)
        page.keyboard.press("Enter")
        wait_for_next(page, item)
    assert store.judgment("ann", item)["ranking"] == [sorted(moved[:2]), [moved[2]], [moved[3]]]
    assert page.errors == []


def test_bidi_and_zero_width_characters_are_shown_not_applied(tmp_path, page):
    sneaky = ["invoice_\u202egnp.exe", "pay\u200b\u200bpal\u2060 and \u2066inner\u2069 \ufeffend\u200e", "plain answer"]
    store = one_item_store(tmp_path, [{"prompt": "Name the file\u202e please", "responses": sneaky}])
    with threaded_server(store) as url:
        login(page, url, "ann")
        texts = page.eval_on_selector_all("#cards .card .text", "nodes => nodes.map(n => n.textContent)")
        assert "invoice_U+202E RLOgnp.exe" in texts
        assert "payU+200B ZWSPU+200B ZWSPpalU+2060 WJ and U+2066 LRIinnerU+2069 PDI U+FEFF BOMendU+200E LRM" in texts
        assert page.text_content("#prompt") == "Name the fileU+202E RLO please"
        assert "1 hidden character" in page.text_content("#item-meta")
        hidden = "[\u202a-\u202e\u2066-\u2069\u200b-\u200f\u2060\ufeff]"
        assert page.evaluate(f"new RegExp('{hidden}').test(document.body.innerText)") is False  # none left to apply
        assert page.locator("#cards .cp").count() == 8 and page.locator(".hidden-warning").count() == 2
        # The mark is visible: a box with a width, in the reading order of the text around it.
        box = page.locator("#cards .cp").first.bounding_box()
        assert box["width"] > 20 and box["height"] > 8
    assert page.errors == []


def test_dragging_in_a_k9_item_reaches_the_top_in_about_a_second_and_long_cards_collapse(tmp_path, browser):
    long = "\n".join(f"Line {n}: a long response that keeps going so that the card would be tall." for n in range(40))
    responses = [f"Response number {i}.\n" + (long if i in (2, 5) else "short and sweet\n" * 4) for i in range(9)]
    store = one_item_store(tmp_path, [{"prompt": "Rank nine responses.", "responses": responses}])
    page = new_page(browser, viewport={"width": 1200, "height": 800})
    with threaded_server(store) as url:
        login(page, url, "ann")
        collapsed = page.locator("#cards .card.long")
        assert collapsed.count() == 2
        height = collapsed.first.locator(".text").bounding_box()["height"]
        assert height < 15 * 16 * 1.5 + 2  # at most 15 lines shown
        collapsed.first.locator("button.more").click()
        assert collapsed.first.locator(".text").bounding_box()["height"] > 2 * height  # "Show all" expands it
        collapsed.first.locator("button.more").click()
        order = card_order(page)
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        distance = page.evaluate("window.scrollY")
        assert distance > 1000
        grip = page.locator("#cards .card").nth(8).locator(".grip").bounding_box()
        page.mouse.move(grip["x"] + 5, grip["y"] + 5)
        page.mouse.down()
        page.mouse.move(grip["x"] + 5, 70, steps=4)  # into the top edge, then hold still: the page scrolls
        start = time.monotonic()
        page.wait_for_function(
            "i => document.querySelector('#cards .card').dataset.index === i && window.scrollY === 0",
            arg=str(order[8]),
            timeout=10_000,
            polling="raf",
        )
        elapsed = time.monotonic() - start
        page.mouse.up()
        print(f"\nK=9 drag to the top: {distance} px scrolled in {elapsed:.2f} s after reaching the edge")
        assert card_order(page) == [order[8]] + order[:8]
        assert elapsed < 3.0  # about a second; 3 s of slack for a loaded 2-core machine
    assert page.errors == []
    page.context.close()


def test_phone_layout_keeps_the_cards_clear_and_targets_large(tmp_path, browser):
    rows = synthetic_samples(2)
    rows[0]["responses"][1] = "A long one. " * 120
    store = one_item_store(tmp_path, rows)
    page = new_page(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    with threaded_server(store) as url:
        login(page, url, "ann")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sideways
        header = page.locator(".bar").bounding_box()
        dock = page.locator(".dock").bounding_box()
        assert header["height"] <= 56 and dock["height"] <= 70
        assert (header["height"] + dock["height"]) / 844 < 0.16  # prompt and cards get most of the screen
        assert not page.locator(".keyboard-help").is_visible() and not page.locator(".keys-only").first.is_visible()
        assert page.locator("#cards .card").first.bounding_box()["y"] < 844 / 3
        small = page.evaluate("""() => [...document.querySelectorAll('button, summary')]
            .filter(b => b.offsetParent !== null)
            .map(b => [b.textContent.trim(), b.getBoundingClientRect()])
            .filter(([, r]) => r.width < 44 || r.height < 44).map(([t, r]) => `${t} ${r.width}x${r.height}`)""")
        assert small == []
        for n in range(page.locator("#cards .card").count()):
            clear = page.evaluate(
                """n => {
                const card = document.querySelectorAll('#cards .card')[n];
                card.scrollIntoView({block: 'center'});
                const r = card.getBoundingClientRect(), x = r.left + r.width / 2;
                return [r.top + 4, r.top + r.height / 2, r.bottom - 4].every(
                    y => card.contains(document.elementFromPoint(x, y)));
            }""",
                n,
            )
            assert clear, f"card {n} is covered"
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        item = current_item(page)
        page.tap("#submit")
        wait_for_next(page, item)
        assert page.evaluate("window.scrollY") == 0  # a new item starts at its prompt
    assert page.errors == []
    page.context.close()


def test_all_done_back_and_errors_that_say_what_to_do(tmp_path, page):
    store = one_item_store(tmp_path, synthetic_samples(1))
    with threaded_server(store) as url:
        login(page, url, "ann")
        page.route("**/api/judgment", lambda route: route.abort())
        page.keyboard.press("Enter")
        page.wait_for_selector("#status.error")
        assert "Cannot reach the labeling server" in page.text_content("#status")
        page.unroute("**/api/judgment")
        page.evaluate("document.querySelector('meta[name=csrf-token]').content = 'stale'")
        page.keyboard.press("Enter")
        page.wait_for_selector("#status:has-text('reload the page')")
        assert page.locator("#status button").text_content() == "Reload the page"
        page.reload()
        page.wait_for_selector("#cards .card")
        page.keyboard.press("Enter")
        page.wait_for_selector("#done:not([hidden])")
        page.keyboard.press("b")  # B works on the all-done page too
        page.wait_for_selector("#editing:not([hidden])")
        assert current_item(page) == 1
    assert page.errors == []


def test_side_by_side_session_from_two_labelers_matches_a_hand_computation(tmp_path, browser):
    from test_label_pairs import VERDICTS

    store = LabelStore(tmp_path / "labels.db", overlap=2)
    store.import_pairs(str(write_samples(tmp_path / "pairs.jsonl", pair_rows())))
    left_won = 0
    with threaded_server(store) as url:
        for name, viewport in (("ann", {"width": 1200, "height": 900}), ("bob", {"width": 390, "height": 844})):
            page = new_page(browser, viewport=viewport)
            login(page, url, name)
            assert page.locator("#cards .card").count() == 2 and page.locator(".grip").count() == 0
            while page.locator("#done").is_hidden():
                item = current_item(page)
                texts = page.eval_on_selector_all("#cards .card .text", "nodes => nodes.map(n => n.textContent)")
                assert not any(
                    t.startswith(("ppo:", "sft:"))
                    for t in page.eval_on_selector_all("#cards .letter", "n => n.map(x => x.textContent)")
                )
                want = VERDICTS[(item, name)]
                side = "tie" if want == "tie" else "left" if texts[0].startswith(want) else "right"
                left_won += side == "left"
                if name == "ann":  # by mouse; a score for the left response
                    page.click(f"#choice button[data-choice={side}]")
                    page.locator("#cards .card").nth(0).locator(".score button").nth(4).click()
                    page.click("#submit")
                else:  # by keyboard
                    page.keyboard.press({"left": "ArrowLeft", "right": "ArrowRight", "tie": "Equal"}[side])
                    page.keyboard.press("Enter")
                wait_for_next(page, item)
            assert page.errors == []
            page.context.close()
    text = format_stats(store)
    rate = (1 + 0.75 + 0.5 + 0.5) / 4  # ppo by hand: items 1-4, ties half, mean over the two labelers
    found = win_rate(torch.tensor([1, 0.75, 0.5, 0.5]), torch.arange(4))  # evaluate's bootstrap over items
    assert found.value == rate
    assert f"win rate ppo vs sft: 68.8% (95% CI {found.low:.1%} to {found.high:.1%}, bootstrap over 4 items" in text
    assert "4 wins, 3 ties, 1 losses" in text and "agreement: 50.0% (2 of 4" in text
    assert f"the left response won {left_won} of 5 non-tie judgments" in text
    assert all(j["scores"][0] == 5 or j["scores"][1] == 5 for j in store.judgments() if j["labeler"] == "ann")
