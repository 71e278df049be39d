"""Who may label: labelers, their access tokens (stored only as hashes) and their browser sessions; mixed into
:class:`~lit_rlhf.label.storage.LabelStore`, whose ``transaction`` and connection it uses."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any, Optional


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class LabelerAccess:
    """Labelers and sessions of a :class:`~lit_rlhf.label.storage.LabelStore`."""

    def add_labeler(self, name: str, with_token: bool = False) -> Optional[str]:
        """Register ``name``; with ``with_token`` a new access token is made (and returned, once)."""
        token = secrets.token_urlsafe(24) if with_token else None
        with self.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO labelers (name, created_at) VALUES (?, ?)", (name, time.time()))
            if token is not None:
                conn.execute("UPDATE labelers SET token_sha256 = ? WHERE name = ?", (hash_token(token), name))
                conn.execute("DELETE FROM sessions WHERE labeler = ?", (name,))  # the old token's sessions end
        return token

    def revoke_labeler(self, name: str) -> int:
        """Remove ``name``'s access token and end their sessions (their judgments stay); returns the sessions ended."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM labelers WHERE name = ?", (name,)).fetchone() is None:
                raise ValueError(
                    f"{self.path}: no labeler named {name!r} (known: {', '.join(self.labelers()) or 'none'})"
                )
            conn.execute("UPDATE labelers SET token_sha256 = NULL WHERE name = ?", (name,))
            return conn.execute("DELETE FROM sessions WHERE labeler = ?", (name,)).rowcount

    # ------------------------------------------------------------------------------------------
    # Sessions: the cookie carries a random id; the record says who, its CSRF token, and when it was last used

    def create_session(self, labeler: str) -> tuple[str, str]:
        """A new session for ``labeler``: (session id for the cookie, CSRF token)."""
        sid, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO sessions (id_sha256, labeler, csrf, created_at, last_active) VALUES (?, ?, ?, ?, ?)",
                (hash_token(sid), labeler, csrf, now, now),
            )
        return sid, csrf

    def session(self, sid: str, idle_seconds: float) -> Optional[dict[str, Any]]:
        """The live session ``sid`` (``labeler``, ``csrf``), or None: unknown, ended, revoked or idle too long.
        Reading changes nothing; :meth:`touch_session` records activity."""
        row = self._conn().execute("SELECT * FROM sessions WHERE id_sha256 = ?", (hash_token(sid),)).fetchone()
        if row is None or row["last_active"] + idle_seconds <= time.time():
            return None
        return dict(row)

    def touch_session(self, sid: str) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE sessions SET last_active = ? WHERE id_sha256 = ?", (time.time(), hash_token(sid)))

    def end_session(self, sid: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE id_sha256 = ?", (hash_token(sid),))

    def labeler_for_token(self, token: str) -> Optional[str]:
        if not token:
            return None
        row = self._conn().execute("SELECT name FROM labelers WHERE token_sha256 = ?", (hash_token(token),)).fetchone()
        return None if row is None else row["name"]

    def has_tokens(self) -> bool:
        return self._conn().execute("SELECT 1 FROM labelers WHERE token_sha256 IS NOT NULL").fetchone() is not None

    def labelers(self) -> list[str]:
        return [row["name"] for row in self._conn().execute("SELECT name FROM labelers ORDER BY name")]
