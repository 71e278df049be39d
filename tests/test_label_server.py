"""The labeling app over real HTTP on 127.0.0.1: login, CSRF, bad submissions, escaping, concurrency."""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from label_support import Client, best_first, synthetic_samples, threaded_server, write_samples

from lit_rlhf.label.storage import LabelStore

HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    "**bold** [link](javascript:alert(1)) & </div>",
]


@pytest.fixture
def store(tmp_path):
    rows = synthetic_samples(3) + [{"prompt": "Say <b>hi</b> & bye", "responses": HOSTILE}]
    store = LabelStore(tmp_path / "labels.db", overlap=1)
    store.import_samples(str(write_samples(tmp_path / "samples.jsonl", rows)))
    return store


@pytest.fixture
def server(store):
    with threaded_server(store) as url:
        yield url


def judgments_table(store) -> list:
    return [tuple(row) for row in store._conn().execute("SELECT * FROM judgments ORDER BY id")]


def test_login_next_submit_edit_and_history(server, store):
    ann = Client(server).login("ann")
    status, data = ann.next()
    assert status == 200 and data["item"]["id"] == 1 and data["judgment"] is None
    assert sorted(r["index"] for r in data["item"]["responses"]) == [0, 1, 2, 3]
    assert data["progress"] == {"done": 0, "skipped": 0, "remaining": 4, "items": 4, "items_complete": 0, "overlap": 1}
    ranking = [[2], [0, 3], [1]]
    status, data = ann.post(
        "/api/judgment",
        {"item_id": 1, "revision": 0, "ranking": ranking, "scores": [5, 1, 7, 5], "flags": [["opinion"], [], [], []]},
    )
    assert status == 200 and data["revision"] == 1 and ann.get("/api/progress")[1]["done"] == 1
    status, data = ann.next()
    assert data["item"]["id"] == 2
    status, data = ann.get("/api/item/1")  # back to the earlier judgment
    assert data["judgment"]["ranking"] == ranking and data["judgment"]["scores"] == [5, 1, 7, 5]
    status, data = ann.post("/api/judgment", {"item_id": 1, "revision": 1, "ranking": [[0], [1], [2], [3]]})
    assert status == 200 and data["revision"] == 2
    assert ann.post("/api/skip", {"item_id": 2, "revision": 0})[0] == 200
    status, data = ann.get("/api/history")
    assert [(h["item_id"], h["status"]) for h in data["history"]] == [(2, "skipped"), (1, "ranked")]
    assert store.judgment("ann", 1)["ranking"] == [[0], [1], [2], [3]]
    assert Client(server).next()[0] == 401  # not logged in


