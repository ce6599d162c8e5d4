-- The same tables as sqlite/0001_initial.sql, in PostgreSQL types (jsonb for JSON, bigint
-- for frame counts, which pass 2^31 after 12 h at 48 kHz).
CREATE TABLE streams (
    id text PRIMARY KEY,
    name text,
    created double precision NOT NULL,
    format text NOT NULL,
    archive_format text NOT NULL,
    rate integer NOT NULL,
    channels integer NOT NULL,
    path text NOT NULL,
    token_hash text NOT NULL,
    frames bigint NOT NULL DEFAULT 0,
    state text NOT NULL CHECK (state IN ('live', 'interrupted', 'finished')),
    ended double precision,
    client jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX streams_created ON streams (created DESC, id DESC);
CREATE INDEX streams_state ON streams (state);
CREATE TABLE segments (
    stream text NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
    n integer NOT NULL,
    start bigint NOT NULL,
    "end" bigint NOT NULL,
    rate integer NOT NULL,
    path text NOT NULL,
    created double precision NOT NULL,
    PRIMARY KEY (stream, n)
);
CREATE TABLE transcripts (
    stream text NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
    segment integer NOT NULL,
    start double precision NOT NULL,
    "end" double precision NOT NULL,
    text text NOT NULL,
    words jsonb NOT NULL,
    created double precision NOT NULL,
    PRIMARY KEY (stream, segment)
);
