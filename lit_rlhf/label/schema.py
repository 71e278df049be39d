"""The labeling database's tables (:class:`~lit_rlhf.label.storage.LabelStore`)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    content_key TEXT NOT NULL UNIQUE,   -- sha256 of the sample line: importing a file again adds only new lines
    record TEXT NOT NULL,               -- the sample line's fields except the responses (JSON)
    prompt_text TEXT NOT NULL,          -- what the labeler reads
    responses TEXT NOT NULL,            -- JSON list of K distinct non-empty strings
    source TEXT NOT NULL,
    line INTEGER NOT NULL,
    imported_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS labelers (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT UNIQUE,           -- only a hash: the token itself is shown once, when created
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    item_id INTEGER NOT NULL REFERENCES items(id),
    labeler TEXT NOT NULL REFERENCES labelers(name),
    shown_at REAL NOT NULL,
    lease_expires REAL NOT NULL,
    PRIMARY KEY (item_id, labeler)
);
CREATE INDEX IF NOT EXISTS assignments_by_labeler ON assignments(labeler);
CREATE TABLE IF NOT EXISTS judgments (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id),
    labeler TEXT NOT NULL REFERENCES labelers(name),
    status TEXT NOT NULL CHECK (status IN ('ranked', 'skipped')),
    ranking TEXT,                       -- JSON tie groups of response indices, best first
    scores TEXT,                        -- JSON list: 1-7 or null per response
    flags TEXT,                         -- JSON list of flag-name lists per response
    rewrite TEXT,                       -- the labeler's own better response (a demonstration), optional
    shown_at REAL NOT NULL,
    submitted_at REAL NOT NULL,
    revision INTEGER NOT NULL,
    UNIQUE (item_id, labeler)
);
CREATE INDEX IF NOT EXISTS judgments_by_item ON judgments(item_id, status);
CREATE TABLE IF NOT EXISTS sessions (
    id_sha256 TEXT PRIMARY KEY,         -- only a hash of the session id the cookie carries
    labeler TEXT NOT NULL REFERENCES labelers(name),
    csrf TEXT NOT NULL,                 -- the session's CSRF token (never in the cookie)
    created_at REAL NOT NULL,
    last_active REAL NOT NULL           -- the last state-changing request (POST): the idle timeout counts from it
);
CREATE INDEX IF NOT EXISTS sessions_by_labeler ON sessions(labeler);
CREATE TABLE IF NOT EXISTS shown_order (
    item_id INTEGER NOT NULL REFERENCES items(id),
    labeler TEXT NOT NULL REFERENCES labelers(name),
    display TEXT NOT NULL,              -- JSON list of response indices as shown (side by side: [left, right])
    PRIMARY KEY (item_id, labeler)
);
"""
