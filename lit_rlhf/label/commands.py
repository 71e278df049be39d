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
) -> None:
    """Serve the labeling web app (imports ``samples`` first: only lines not in the database yet).

    Args:
        db: SQLite database file holding items and judgments (created if missing).
        samples: A ``lit-rlhf sample`` output file ({"prompt" or "messages", "responses": [K strings]}).
        host: Interface to listen on. Anything but loopback requires access tokens (``label add-labeler``).
        port: TCP port (0 picks a free one; the address is printed).
        overlap: How many labelers judge each item (2 or more measures agreement: ``label stats``).
        lease_seconds: How long an item handed to a labeler stays reserved for them.
        threads: Request threads of the web server.
        require_tokens: Log in with an access token even on loopback.
    """
    from lit_rlhf.label.server import create_app, is_loopback, serve_app

    store = LabelStore(db, overlap=overlap, lease_seconds=lease_seconds)
    if samples is not None:
        print(_import_line(samples, store.import_samples(samples)), flush=True)
    tokens = require_tokens or not is_loopback(host)
    if tokens and not store.has_tokens():
        raise ValueError(
            f"--host {host} serves beyond this machine and needs an access token per labeler; "
            f"create them first: lit-rlhf label add-labeler --db {db} --name NAME"
        )
    items = len(store.items())
    serve_app(create_app(store, require_tokens=tokens), host, port, threads,
              announce=f"lit-rlhf label: {items} items, overlap {overlap}, serving")


def import_samples(db: str, samples: str) -> None:
    """Import a ``lit-rlhf sample`` file: adds only lines not in the database yet.

    Args:
        db: SQLite database file (created if missing).
        samples: A ``lit-rlhf sample`` output file.
    """
    print(_import_line(samples, LabelStore(db).import_samples(samples)))


def add_labeler(db: str, name: str) -> None:
    """Create (or renew) a labeler's access token; it is printed once and stored only as a hash.

    Args:
        db: SQLite database file.
        name: The labeler's name, as stats and exports show it.
    """
    token = LabelStore(db).add_labeler(name, with_token=True)
    print(f"{name}: {token}")


def stats(db: str) -> None:
    """Per-labeler counts and speed, and inter-labeler agreement (share of response pairs ordered alike).

    Args:
        db: The labeling database.
    """
    print(format_stats(LabelStore(db)))


def _import_line(samples: str, counts) -> str:
    return (f"imported {samples}: {counts.added} new items, {counts.already_present} already present, "
            f"{counts.too_few_responses} lines with fewer than 2 distinct non-empty responses left out")


def main(argv: Optional[list[str]] = None) -> None:
    from jsonargparse import auto_cli

    from lit_rlhf.data.records import RecordError

    try:
        auto_cli(
            {"serve": serve, "import": import_samples, "export": export_comparisons, "stats": stats, "add-labeler": add_labeler},
            args=argv, as_positional=False, prog="lit-rlhf label",
            description="Human rankings: a local web app where labelers rank the K responses of `lit-rlhf sample`.",
        )
    except (RecordError, FileNotFoundError, ValueError) as e:
        # One line, like every other lit-rlhf command's bad input (exit code 2).
        print(f"lit-rlhf: error: {e}", file=sys.stderr)
        sys.exit(2)
