-- The schema earshot shipped before versioned migrations. IF NOT EXISTS: a database file
-- made by that version already has these tables and adopts this migration as applied.
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY,
    name TEXT,
    created REAL NOT NULL,
    format TEXT NOT NULL,
    archive_format TEXT NOT NULL,
    rate INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    path TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    frames INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    ended REAL,
    client TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS streams_created ON streams (created DESC);
CREATE INDEX IF NOT EXISTS streams_state ON streams (state);
CREATE TABLE IF NOT EXISTS segments (
    stream TEXT NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    rate INTEGER NOT NULL,
    path TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (stream, n)
);
CREATE TABLE IF NOT EXISTS transcripts (
    stream TEXT NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
    segment INTEGER NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    text TEXT NOT NULL,
    words TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (stream, segment)
);
