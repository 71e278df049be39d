"""Sessions that can be taken back, a deployment behind an HTTPS proxy (--public_url), GETs that change
nothing, skips that stay within the overlap, and an export that refuses an empty validation file."""

from __future__ import annotations

import copy
import http.cookiejar
import time

import pytest
from label_support import Client, synthetic_samples, threaded_server, write_samples

from lit_rlhf.cli import main
from lit_rlhf.label.storage import LabelStore

RANKING = [[0], [1], [2], [3]]


@pytest.fixture
def store(tmp_path):
    store = LabelStore(tmp_path / "labels.db", overlap=1)
    store.import_samples(str(write_samples(tmp_path / "samples.jsonl", synthetic_samples(4))))
    return store


def replay(client: Client) -> Client:
    """Another client holding a copy of ``client``'s cookies and CSRF token (a stolen or kept cookie)."""
    other = Client(client.base_url)
    jar = next(h for h in client.opener.handlers if hasattr(h, "cookiejar")).cookiejar
    other_jar = next(h for h in other.opener.handlers if hasattr(h, "cookiejar")).cookiejar
    for cookie in jar:
        other_jar.set_cookie(copy.copy(cookie))
    other.csrf = client.csrf
    return other


def cookie_names(client: Client) -> list[http.cookiejar.Cookie]:
    return list(next(h for h in client.opener.handlers if hasattr(h, "cookiejar")).cookiejar)


def token_login(url: str, token: str) -> Client:
    client = Client(url)
    client.open_page()
    status, data = client.post("/api/login", {"token": token})
    assert status == 200, data
    client.csrf = data["csrf"]
    return client


def test_logout_ends_the_session_for_every_copy_of_the_cookie(store):
    with threaded_server(store) as url:
        ann = Client(url).login("ann")
        kept = replay(ann)
        assert kept.get("/api/progress")[0] == 200
        assert ann.post("/api/logout", {})[0] == 200
        status, data = kept.get("/api/progress")
        assert status == 401 and "log in again" in data["error"]
        status, data = kept.next()
        assert status == 401 and "session has ended" in data["error"]
        assert store._conn().execute("SELECT count(*) FROM sessions").fetchone()[0] == 0


def test_token_renewal_and_revoke_end_sessions(store, capsys):
    def add(*extra):
        main(["label", "add-labeler", "--db", str(store.path), "--name", "ann", *extra])
        return capsys.readouterr().out.strip()

    first = add().split(": ")[1]
    with threaded_server(store, require_tokens=True) as url:
        old = token_login(url, first)
        assert old.next()[0] == 200
        second = add().split(": ")[1]  # renewed: the old token and its sessions stop working
        assert old.get("/api/progress")[0] == 401
        assert Client(url).open_page() and token_login_status(url, first) == 403
        new = token_login(url, second)
        assert new.get("/api/progress")[0] == 200
        assert add("--revoke", "true") == "ann: access token removed, 1 session(s) ended"
        assert new.get("/api/progress")[0] == 401 and token_login_status(url, second) == 403
    assert store.judgments(status=None) == [] and "ann" in store.labelers()  # the labeler's work stays
    with pytest.raises(SystemExit) as exit_info:
        main(["label", "add-labeler", "--db", str(store.path), "--name", "nobody", "--revoke", "true"])
    assert exit_info.value.code == 2 and "no labeler named 'nobody'" in capsys.readouterr().err


def token_login_status(url: str, token: str) -> int:
    client = Client(url)
    client.open_page()
    return client.post("/api/login", {"token": token})[0]


def test_idle_sessions_end_and_gets_do_not_keep_them_alive(store):
    with threaded_server(store, session_idle_seconds=0.8) as url:
        ann = Client(url).login("ann")
        for _ in range(4):  # reading is not activity: GETs neither renew a lease nor the session
            time.sleep(0.25)
            ann.get("/api/progress")
        assert ann.get("/api/progress")[0] == 401
        bob = Client(url).login("bob")
        for _ in range(4):  # a state-changing request is
            time.sleep(0.25)
            assert bob.next()[0] == 200
        assert bob.get("/api/progress")[0] == 200


def test_gets_change_nothing_not_even_a_lease(store):
    with threaded_server(store) as url:
        ann = Client(url).login("ann")
        item_id = ann.next()[1]["item"]["id"]
        tables = ("assignments", "judgments", "sessions", "shown_order", "meta")
        before = {t: [tuple(r) for r in store._conn().execute(f"SELECT * FROM {t}")] for t in tables}
        time.sleep(0.05)
        for path in ("/", "/api/config", f"/api/item/{item_id}", "/api/history", "/api/progress", "/favicon.ico"):
            assert ann.get(path)[0] in (200, 204), path
        assert ann.get("/api/next")[0] == 405  # the lease comes with a POST
        after = {t: [tuple(r) for r in store._conn().execute(f"SELECT * FROM {t}")] for t in tables}
        assert after == before