def test_state_changing_requests_need_the_csrf_token_and_this_origin(server, store):
    ann = Client(server).login("ann")
    ann.next()
    body = {"item_id": 1, "ranking": [[0], [1], [2], [3]]}
    status, data = ann.request("POST", "/api/judgment", body, csrf=False)
    assert status == 403 and "CSRF" in data["error"]
    status, data = ann.request("POST", "/api/judgment", body, headers={"X-CSRF-Token": "forged"})
    assert status == 403
    status, data = ann.request("POST", "/api/judgment", body, headers={"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in data["error"]
    # A form post from another site can carry neither the header nor a JSON body.
    status, _ = ann.request(
        "POST",
        "/api/judgment",
        b"item_id=1",
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": ""},
    )
    assert status == 403
    assert judgments_table(store) == []
    # DNS rebinding: a name that resolves to 127.0.0.1 but is not loopback is refused without tokens.
    status, data = ann.request("GET", "/api/next", headers={"Host": "attacker.example"})
    assert status == 400 and "refused" in data["error"]


RANKING = [[0], [1], [2], [3]]
DEEP = b'{"item_id": 2, "ranking": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

#: (method, path, body, extra headers, expected status, words of the reason): every request here is
#: malformed or not allowed, and each must be answered with that 4xx and change nothing.
MALFORMED = [
    ("POST", "/api/judgment", {"item_id": 99, "ranking": [[0], [1]]}, {}, 404, "no such item"),
    ("POST", "/api/judgment", {"item_id": 2**70, "ranking": RANKING}, {}, 400, "item_id"),
    ("POST", "/api/judgment", {"item_id": -(2**70), "ranking": RANKING}, {}, 400, "item_id"),
    ("POST", "/api/judgment", {"item_id": 0, "ranking": RANKING}, {}, 400, "item_id"),
    ("POST", "/api/judgment", {"item_id": 2.0, "ranking": RANKING}, {}, 400, "item_id"),
    ("POST", "/api/judgment", {"item_id": True, "ranking": RANKING}, {}, 400, "item_id"),
    ("POST", "/api/judgment", {"item_id": "2", "ranking": RANKING}, {}, 400, "item_id"),
    ("POST", "/api/judgment", {"ranking": RANKING}, {}, 400, "item_id"),
    ("POST", "/api/judgment", b'{"item_id": NaN, "ranking": [[0], [1], [2], [3]]}', {}, 400, "item_id"),
    ("POST", "/api/judgment", {"item_id": 2, "ranking": [[0], [1], [2]]}, {}, 400, "has 4"),  # wrong K
    ("POST", "/api/judgment", {"item_id": 2, "ranking": [[0], [1], [1], [3]]}, {}, 400, "ranked twice"),
    ("POST", "/api/judgment", {"item_id": 2, "ranking": [[0], [1], [2], [2**70]]}, {}, 400, "not a response index"),
    ("POST", "/api/judgment", {"item_id": 2, "ranking": [[0], [1], [2], [[3]]]}, {}, 400, "not a response index"),
    ("POST", "/api/judgment", {"item_id": 2, "ranking": {"0": 1}}, {}, 400, "tie groups"),
    ("POST", "/api/judgment", {"item_id": 2, "ranking": RANKING, "scores": [0, 1, 1, 1]}, {}, 400, "scores[0]"),
    ("POST", "/api/judgment", {"item_id": 2, "ranking": RANKING, "scores": [2**70, 1, 1, 1]}, {}, 400, "scores[0]"),
    ("POST", "/api/judgment", {"item_id": 2, "ranking": RANKING, "scores": ["7", 1, 1, 1]}, {}, 400, "scores[0]"),
    (
        "POST",
        "/api/judgment",
        {"item_id": 2, "ranking": RANKING, "flags": [["x"], [], [], []]},
        {},
        400,
        "unknown flag",
    ),
    ("POST", "/api/judgment", {"item_id": 2, "ranking": RANKING, "flags": [[{}], [], [], []]}, {}, 400, "unknown flag"),
    ("POST", "/api/judgment", {"item_id": 2, "ranking": RANKING, "flags": "opinion"}, {}, 400, "flags"),
    ("POST", "/api/judgment", {"item_id": 2, "ranking": RANKING, "rewrite": 7}, {}, 400, "rewrite"),
    ("POST", "/api/judgment", {"item_id": 2, "ranking": RANKING, "rewrite": "x" * 20_001}, {}, 400, "rewrite"),
    (
        "POST",
        "/api/judgment",
        b'{"item_id": 2, "ranking": [[0], [1], [2], [3]], "rewrite": "\\ud800"}',
        {},
        400,
        "UTF-8",
    ),
    ("POST", "/api/judgment", {"item_id": 3, "ranking": RANKING}, {}, 409, "not assigned"),  # never handed out
    ("POST", "/api/judgment", {"item_id": 1, "revision": 0, "ranking": [[3], [1], [2], [0]]}, {}, 409, "stale"),
    ("POST", "/api/judgment", {"item_id": 2, "revision": -1, "ranking": RANKING}, {}, 400, "revision"),
    ("POST", "/api/judgment", {"item_id": 2, "revision": 2**70, "ranking": RANKING}, {}, 400, "revision"),
    ("POST", "/api/judgment", DEEP, {}, 400, "nested too deeply"),  # JSON nested 100k levels deep
    ("POST", "/api/judgment", b"not json", {}, 400, "JSON object"),
    ("POST", "/api/judgment", b"", {}, 400, "JSON object"),
    ("POST", "/api/judgment", b"[1, 2]", {}, 400, "JSON object"),
    ("POST", "/api/judgment", b'{"item_id": 2, "rewrite": "\xff\xfe"}', {}, 400, "UTF-8"),
    ("POST", "/api/judgment", b'{"item_id": 2}', {"Content-Type": "text/plain"}, 415, "application/json"),
    ("POST", "/api/judgment", b'{"rewrite": "' + b"x" * 300_000 + b'"}', {}, 413, "large"),
    ("POST", "/api/skip", {"item_id": 2**70}, {}, 400, "item_id"),
    ("POST", "/api/skip", {"item_id": 99}, {}, 404, "no such item"),
    ("POST", "/api/skip", {"item_id": 2, "revision": "0"}, {}, 400, "revision"),
    ("GET", f"/api/item/{2**70}", None, {}, 404, "not found"),  # item_id 2^70 in a GET
    ("GET", "/api/item/3", None, {}, 404, "not found"),  # an item that is not the labeler's
    ("GET", "/api/item/-1", None, {}, 404, ""),
    ("GET", "/api/next", None, {}, 405, ""),  # taking a lease is a POST
    ("PUT", "/api/judgment", {"item_id": 2, "ranking": RANKING}, {}, 405, ""),
    ("DELETE", "/api/judgment", None, {}, 405, ""),
    ("POST", "/api/login", {"name": "a\u202eb"}, {}, 400, "printable"),
    ("POST", "/api/login", {"name": "x" * 65}, {}, 400, "printable"),
    ("GET", "/api/progress", None, {"Host": "[::1"}, 400, "host"),
    ("GET", "/api/progress", None, {"Host": "attacker.example"}, 400, "refused"),
    (
        "POST",
        "/api/judgment",
        {"item_id": 2, "ranking": RANKING},
        {"Origin": "http://127.0.0.1:1"},
        403,
        "cross-origin",
    ),
    ("POST", "/api/judgment", {"item_id": 2, "ranking": RANKING}, {"X-CSRF-Token": "forged"}, 403, "reload the page"),
]


def test_malformed_and_stale_requests_get_4xx_with_the_reason_and_change_nothing(server, store):
    ann = Client(server).login("ann")
    ann.next()
    assert ann.post("/api/judgment", {"item_id": 1, "ranking": RANKING})[0] == 200
    ann.next()
    tables = ("judgments", "assignments", "sessions", "labelers", "items")

    def snapshot():
        return {t: [tuple(r) for r in store._conn().execute(f"SELECT * FROM {t} ORDER BY rowid")] for t in tables}

    before = snapshot()
    for method, path, body, headers, code, words in MALFORMED:
        status, data = ann.request(method, path, body, headers={"Content-Type": "application/json", **headers})
        assert status == code, (method, path, str(body)[:80], status, data)
        assert isinstance(data, dict) and words.lower() in data["error"].lower(), (path, str(body)[:80], data)
        assert snapshot() == before, (method, path, str(body)[:80])
    assert ann.post("/api/judgment", {"item_id": 2, "ranking": RANKING})[0] == 200  # the session still works


def test_untrusted_text_is_escaped_in_html_and_only_placed_as_text(server, store):
    name = '<img src=x onerror="alert(1)">'
    ann = Client(server).login(name)
    html = ann.open_page()
    assert name not in html and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html  # autoescaped
    for _ in range(3):
        _, data = ann.next()
        ann.post("/api/judgment", {"item_id": data["item"]["id"], "ranking": best_first(data["item"])})
    status, data = ann.next()
    assert data["item"]["prompt"] == "Say <b>hi</b> & bye"
    assert sorted(r["text"] for r in data["item"]["responses"]) == sorted(HOSTILE)  # JSON strings, verbatim
    status, raw = ann.request("POST", "/api/next", {}, headers={"Accept": "text/html"})
    assert isinstance(raw, dict)  # application/json whatever the client asks for
    # The page script never turns strings into markup, and the CSP forbids inline script anyway.
    script = (Path(__file__).parents[1] / "lit_rlhf/label/static/label.js").read_text()
    code = re.sub(r"//[^\n]*", "", script)  # comments may name what the code avoids
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in code, sink
    with ann.opener.open(ann.base_url + "/") as response:
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_other_interfaces_need_tokens(tmp_path, store, capsys):
    from lit_rlhf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["label", "serve", "--db", str(store.path), "--host", "0.0.0.0", "--port", "0"])
    assert exit_info.value.code == 2 and "needs an access token per labeler" in capsys.readouterr().err
    main(["label", "add-labeler", "--db", str(store.path), "--name", "ann"])
    token = capsys.readouterr().out.strip().split(": ")[1]
    with threaded_server(store, require_tokens=True) as url:
        client = Client(url)
        client.open_page()
        assert client.post("/api/login", {"name": "ann"})[0] == 403  # a name alone is not enough
        assert client.post("/api/login", {"token": "guess"})[0] == 403
        status, data = client.post("/api/login", {"token": token})
        assert status == 200 and data["labeler"] == "ann"
        client.csrf = data["csrf"]
        assert client.next()[1]["item"]["id"] == 1
    assert token not in store.path.read_bytes().decode("latin-1")  # only its hash is stored


def test_concurrent_labelers_lose_and_duplicate_nothing(tmp_path):
    """8 labelers at once through the HTTP API (overlap 2): every item judged exactly twice, never
    handed to a third labeler, every acknowledged judgment stored once. Prints submit latency."""
    num_items, overlap, labelers = 40, 2, 8
    store = LabelStore(tmp_path / "labels.db", overlap=overlap)
    store.import_samples(str(write_samples(tmp_path / "samples.jsonl", synthetic_samples(num_items))))
    latencies, handed, acknowledged = [], [], []
    lock = threading.Lock()

    def label(name: str) -> None:
        client = Client(url).login(name)
        while True:
            status, data = client.next()
            assert status == 200, data
            if data["item"] is None:
                return
            item = data["item"]
            with lock:
                handed.append((item["id"], name))
            ranking = best_first(item)
            start = time.perf_counter()
            status, result = client.post(
                "/api/judgment", {"item_id": item["id"], "ranking": ranking, "scores": [4, 4, 4, 4]}
            )
            elapsed = time.perf_counter() - start
            assert status == 200, result
            with lock:
                latencies.append(elapsed)
                acknowledged.append((item["id"], name, json.dumps(ranking)))

    with threaded_server(store, threads=8) as url:
        with ThreadPoolExecutor(max_workers=labelers) as pool:
            for future in [pool.submit(label, f"labeler{i}") for i in range(labelers)]:
                future.result()

    rows = store._conn().execute("SELECT item_id, labeler, ranking FROM judgments WHERE status = 'ranked'").fetchall()
    assert sorted(tuple(r) for r in rows) == sorted(acknowledged)  # nothing lost, nothing extra
    assert len(rows) == num_items * overlap
    per_item = {}
    for item_id, name in set(handed):
        per_item.setdefault(item_id, set()).add(name)
    assert all(len(names) == overlap for names in per_item.values()) and len(per_item) == num_items
    assert len(handed) == len(set(handed))  # a held item is not handed out again once judged
    assert store._conn().execute("SELECT count(*) FROM assignments").fetchone()[0] == 0
    latencies.sort()
    median, p95 = statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))]
    print(
        f"\nsubmit latency over {len(latencies)} judgments, {labelers} concurrent labelers: "
        f"median {median * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"
    )
    assert p95 < 2.0
