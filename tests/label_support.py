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
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def synthetic_samples(num_items: int, k: int = 4) -> list[dict]:
    """Lines shaped like ``lit-rlhf sample`` output: the prompt record's fields plus K responses."""
    return [
        {
            "prompt": f"Reverse the letters of 'word{i}'.",
            "family": "reverse",
            "responses": [f"{i}drow", f"word{i}", f"{i}dr ow", f"drow{i}", f"w{i}", f"d{i}", f"o{i}", f"r{i}", f"x{i}"][
                :k
            ],
        }
        for i in range(num_items)
    ]


def write_samples(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8"
    )
    return path


class Client:
    """A labeler's HTTP client: a cookie jar for the session, and the CSRF token every POST echoes."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf: Optional[str] = None
        self.last_headers: list[tuple[str, str]] = []

    def request(
        self, method: str, path: str, body: Any = None, headers: Optional[dict] = None, csrf: bool = True
    ) -> tuple[int, Any]:
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


def start_server_process(
    db: Path, samples: Optional[Path] = None, *extra: str, port: int = 0
) -> tuple[subprocess.Popen, str]:
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
        rows.append(
            {
                "id": f"q{i}",
                "prompt": f"Question {i}?",
                "policy_a": a,
                "response_a": f"{a} answers {i}",
                "policy_b": b,
                "response_b": f"{b} answers {i}",
            }
        )
    return rows


def pick(item: dict, want: str) -> tuple[list[list[int]], Optional[int]]:
    """The side-by-side ranking (in page positions) that prefers policy ``want`` (or a tie), and the
    winner's position (0 left, 1 right; None for a tie)."""
    if want == "tie":
        return [[0, 1]], None
    position = next(r["index"] for r in item["responses"] if r["text"].startswith(want))
    return [[position], [1 - position]], position


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for localhost / 127.0.0.1 (the `cryptography` package), valid for a day."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "proxy.crt", folder / "proxy.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class HttpsProxy:
    """A TLS-terminating reverse proxy on 127.0.0.1 (a free port), like nginx in front of ``label serve``:
    it passes the browser's Host on and adds X-Forwarded-Proto/For (which the app ignores). ``backend``
    (``http://127.0.0.1:PORT``) may be set after it starts, once the app knows the proxy's public URL."""

    HOP = {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
    }

    def __init__(self, folder: Path):
        import http.server
        import ssl

        self.backend: Optional[str] = None
        self.requests = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                import http.client
                from urllib.parse import urlsplit

                proxy.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                target = urlsplit(proxy.backend)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HttpsProxy.HOP}
                headers.update({"X-Forwarded-Proto": "https", "X-Forwarded-For": self.client_address[0]})
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in HttpsProxy.HOP and key.lower() not in ("server", "date"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = forward

            def log_message(self, *args) -> None:
                pass

        cert, key = self_signed_certificate(folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                # A browser probing the self-signed certificate first drops a connection or two: not news.
                if not isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # The TLS handshake happens in each request's thread (on first read), never in the accept loop.
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self.url = f"https://localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> "HttpsProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