def test_cookie_is_named_per_deployment_and_secure_behind_https(tmp_path, store):
    other = LabelStore(tmp_path / "other.db")
    other.import_samples(str(write_samples(tmp_path / "s.jsonl", synthetic_samples(2))))
    with threaded_server(store) as url_a, threaded_server(other) as url_b:
        ann_a, ann_b = Client(url_a).login("ann"), Client(url_b).login("ann")
        (cookie_a,), (cookie_b,) = cookie_names(ann_a), cookie_names(ann_b)
        assert cookie_a.name != cookie_b.name and cookie_a.name.startswith("lit_rlhf_label_")
        assert cookie_a.has_nonstandard_attr("HttpOnly") and not cookie_a.secure
        stolen = replay(ann_a)  # server A's session cookie presented to server B (a neighbouring port)
        stolen.base_url = url_b
        assert stolen.get("/api/progress")[0] == 401
    with threaded_server(store, public_url="https://labels.example.org") as url:
        client = Client(url)
        status, _ = client.request("GET", "/", headers={"Host": "labels.example.org"})
        header = next(h for h in client.last_headers if h[0].lower() == "set-cookie")[1]
        assert header.startswith("__Host-lit_rlhf_label_") and "Secure" in header and "SameSite=Strict" in header


def test_public_url_is_the_origin_behind_a_proxy(store):
    public = "https://labels.example.org"
    proxied = {"Host": "labels.example.org", "Origin": public}
    with threaded_server(store, public_url=public) as url:
        ann = Client(url)
        cookies = {}

        def send(method, path, body=None, **headers):
            """As the proxy forwards it: the Secure cookie travelled over HTTPS up to the proxy."""
            if cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
            result = ann.request(method, path, body, headers=headers)
            for name, value in ann.last_headers:
                if name.lower() == "set-cookie":
                    key, _, rest = value.partition("=")
                    cookies[key] = rest.split(";")[0]
            return result

        status, html = send("GET", "/", Host="labels.example.org")
        assert status == 200
        ann.csrf = html.split('name="csrf-token" content="')[1].split('"')[0]
        status, data = send("POST", "/api/login", {"name": "ann"}, **proxied)
        assert status == 200, data
        ann.csrf = data["csrf"]
        assert send("POST", "/api/next", {}, **proxied)[0] == 200
        assert send("POST", "/api/next", {}, Origin=public)[0] == 200  # a proxy that talks to 127.0.0.1
        status, data = send("POST", "/api/next", {}, Origin=url)  # not the public origin
        assert status == 403 and public in data["error"]
        status, data = send("GET", "/api/progress", Host="evil.example")
        assert status == 400 and "--public_url" in data["error"]
    with threaded_server(store) as url:  # without --public_url the proxy's origin is refused, with a hint
        ann = Client(url).login("ann")
        status, data = ann.request("POST", "/api/next", {}, headers={"Origin": public})
        assert status == 403 and "--public_url" in data["error"]


def test_a_public_url_beyond_loopback_needs_tokens(store, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["label", "serve", "--db", str(store.path), "--port", "0", "--public_url", "https://labels.example.org"])
    assert (
        exit_info.value.code == 2 and "--public_url https://labels.example.org serves beyond" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["label", "serve", "--db", str(store.path), "--port", "0", "--public_url", "ftp://x"])
    assert exit_info.value.code == 2 and "public_url: expected http(s)" in capsys.readouterr().err


def test_a_skip_cannot_later_push_an_item_past_the_overlap(store):
    for name in ("ann", "bob"):
        store.add_labeler(name)
    assert store.next_item("ann") == 1
    store.submit("ann", 1, None)  # skipped: the slot goes to someone else
    assert store.next_item("bob") == 1
    from lit_rlhf.label.judgments import Judgment

    ranked = Judgment(RANKING, [None] * 4, [[] for _ in range(4)])
    store.submit("bob", 1, ranked)
    with pytest.raises(Exception, match="your skip stands") as error:
        store.submit("ann", 1, ranked, base_revision=1)
    assert error.value.status == 409 and store.judgment("ann", 1)["status"] == "skipped"
    assert store.next_item("ann") == 2
    store.submit("ann", 2, None)
    assert store.submit("ann", 2, ranked, base_revision=1) == 2  # nobody else ranked it: changing a skip is fine


def test_export_refuses_an_empty_validation_file(store, tmp_path, capsys):
    store.add_labeler("ann")
    store.next_item("ann")
    from lit_rlhf.label.judgments import Judgment

    store.submit("ann", 1, Judgment(RANKING, [None] * 4, [[] for _ in range(4)]))
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "label",
                "export",
                "--db",
                str(store.path),
                "--out",
                str(tmp_path / "train.jsonl"),
                "--val_out",
                str(tmp_path / "val.jsonl"),
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--val_out" in err and "1 item(s)" in err and "nothing written" in err
    assert not (tmp_path / "train.jsonl").exists() and not (tmp_path / "val.jsonl").exists()
