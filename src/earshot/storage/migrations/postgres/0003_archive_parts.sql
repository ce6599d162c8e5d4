-- Archives in object storage (issue 23); the same as sqlite/0003_archive_parts.sql.
CREATE TABLE archive_parts (
    stream text NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
    n integer NOT NULL,
    start bigint NOT NULL,
    gateway text NOT NULL DEFAULT '',
    name text,
    size bigint,
    frames bigint,
    sha256 text,
    etag text,
    uploaded double precision,
    PRIMARY KEY (stream, n)
);
