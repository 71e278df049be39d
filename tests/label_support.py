"""Helpers for the labeling app's tests: sample files, a small HTTP client, and servers to talk to."""

from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

#: How every browser test starts Debian's Chromium (``playwright install`` cannot download browsers here).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def synthetic_samples(num_items: int, k: int = 4) -> list[dict]:
    """Lines shaped like ``lit-rlhf sample`` output: the prompt record's fields plus K responses."""
    return [
        {"prompt": f"Reverse the letters of 'word{i}'.", "family": "reverse",
         "responses": [f"{i}drow", f"word{i}", f"{i}dr ow", f"drow{i}", f"w{i}", f"d{i}", f"o{i}", f"r{i}", f"x{i}"][:k]}
        for i in range(num_items)
    ]


def write_samples(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")
    return path


class Client:
    """A labeler's HTTP client: a cookie jar for the session, and the CSRF token every POST echoes."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf: Optional[str] = None
        self.last_headers: list[tuple[str, str]] = []

    def request(self, method: str, path: str, body: Any = None, headers: Optional[dict] = None, csrf: bool = True) -> tuple[int, Any]:
        data = None
        all_headers = {"Accept": "application/json", **(headers or {})}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        if csrf and self.csrf and method == "POST":
            all_headers.setdefault("X-CSRF-Token", self.csrf)
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=all_headers)
        try:
            with self.opener.open(request, timeout=30) as response:
                status, raw, kind = response.status, response.read(), response.headers.get("Content-Type", "")
                self.last_headers = list(response.headers.items())
        except urllib.error.HTTPError as e:
            status, raw, kind = e.code, e.read(), e.headers.get("Content-Type", "")
            self.last_headers = list(e.headers.items())
        return status, (json.loads(raw) if "json" in kind else raw.decode())

    def open_page(self) -> str:
        status, html = self.request("GET", "/")
        assert status == 200, html
        self.csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', html).group(1)
        return html

    def login(self, name: str) -> "Client":
        self.open_page()
        status, data = self.request("POST", "/api/login", {"name": name})
        assert status == 200, data
        self.csrf = data["csrf"]
        return self

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("POST", path, body)

    def next(self) -> tuple[int, Any]:
        """The item to judge now (a POST: taking a lease changes state)."""
        return self.request("POST", "/api/next", {})

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)


def best_first(item: dict) -> list[list[int]]:
    """A ranking without ties in the order the page shows the responses."""
    return [[r["index"]] for r in item["responses"]]


@contextmanager
def threaded_server(store, require_tokens: bool = False, threads: int = 8, **app_options) -> Iterator[str]:
    """The app served by waitress on 127.0.0.1 (a free port) in a background thread; yields its URL."""
    from waitress import create_server

    from lit_rlhf.label.server import create_app

    app = create_app(store, require_tokens=require_tokens, **app_options)
    server = create_server(app, host="127.0.0.1", port=0, threads=threads)
    stop = threading.Event()

    def serve() -> None:  # waitress's own run() loop, in short turns so that it can be stopped before closing
        while not stop.is_set():
            server.asyncore.loop(timeout=0.05, map=server._map, count=1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()


def start_server_process(db: Path, samples: Optional[Path] = None, *extra: str, port: int = 0) -> tuple[subprocess.Popen, str]:
    """``lit-rlhf label serve`` as its own process (so a test can SIGKILL it); returns it and its URL."""
    command = [sys.executable, "-m", "lit_rlhf.cli", "label", "serve", "--db", str(db), "--port", str(port), *extra]
    if samples is not None:
        command += ["--samples", str(samples)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"serving on (http://\S+?)/? ", line)
        if found:
            # Keep reading its output so a chatty server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process, found.group(1).rstrip("/")
    process.kill()
    raise RuntimeError("label serve did not start:\n" + "".join(lines))


def pair_rows() -> list[dict]:
    """A side-by-side pairs file: ppo against sft on four questions (item 3 lists sft as policy_a).
    Each response starts with its policy's name, so a test can tell which is which."""
    rows = []
    for i in range(1, 5):
        a, b = ("sft", "ppo") if i == 3 else ("ppo", "sft")
        rows.append({"id": f"q{i}", "prompt": f"Question {i}?", "policy_a": a, "response_a": f"{a} answers {i}",
                     "policy_b": b, "response_b": f"{b} answers {i}"})
    return rows


def pick(item: dict, want: str) -> tuple[list[list[int]], Optional[int]]:
    """The side-by-side ranking (in page positions) that prefers policy ``want`` (or a tie), and the
    winner's position (0 left, 1 right; None for a tie)."""
    if want == "tie":
        return [[0, 1]], None
    position = next(r["index"] for r in item["responses"] if r["text"].startswith(want))
    return [[position], [1 - position]], position
