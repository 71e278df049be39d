"""``lit-rlhf label``: serve the labeling app, import samples, export comparisons, print statistics."""

from __future__ import annotations

import sys
from typing import Optional

from lit_rlhf.label.export import export_comparisons
from lit_rlhf.label.stats import format_stats
from lit_rlhf.label.storage import LabelStore


def serve(
    db: str,
    samples: Optional[str] = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    overlap: int = 1,
    lease_seconds: float = 1800.0,
    threads: int = 8,
    require_tokens: bool = False,
    pairs: Optional[str] = None,
    public_url: Optional[str] = None,
    session_idle_minutes: float = 240.0,
) -> None:
    """Serve the labeling web app (imports ``samples`` or ``pairs`` first: only lines not in the database yet).

    Args:
        db: SQLite database file holding items and judgments (created if missing).
        samples: A ``lit-rlhf sample`` output file ({"prompt" or "messages", "responses": [K strings]}).
        pairs: Side-by-side evaluation instead of ranking: a JSONL file of {"id", "prompt", "policy_a",
            "response_a", "policy_b", "response_b"} (docs/labeling.md). Labelers pick the better of
            two responses (or a tie) shown in a random, recorded left/right order, policies not named.
        host: Interface to listen on. Anything but loopback requires access tokens (``label add-labeler``).
        port: TCP port (0 picks a free one; the address is printed).
        overlap: How many labelers judge each item (2 or more measures agreement: ``label stats``).
        lease_seconds: How long an item handed to a labeler stays reserved for them.
        threads: Request threads of the web server.
        require_tokens: Log in with an access token even on loopback.
        public_url: The address labelers open when an HTTPS reverse proxy stands in front of this server
            (e.g. https://labels.example.org): Origin and Host checks use it, and with https the session
            cookie is Secure. A public URL that is not loopback requires access tokens.
        session_idle_minutes: A session ends after this long without a state-changing request (a judgment,
            a skip, the next item).
    """
    from urllib.parse import urlsplit

    from lit_rlhf.label.server import create_app, is_loopback, origin_of, serve_app

    if samples is not None and pairs is not None:
        raise ValueError("--samples ranks K responses, --pairs compares two side by side: give one of them")
    if session_idle_minutes <= 0:
        raise ValueError(f"session_idle_minutes must be positive, got {session_idle_minutes}")
    public_origin = origin_of(public_url) if public_url else None
    store = LabelStore(db, overlap=overlap, lease_seconds=lease_seconds)
    if samples is not None:
        print(_import_line(samples, store.import_samples(samples)), flush=True)
    if pairs is not None:
        counts = store.import_pairs(pairs)
        print(f"imported {pairs}: {counts.added} new pairs, {counts.already_present} already present", flush=True)
    public_remote = public_origin is not None and not is_loopback(urlsplit(public_origin).hostname or "")
    tokens = require_tokens or not is_loopback(host) or public_remote
    if tokens and not store.has_tokens():
        where = f"--public_url {public_url}" if public_remote else f"--host {host}"
        raise ValueError(
            f"{where} serves beyond this machine and needs an access token per labeler; "
            f"create them first: lit-rlhf label add-labeler --db {db} --name NAME"
        )
    items = len(store.items())
    what = "pairs side by side" if store.mode() == "pairs" else "items"
    app = create_app(
        store, require_tokens=tokens, public_url=public_url, session_idle_seconds=60.0 * session_idle_minutes
    )
    suffix = f" (labelers open {public_origin}/)" if public_origin else ""
    serve_app(
        app, host, port, threads, announce=f"lit-rlhf label: {items} {what}, overlap {overlap}, serving", suffix=suffix
    )


def import_samples(db: str, samples: str) -> None:
    """Import a ``lit-rlhf sample`` file: adds only lines not in the database yet.

    Args:
        db: SQLite database file (created if missing).
        samples: A ``lit-rlhf sample`` output file.
    """
    print(_import_line(samples, LabelStore(db).import_samples(samples)))


def add_labeler(db: str, name: str, revoke: bool = False) -> None:
    """Create (or renew) a labeler's access token; it is printed once and stored only as a hash.
    Renewing ends the labeler's sessions (the old token and every browser logged in with it stop working).

    Args:
        db: SQLite database file.
        name: The labeler's name, as stats and exports show it.
        revoke: Instead remove the labeler's token and end their sessions now (their judgments stay).
    """
    store = LabelStore(db)
    if revoke:
        ended = store.revoke_labeler(name)
        print(f"{name}: access token removed, {ended} session(s) ended")
        return
    token = store.add_labeler(name, with_token=True)
    print(f"{name}: {token}")


def stats(db: str) -> None:
    """Per-labeler counts and speed, and inter-labeler agreement (share of response pairs ordered alike);
    for a side-by-side database each policy's win rate (95% Wilson interval), agreement and position bias.

    Args:
        db: The labeling database.
    """
    print(format_stats(LabelStore(db)))


def _import_line(samples: str, counts) -> str:
    return (
        f"imported {samples}: {counts.added} new items, {counts.already_present} already present, "
        f"{counts.too_few_responses} lines with fewer than 2 distinct non-empty responses left out"
    )


def main(argv: Optional[list[str]] = None) -> None:
    from jsonargparse import auto_cli

    from lit_rlhf.data.records import RecordError

    try:
        auto_cli(
            {
                "serve": serve,
                "import": import_samples,
                "export": export_comparisons,
                "stats": stats,
                "add-labeler": add_labeler,
            },
            args=argv,
            as_positional=False,
            prog="lit-rlhf label",
            description="Human rankings: a local web app where labelers rank the K responses of `lit-rlhf sample`.",
        )
    except (RecordError, FileNotFoundError, ValueError) as e:
        # One line, like every other lit-rlhf command's bad input (exit code 2).
        print(f"lit-rlhf: error: {e}", file=sys.stderr)
        sys.exit(2)
