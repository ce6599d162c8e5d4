-- Counters and event identities that must be unique across processes (issue 9); the same
-- as sqlite/0002_cluster.sql.
ALTER TABLE streams ADD COLUMN next_segment integer NOT NULL DEFAULT 0;
UPDATE streams SET next_segment = COALESCE(
    (SELECT MAX(n) + 1 FROM segments WHERE segments.stream = streams.id), 0);
CREATE TABLE claimed_events (
    stream text NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
    key text NOT NULL,
    created double precision NOT NULL,
    PRIMARY KEY (stream, key)
);
