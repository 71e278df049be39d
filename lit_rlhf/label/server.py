"""The labeling web app: a Flask application over :class:`LabelStore`, served by waitress.

Security model: the app binds 127.0.0.1 unless told otherwise, and on any other interface every
labeler must log in with their own access token (``lit-rlhf label add-labeler``). A signed,
``HttpOnly``, ``SameSite=Strict`` session cookie carries who is logged in; every state-changing
request is a JSON ``POST`` that must echo the session's CSRF token in ``X-CSRF-Token`` (a header a
cross-site form cannot send) and, when the browser sends ``Origin``, come from this origin. Model
outputs are untrusted: the page only ever places them with ``textContent``, and the
Content-Security-Policy forbids inline and foreign scripts besides.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import secrets
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from flask import Flask, abort, jsonify, render_template, request, session
from werkzeug.exceptions import HTTPException

from lit_rlhf.label.judgments import FLAGS, SCORE_RANGE, SubmissionError, parse_judgment
from lit_rlhf.label.storage import LabelStore

HERE = Path(__file__).parent
MAX_NAME_CHARS = 64
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


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


def create_app(store: LabelStore, require_tokens: bool = False) -> Flask:
    """The Flask app over ``store``. With ``require_tokens`` labelers log in with an access token, not a name."""
    app = Flask(__name__, static_folder=str(HERE / "static"), template_folder=str(HERE / "templates"))
    app.config.update(
        SECRET_KEY=store.secret("session_key"),  # stored in the database: sessions survive a restart
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="lit_rlhf_label",
        MAX_CONTENT_LENGTH=256 * 1024,
    )
    app.json.sort_keys = False  # the flags keep the paper's order

    def fail(status: int, message: str):
        response = jsonify(error=message)
        response.status_code = status
        abort(response)

    def labeler() -> str:
        name = session.get("labeler")
        if not name:
            fail(401, "not logged in")
        return name

    def body() -> dict[str, Any]:
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict):
            fail(400, "expected a JSON object body (Content-Type: application/json)")
        return payload

    def item_id_of(payload: dict[str, Any]) -> int:
        value = payload.get("item_id")
        if isinstance(value, bool) or not isinstance(value, int):
            fail(400, f"item_id: expected an integer, got {value!r}")
        return value

    def revision_of(payload: dict[str, Any]) -> int:
        value = payload.get("revision", 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail(400, f"revision: expected a non-negative integer, got {value!r}")
        return value

    @app.before_request
    def protect():
        # Without tokens the app trusts whoever reaches it, which is only safe on loopback: refuse other
        # Host headers too, so a web page cannot reach it through DNS rebinding.
        if not require_tokens and not is_loopback(urlsplit("//" + request.host).hostname or ""):
            fail(400, f"host {request.host!r} refused: this server answers on 127.0.0.1/localhost only")
        if request.method != "POST":
            return None
        expected = session.get("csrf")
        sent = request.headers.get("X-CSRF-Token", "")
        if not expected or not hmac.compare_digest(str(expected), sent):
            fail(403, "missing or wrong CSRF token: reload the page")
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
            fail(403, f"cross-origin request from {origin} refused")
        return None

    @app.after_request
    def harden(response):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if request.path.startswith("/api/"):
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
        response = jsonify(error=error.description)
        response.status_code = error.code or 500
        return response

    @app.get("/")
    def index():
        session.setdefault("csrf", secrets.token_urlsafe(32))
        return render_template(
            "index.html", csrf=session["csrf"], labeler=session.get("labeler"), require_tokens=require_tokens,
        )

    @app.get("/favicon.ico")
    def favicon():
        return "", 204

    @app.post("/api/login")
    def login():
        payload = body()
        if require_tokens:
            name = store.labeler_for_token(str(payload.get("token", "")))
            if name is None:
                fail(403, "unknown access token")
        else:
            name = payload.get("name")
            if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME_CHARS or not name.isprintable():
                fail(400, f"name: expected 1 to {MAX_NAME_CHARS} printable characters")
            name = name.strip()
            store.add_labeler(name)
        session["labeler"] = name
        session["csrf"] = secrets.token_urlsafe(32)  # a new token per login session
        return jsonify(labeler=name, csrf=session["csrf"])

    @app.post("/api/logout")
    def logout():
        session.clear()
        return jsonify(ok=True)

    @app.get("/api/config")
    def config():
        return jsonify(labeler=labeler(), flags=FLAGS, score_range=SCORE_RANGE)

    def item_payload(name: str, item_id: Optional[int]) -> dict[str, Any]:
        if item_id is None:
            return {"item": None, "progress": store.progress(name)}
        item = store.item(item_id)
        order = display_order(item.id, name, len(item.responses))
        judgment = store.judgment(name, item.id)
        return {
            "item": {
                "id": item.id,
                "prompt": item.prompt_text,
                "responses": [{"index": i, "text": item.responses[i]} for i in order],
            },
            "judgment": None if judgment is None else {
                key: judgment[key] for key in ("status", "ranking", "scores", "flags", "rewrite", "revision")
            },
            "progress": store.progress(name),
        }

    @app.get("/api/next")
    def next_item():
        name = labeler()
        return jsonify(item_payload(name, store.next_item(name)))

    @app.get("/api/item/<int:item_id>")
    def get_item(item_id: int):
        name = labeler()
        if store.item(item_id) is None or not store.can_see(name, item_id):
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


def serve_app(app: Flask, host: str, port: int, threads: int, announce: str) -> None:
    """Serve with waitress; prints the address actually bound (``port=0`` picks a free port)."""
    from waitress import create_server

    server = create_server(app, host=host, port=port, threads=threads, ident="lit-rlhf-label")
    bound_port = server.effective_port
    shown_host = f"[{host}]" if ":" in host else host
    print(f"{announce} on http://{shown_host}:{bound_port}/ (Ctrl+C to stop)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
