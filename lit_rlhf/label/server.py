"""The labeling web app: a Flask application over :class:`LabelStore`, served by waitress.

Security model: the app binds 127.0.0.1 unless told otherwise, and on any other interface (or behind
a proxy that serves a non-loopback ``--public_url``) every labeler must log in with their own access
token (``lit-rlhf label add-labeler``). Sessions are server-side records (table ``sessions``): the
signed, ``HttpOnly``, ``SameSite=Strict`` cookie (named per deployment, ``Secure`` and ``__Host-``
when the public URL is HTTPS) carries only a random session id. Logging out, renewing or revoking a
labeler's token, and ``--session_idle_minutes`` without a state-changing request end a session.
Every state-changing request is a JSON ``POST`` that must echo the session's CSRF token (kept
server-side) in ``X-CSRF-Token`` and, when the browser sends ``Origin``, come from the public
origin (``--public_url``, else this server's own address). ``GET`` requests change nothing, not even
a lease. Model outputs are untrusted: the page only ever places them with ``textContent`` (bidi and
zero-width characters as visible marks), and the Content-Security-Policy forbids inline and foreign
scripts besides.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from flask import Flask, abort, g, jsonify, render_template, request, session
from werkzeug.exceptions import HTTPException

from lit_rlhf.label.judgments import FLAGS, SCORE_RANGE, SubmissionError, parse_judgment
from lit_rlhf.label.storage import MAX_SQL_INT, LabelStore

HERE = Path(__file__).parent
MAX_NAME_CHARS = 64
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


SESSION_ENDED = "your session has ended (logged out, idle too long, or revoked): reload the page and log in again"
STALE_CSRF = (
    "this page's security token is out of date (you logged in or out in another tab, or the server's "
    "database changed): reload the page; nothing was saved"
)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, lower case, the default port left out (as browsers send ``Origin``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"public_url: expected http(s)://host[:port], got {url!r}")
    port = parts.port
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def display_order(item_id: int, labeler: str, k: int) -> list[int]:
    """Each labeler sees an item's responses in their own fixed shuffle, so the sampler's order (or the
    previous labeler's) cannot bias the ranking, and a reload shows the same order."""
    seed = int.from_bytes(hashlib.sha256(f"{item_id}\0{labeler}".encode()).digest()[:8], "big")
    order = list(range(k))
    random.Random(seed).shuffle(order)
    return order


def create_app(
    store: LabelStore,
    require_tokens: bool = False,
    public_url: Optional[str] = None,
    session_idle_seconds: float = 4 * 3600.0,
) -> Flask:
    """The Flask app over ``store``. With ``require_tokens`` labelers log in with an access token, not a name.
    ``public_url`` is the address labelers open (an HTTPS reverse proxy in front of this server): the
    Origin and Host checks use it, and with ``https`` the cookie is ``Secure``."""
    public_origin = origin_of(public_url) if public_url else None
    public_host = urlsplit(public_origin).netloc if public_origin else None
    secure = bool(public_origin and public_origin.startswith("https://"))
    secret = store.secret("session_key")  # stored in the database: sessions survive a restart
    # Browsers send a host's cookies to every port of it: a name of its own per deployment (database)
    # keeps two label servers on one host apart; sessions are server-side, so a copied cookie dies with
    # its session (logout, revocation, idle timeout).
    deployment = hashlib.sha256(f"{secret}\0{public_origin or ''}".encode()).hexdigest()[:10]
    app = Flask(__name__, static_folder=str(HERE / "static"), template_folder=str(HERE / "templates"))
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=secure,
        SESSION_COOKIE_NAME=("__Host-" if secure else "") + f"lit_rlhf_label_{deployment}",
        SESSION_COOKIE_PATH="/",
        MAX_CONTENT_LENGTH=256 * 1024,
    )
    app.json.sort_keys = False  # the flags keep the paper's order
    pairs = store.mode() == "pairs"

    def fail(status: int, message: str):
        response = jsonify(error=message)
        response.status_code = status
        abort(response)

    def labeler() -> str:
        record = g.get("session_record")
        if record is None:
            fail(401, SESSION_ENDED)
        return record["labeler"]

    def body() -> dict[str, Any]:
        if request.mimetype != "application/json":
            fail(415, f"expected Content-Type: application/json, got {request.mimetype or 'none'}")
        try:
            payload = json.loads(request.get_data(cache=True))
            # Lone surrogates ("\ud800") parse but cannot be stored: refuse them here, not with a 500 later.
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except RecursionError:
            fail(400, "body: JSON nested too deeply")
        except ValueError as e:  # not JSON, not UTF-8, or a lone surrogate
            fail(400, f"body: expected a JSON object; this is not valid UTF-8 JSON ({str(e)[:80]})")
        if not isinstance(payload, dict):
            fail(400, "expected a JSON object body (Content-Type: application/json)")
        return payload

    def item_id_of(payload: dict[str, Any]) -> int:
        value = payload.get("item_id")
        if isinstance(value, bool) or not isinstance(value, int):
            fail(400, f"item_id: expected an integer, got {_short(value)}")
        if not 0 < value <= MAX_SQL_INT:
            fail(400, f"item_id: expected an item id from 1 to 2^63-1, got {_short(value)}")
        return value

    def revision_of(payload: dict[str, Any]) -> int:
        value = payload.get("revision", 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SQL_INT:
            fail(400, f"revision: expected a non-negative integer, got {_short(value)}")
        return value

    @app.before_request
    def protect():
        host = request.host
        try:
            hostname = "" if "@" in host else urlsplit("//" + host).hostname or ""
        except ValueError:
            fail(400, f"host {host!r}: not a host name")
        if public_host is not None:
            # Behind a proxy: it passes the public Host on (nginx: proxy_set_header Host $host), or talks to
            # us by our loopback address. Anything else is not a request for this deployment.
            if host.lower() != public_host and not is_loopback(hostname):
                fail(
                    400,
                    f"host {host!r} refused: this server answers for {public_origin} (--public_url) and on loopback",
                )
        elif not require_tokens and not is_loopback(hostname):
            # Without tokens the app trusts whoever reaches it, which is only safe on loopback: refuse other
            # Host headers too, so a web page cannot reach it through DNS rebinding.
            fail(400, f"host {host!r} refused: this server answers on 127.0.0.1/localhost only")
        sid = session.get("sid")
        g.sid = sid if isinstance(sid, str) else None
        g.session_record = store.session(g.sid, session_idle_seconds) if g.sid else None
        if request.method in ("GET", "HEAD"):
            return None
        if request.method != "POST":
            fail(405, f"{request.method} not allowed: the API takes GET (reads) and JSON POST (changes)")
        origin = request.headers.get("Origin")
        expected_origin = public_origin or request.host_url.rstrip("/")
        if origin is not None and origin.rstrip("/").lower() != expected_origin.lower():
            hint = "" if public_origin else " (behind a proxy? start the server with --public_url)"
            fail(403, f"cross-origin request from {origin} refused: this server's origin is {expected_origin}{hint}")
        if request.path != "/api/login" and g.session_record is None:
            fail(401, SESSION_ENDED)
        expected = g.session_record["csrf"] if g.session_record else session.get("pre_csrf")
        sent = request.headers.get("X-CSRF-Token", "")
        if (
            not isinstance(expected, str)
            or not expected
            or not hmac.compare_digest(expected.encode(), sent.encode("utf-8", "replace"))
        ):
            fail(403, "missing or wrong CSRF token: " + STALE_CSRF)
        if g.session_record and g.session_record["last_active"] < time.time() - min(60.0, session_idle_seconds / 10):
            store.touch_session(g.sid)  # a state-changing request: the idle timeout starts again
        return None

    @app.after_request
    def harden(response):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if secure:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        if request.path.startswith("/api/") or request.path == "/":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(SubmissionError)
    def submission_error(error: SubmissionError):
        response = jsonify(error=str(error))
        response.status_code = error.status
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if error.response is not None:
            return error.response
        message = error.description
        if error.code == 413:
            message = f"request too large: the body may hold at most {app.config['MAX_CONTENT_LENGTH'] // 1024} KiB"
        elif error.code == 405:
            message = f"{request.method} not allowed on {request.path}"
        response = jsonify(error=message)
        response.status_code = error.code or 500
        return response

    @app.get("/")
    def index():
        record = g.session_record
        if record is None:
            session.pop("sid", None)
            session.setdefault("pre_csrf", secrets.token_urlsafe(32))  # for the login request only
        return render_template(
            "index.html",
            csrf=record["csrf"] if record else session["pre_csrf"],
            labeler=record["labeler"] if record else None,
            require_tokens=require_tokens,
            pairs=pairs,
        )

    @app.get("/favicon.ico")
    def favicon():
        return "", 204

    @app.post("/api/login")
    def login():
        payload = body()
        if require_tokens:
            token = payload.get("token")
            name = store.labeler_for_token(token) if isinstance(token, str) and len(token) <= 256 else None
            if name is None:
                fail(403, "unknown access token: check it, or ask for a new one (lit-rlhf label add-labeler)")
        else:
            name = payload.get("name")
            if (
                not isinstance(name, str)
                or not name.strip()
                or len(name.strip()) > MAX_NAME_CHARS
                or not name.isprintable()
            ):
                fail(400, f"name: expected 1 to {MAX_NAME_CHARS} printable characters")
            name = name.strip()
            store.add_labeler(name)
        if g.sid:
            store.end_session(g.sid)  # a login never continues an earlier session (fixation)
        sid, csrf = store.create_session(name)
        session.clear()
        session["sid"] = sid
        return jsonify(labeler=name, csrf=csrf)

    @app.post("/api/logout")
    def logout():
        store.end_session(g.sid)
        session.clear()
        return jsonify(ok=True)

    @app.get("/api/config")
    def config():
        return jsonify(labeler=labeler(), flags=FLAGS, score_range=SCORE_RANGE, mode="pairs" if pairs else "rank")

    def shown(name: str, item_id: int, k: int) -> list[int]:
        """Stored response indices in the order the labeler sees them."""
        if pairs:
            return store.shown_order(name, item_id) or [0, 1]
        return display_order(item_id, name, k)

    def item_payload(name: str, item_id: Optional[int]) -> dict[str, Any]:
        if item_id is None:
            return {"item": None, "progress": store.progress(name)}
        item = store.item(item_id)
        order = shown(name, item.id, len(item.responses))
        judgment = store.judgment(name, item.id)
        if pairs:
            # Side by side the page gets positions (0 left, 1 right), never which policy wrote what.
            responses = [{"index": position, "text": item.responses[i]} for position, i in enumerate(order)]
            if judgment is not None and judgment["ranking"] is not None:
                judgment = dict(judgment, **_to_positions(judgment, order))
        else:
            responses = [{"index": i, "text": item.responses[i]} for i in order]
        return {
            "item": {"id": item.id, "prompt": item.prompt_text, "responses": responses},
            "judgment": None
            if judgment is None
            else {key: judgment[key] for key in ("status", "ranking", "scores", "flags", "rewrite", "revision")},
            "progress": store.progress(name),
        }

    @app.post("/api/next")
    def next_item():
        name = labeler()  # a POST: taking (or keeping) a lease changes state, so a GET never does it
        return jsonify(item_payload(name, store.next_item(name)))

    @app.get("/api/item/<int:item_id>")
    def get_item(item_id: int):
        name = labeler()
        if item_id > MAX_SQL_INT or store.item(item_id) is None or not store.can_see(name, item_id):
            fail(404, f"item {item_id}: not found among your items")
        return jsonify(item_payload(name, item_id))

    @app.post("/api/judgment")
    def submit():
        name, payload = labeler(), body()
        item_id = item_id_of(payload)
        item = store.item(item_id)
        if item is None:
            fail(404, f"item {item_id}: no such item")
        judgment = parse_judgment(payload, len(item.responses))
        if pairs:
            judgment = _from_positions(judgment, shown(name, item_id, 2))
        revision = store.submit(name, item_id, judgment, revision_of(payload))
        return jsonify(item_id=item_id, revision=revision)

    @app.post("/api/skip")
    def skip():
        name, payload = labeler(), body()
        item_id = item_id_of(payload)
        revision = store.submit(name, item_id, None, revision_of(payload))
        return jsonify(item_id=item_id, revision=revision)

    @app.get("/api/history")
    def history():
        return jsonify(history=store.history(labeler()))

    @app.get("/api/progress")
    def progress():
        return jsonify(store.progress(labeler()))

    return app


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _from_positions(judgment, order: list[int]):
    """A side-by-side judgment as submitted (positions: 0 left, 1 right) in stored response indices (0 a, 1 b)."""
    from lit_rlhf.label.judgments import Judgment

    scores, flags = [None, None], [[], []]
    for position, index in enumerate(order):
        scores[index], flags[index] = judgment.scores[position], judgment.flags[position]
    ranking = [sorted(order[p] for p in group) for group in judgment.ranking]
    return Judgment(ranking, scores, flags, judgment.rewrite)


def _to_positions(judgment: dict[str, Any], order: list[int]) -> dict[str, Any]:
    position = {index: p for p, index in enumerate(order)}
    return {
        "ranking": [sorted(position[i] for i in group) for group in judgment["ranking"]],
        "scores": [judgment["scores"][i] for i in order],
        "flags": [judgment["flags"][i] for i in order],
    }


def serve_app(app: Flask, host: str, port: int, threads: int, announce: str, suffix: str = "") -> None:
    """Serve with waitress; prints the address actually bound (``port=0`` picks a free port)."""
    from waitress import create_server

    server = create_server(app, host=host, port=port, threads=threads, ident="lit-rlhf-label")
    bound_port = server.effective_port
    shown_host = f"[{host}]" if ":" in host else host
    print(f"{announce} on http://{shown_host}:{bound_port}/{suffix} (Ctrl+C to stop)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
