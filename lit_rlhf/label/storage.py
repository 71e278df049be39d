"""The labeling database: items imported from a ``lit-rlhf sample`` file, who holds which item, and judgments.

SQLite in WAL mode with ``synchronous=FULL``: every judgment is one ``BEGIN IMMEDIATE`` transaction,
so a judgment the server acknowledged survives the server being killed at any moment (and a power
cut), and concurrent requests are serialised by the database, not by the web server.

Assignment: an item is handed to at most ``overlap`` labelers. A labeler who opens the app gets a
*lease* on the next item (an ``assignments`` row); leases and ranked judgments together count
against the overlap, so two labelers never receive the same item beyond it. A lease older than
``lease_seconds`` stops counting (the labeler walked away) and the item can go to someone else.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from lit_rlhf.data.records import DataSource
from lit_rlhf.label.access import LabelerAccess
from lit_rlhf.label.imports import pair_rows, sample_rows
from lit_rlhf.label.judgments import Judgment, SubmissionError
from lit_rlhf.label.schema import SCHEMA

#: The largest id SQLite stores (a signed 64-bit integer): anything above is no item of ours.
MAX_SQL_INT = 2**63 - 1


#: Ranked judgments of one item (``{item}``: the SQL expression of its id).
RANKED_COUNT = "SELECT count(*) FROM judgments j WHERE j.item_id = {item} AND j.status = 'ranked'"


@dataclass(frozen=True)
class ImportCounts:
    added: int
    already_present: int
    too_few_responses: int


@dataclass(frozen=True)
class Item:
    id: int
    prompt_text: str
    responses: list[str]
    record: dict[str, Any]


class LabelStore(LabelerAccess):
    """The labeling database at ``path`` (created on first use). Safe to share between threads: each
    thread gets its own connection.

    Args:
        path: SQLite file.
        overlap: Labelers per item (more than 1 measures agreement).
        lease_seconds: How long an item handed to a labeler stays reserved for them.
    """

    def __init__(self, path: str | Path, overlap: int = 1, lease_seconds: float = 1800.0):
        if overlap < 1:
            raise ValueError(f"overlap must be at least 1, got {overlap}")
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        self.path = Path(path)
        self.overlap = overlap
        self.lease_seconds = lease_seconds
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a transaction takes the write lock
            # up front and two concurrent assignments cannot both read "one slot left".
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------------------------------
    # Settings, items and labelers

    def secret(self, key: str) -> str:
        """A random secret stored in the database, created once: sessions survive a restart."""
        with self.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return row["value"]
            value = secrets.token_hex(32)
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            return value

    def mode(self) -> str:
        """``"rank"`` (K responses ranked, ``--samples``) or ``"pairs"`` (side-by-side evaluation, ``--pairs``)."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()
        return "rank" if row is None else row["value"]

    def _claim_mode(self, conn: sqlite3.Connection, mode: str) -> None:
        row = conn.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()
        current = (
            row["value"] if row is not None else ("rank" if conn.execute("SELECT 1 FROM items").fetchone() else None)
        )
        if current is not None and current != mode:
            what = {"rank": "ranking items (--samples)", "pairs": "side-by-side pairs (--pairs)"}
            raise ValueError(f"{self.path} holds {what[current]}; use another --db for {what[mode]}")
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('mode', ?)", (mode,))

    def import_pairs(self, pairs: DataSource) -> ImportCounts:
        """Add the lines of a side-by-side pairs file not in the database yet (format: :func:`pair_rows`);
        every line is checked before anything is written."""
        return self._insert_items(pair_rows(pairs), "pairs", too_few=0)

    def _insert_items(self, rows: list[tuple], mode: str, too_few: int) -> ImportCounts:
        now = time.time()
        with self.transaction() as conn:
            self._claim_mode(conn, mode)
            before = conn.execute("SELECT count(*) FROM items").fetchone()[0]
            conn.executemany(
                "INSERT OR IGNORE INTO items (content_key, record, prompt_text, responses, source, line, imported_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [row + (now,) for row in rows],
            )
            added = conn.execute("SELECT count(*) FROM items").fetchone()[0] - before
        return ImportCounts(added=added, already_present=len(rows) - added, too_few_responses=too_few)

    def import_samples(self, samples: DataSource, fields: Optional[dict[str, str]] = None) -> ImportCounts:
        """Add the lines of a ``lit-rlhf sample`` file not in the database yet (:func:`sample_rows`); a bad file
        imports nothing, and lines left with fewer than two distinct responses are counted, not imported."""
        rows, too_few = sample_rows(samples, fields)
        return self._insert_items(rows, "rank", too_few=too_few)

    def item(self, item_id: int) -> Optional[Item]:
        if not 0 < item_id <= MAX_SQL_INT:
            return None
        row = self._conn().execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else _item(row)

    def items(self) -> list[Item]:
        return [_item(row) for row in self._conn().execute("SELECT * FROM items ORDER BY id")]

    # ------------------------------------------------------------------------------------------
    # Handing out items

    def next_item(self, labeler: str) -> Optional[int]:
        """The item ``labeler`` should judge now: the one they already hold, else a new lease on the
        first item they have not judged whose ranked judgments plus live leases are under the overlap."""
        now = time.time()
        with self.transaction() as conn:
            # A lease that ran out while others filled the item is void: the labeler moves on.
            conn.execute(
                "DELETE FROM assignments WHERE labeler = ? AND lease_expires <= ? AND "
                f"({RANKED_COUNT.format(item='assignments.item_id')}) >= ?",
                (labeler, now, self.overlap),
            )
            row = conn.execute(
                "SELECT item_id FROM assignments WHERE labeler = ? ORDER BY shown_at, item_id LIMIT 1", (labeler,)
            ).fetchone()
            if row is not None:
                conn.execute(
                    "UPDATE assignments SET lease_expires = ? WHERE item_id = ? AND labeler = ?",
                    (now + self.lease_seconds, row["item_id"], labeler),
                )
                return row["item_id"]
            row = conn.execute(
                f"""SELECT i.id FROM items i
                   WHERE NOT EXISTS (SELECT 1 FROM judgments j WHERE j.item_id = i.id AND j.labeler = ?)
                     AND ({RANKED_COUNT.format(item="i.id")})
                       + (SELECT count(*) FROM assignments a WHERE a.item_id = i.id AND a.lease_expires > ?) < ?
                   ORDER BY i.id LIMIT 1""",
                (labeler, now, self.overlap),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "INSERT INTO assignments (item_id, labeler, shown_at, lease_expires) VALUES (?, ?, ?, ?)",
                (row["id"], labeler, now, now + self.lease_seconds),
            )
            if self.mode() == "pairs":  # a fresh coin per labeler and item, recorded: position bias is measurable
                display = [0, 1] if secrets.randbelow(2) == 0 else [1, 0]
                conn.execute(
                    "INSERT OR IGNORE INTO shown_order (item_id, labeler, display) VALUES (?, ?, ?)",
                    (row["id"], labeler, json.dumps(display)),
                )
            return row["id"]

    def shown_order(self, labeler: str, item_id: int) -> Optional[list[int]]:
        """The recorded display order of ``item_id`` for ``labeler`` (side-by-side items), or None."""
        row = (
            self._conn()
            .execute("SELECT display FROM shown_order WHERE item_id = ? AND labeler = ?", (item_id, labeler))
            .fetchone()
        )
        return None if row is None else json.loads(row["display"])

    def shown_orders(self) -> dict[tuple[int, str], list[int]]:
        return {
            (row["item_id"], row["labeler"]): json.loads(row["display"])
            for row in self._conn().execute("SELECT * FROM shown_order")
        }

    def can_see(self, labeler: str, item_id: int) -> bool:
        if not 0 < item_id <= MAX_SQL_INT:
            return False
        conn = self._conn()
        return any(
            conn.execute(f"SELECT 1 FROM {table} WHERE item_id = ? AND labeler = ?", (item_id, labeler)).fetchone()
            for table in ("assignments", "judgments")
        )

    # ------------------------------------------------------------------------------------------
    # Judgments

    def judgment(self, labeler: str, item_id: int) -> Optional[dict[str, Any]]:
        row = (
            self._conn()
            .execute("SELECT * FROM judgments WHERE item_id = ? AND labeler = ?", (item_id, labeler))
            .fetchone()
        )
        return None if row is None else _judgment(row)

    def submit(self, labeler: str, item_id: int, judgment: Optional[Judgment], base_revision: int = 0) -> int:
        """Store a ranking (or a skip, ``judgment=None``) in one transaction; returns the new revision.

        A first judgment needs the labeler's lease on the item; changing an earlier one needs the
        revision the labeler saw (``base_revision``), so a stale page cannot overwrite a newer answer.
        """
        now = time.time()
        status = "skipped" if judgment is None else "ranked"
        values = (
            (None, None, None, None)
            if judgment is None
            else (
                json.dumps(judgment.ranking),
                json.dumps(judgment.scores),
                json.dumps(judgment.flags),
                judgment.rewrite,
            )
        )
        if not 0 < item_id <= MAX_SQL_INT:
            raise SubmissionError(f"item {item_id}: no such item", status=404)
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
                raise SubmissionError(f"item {item_id}: no such item", status=404)
            existing = conn.execute(
                "SELECT revision, status FROM judgments WHERE item_id = ? AND labeler = ?", (item_id, labeler)
            ).fetchone()
            if existing is not None:
                if base_revision != existing["revision"]:
                    raise SubmissionError(
                        f"item {item_id}: stale submission (revision {base_revision}, stored {existing['revision']}); "
                        "reload the item",
                        status=409,
                    )
                if existing["status"] == "skipped" and status == "ranked":
                    # A skip gave the slot away: ranking it now may not push the item past the overlap.
                    ranked = conn.execute(f"SELECT ({RANKED_COUNT.format(item='?')})", (item_id,)).fetchone()[0]
                    if ranked >= self.overlap:
                        raise SubmissionError(
                            f"item {item_id}: you skipped it and {ranked} other labeler(s) have since ranked it "
                            f"(overlap {self.overlap}); your skip stands, nothing was stored",
                            status=409,
                        )
                conn.execute(
                    "UPDATE judgments SET status = ?, ranking = ?, scores = ?, flags = ?, rewrite = ?, "
                    "submitted_at = ?, revision = revision + 1 WHERE item_id = ? AND labeler = ?",
                    (status, *values, now, item_id, labeler),
                )
                return existing["revision"] + 1
            lease = conn.execute(
                "SELECT shown_at, lease_expires FROM assignments WHERE item_id = ? AND labeler = ?", (item_id, labeler)
            ).fetchone()
            if lease is None:
                raise SubmissionError(f"item {item_id}: not assigned to {labeler}; fetch /api/next first", status=409)
            if (
                lease["lease_expires"] <= now
                and conn.execute(f"SELECT ({RANKED_COUNT.format(item='?')}) >= ?", (item_id, self.overlap)).fetchone()[
                    0
                ]
            ):
                raise SubmissionError(
                    f"item {item_id}: your lease ran out and other labelers completed the item; nothing was stored",
                    status=409,
                )
            if base_revision != 0:
                raise SubmissionError(
                    f"item {item_id}: stale submission (revision {base_revision}, nothing stored yet)", status=409
                )
            conn.execute(
                "INSERT INTO judgments (item_id, labeler, status, ranking, scores, flags, rewrite, shown_at, "
                "submitted_at, revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (item_id, labeler, status, *values, lease["shown_at"], now),
            )
            conn.execute("DELETE FROM assignments WHERE item_id = ? AND labeler = ?", (item_id, labeler))
            return 1

    def judgments(self, status: Optional[str] = "ranked") -> list[dict[str, Any]]:
        """All judgments (of one status, or every status with ``None``), oldest item first."""
        sql, args = "SELECT * FROM judgments", ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        return [_judgment(row) for row in self._conn().execute(sql + " ORDER BY item_id, labeler", args)]

    def history(self, labeler: str, limit: int = 100) -> list[dict[str, Any]]:
        """The labeler's judgments, newest first, with the start of each prompt."""
        rows = self._conn().execute(
            "SELECT j.item_id, j.status, j.submitted_at, j.revision, substr(i.prompt_text, 1, 120) AS prompt "
            "FROM judgments j JOIN items i ON i.id = j.item_id WHERE j.labeler = ? "
            "ORDER BY j.submitted_at DESC, j.id DESC LIMIT ?",
            (labeler, limit),
        )
        return [dict(row) for row in rows]

    def progress(self, labeler: str) -> dict[str, int]:
        """Done, skipped and remaining for ``labeler``; items complete (judged by ``overlap`` labelers) overall."""
        conn = self._conn()
        mine = dict(
            conn.execute(
                "SELECT status, count(*) FROM judgments WHERE labeler = ? GROUP BY status", (labeler,)
            ).fetchall()
        )
        remaining = conn.execute(
            f"""SELECT count(*) FROM items i
               WHERE NOT EXISTS (SELECT 1 FROM judgments j WHERE j.item_id = i.id AND j.labeler = ?)
                 AND ({RANKED_COUNT.format(item="i.id")}) < ?""",
            (labeler, self.overlap),
        ).fetchone()[0]
        total = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        complete = conn.execute(
            "SELECT count(*) FROM (SELECT item_id FROM judgments WHERE status = 'ranked' "
            "GROUP BY item_id HAVING count(*) >= ?)",
            (self.overlap,),
        ).fetchone()[0]
        return {
            "done": mine.get("ranked", 0),
            "skipped": mine.get("skipped", 0),
            "remaining": remaining,
            "items": total,
            "items_complete": complete,
            "overlap": self.overlap,
        }


def _item(row: sqlite3.Row) -> Item:
    return Item(
        id=row["id"],
        prompt_text=row["prompt_text"],
        responses=json.loads(row["responses"]),
        record=json.loads(row["record"]),
    )


def _judgment(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in ("ranking", "scores", "flags"):
        out[key] = None if out[key] is None else json.loads(out[key])
    return out
