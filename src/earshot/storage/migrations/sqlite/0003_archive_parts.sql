-- Archives in object storage (issue 23): one row per part of a stream's archive that the
-- cluster knows of. A row is made when a gateway starts a part after the first (a rotation,
-- or a stream continued on another gateway), and completed when the part's file is in the
-- object store (name: its key under the store's prefix; size, frames, checksums).
CREATE TABLE archive_parts (
    stream TEXT NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    start INTEGER NOT NULL,
    gateway TEXT NOT NULL DEFAULT '',
    name TEXT,
    size INTEGER,
    frames INTEGER,
    sha256 TEXT,
    etag TEXT,
    uploaded REAL,
    PRIMARY KEY (stream, n)
) WITHOUT ROWID;
