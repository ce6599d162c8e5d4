-- Counters and event identities that must be unique across processes (issue 9).
-- next_segment: the segment number allocate_segment() hands out next; existing streams
-- continue after their highest stored segment.
ALTER TABLE streams ADD COLUMN next_segment INTEGER NOT NULL DEFAULT 0;
UPDATE streams SET next_segment = COALESCE(
    (SELECT MAX(n) + 1 FROM segments WHERE segments.stream = streams.id), 0);
-- claimed_events: one row per event identity (processor:type:offset) a process claimed.
CREATE TABLE claimed_events (
    stream TEXT NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (stream, key)
) WITHOUT ROWID;
