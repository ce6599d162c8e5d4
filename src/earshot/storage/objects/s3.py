"""An archive store in S3 or any S3-compatible service (AWS S3, MinIO, Ceph RGW, Garage, R2).

``--archive-store s3://BUCKET/PREFIX`` (env ``EARSHOT_ARCHIVE_STORE``); the endpoint, region
and credentials come from the variables AWS's own tools read (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_REGION`` or ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) or explicit arguments; without keys,
boto3's own chain (a profile, an instance role, a Kubernetes service account) applies.

An object's key is the file's path relative to the data directory under the prefix:
``PREFIX/streams/ID.part0001.wav``, the same relative path the metadata store records, so
any gateway finds any part.

Integrity, portable across S3-compatible services: every upload carries ``Content-MD5``
(each part of a multipart upload too), so the service refuses a body that arrived damaged;
afterwards the object's size and ETag are checked against the file (a plain upload's ETag is
the MD5 of the bytes, a multipart upload's the MD5 of the parts' MD5s followed by ``-N``);
an ETag of another form (server-side encryption with KMS) is accepted on the size and the
per-request Content-MD5 alone, and said so in the result. The file's SHA-256 is stored in
the object's metadata (``x-amz-meta-sha256``) for independent checks. botocore's newer
default checksums (CRC headers on every request, validation of every response) are set to
``when_required``: several S3-compatible services refuse or mangle them (ranged GETs that
carry the whole object's checksum, for one).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from earshot.errors import ConfigError, MissingDependency, StorageError

MiB = 1 << 20
MIN_PART = 5 * MiB  # S3's smallest part (all but the last)
MAX_PARTS = 10_000
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
PROBE_DIR = ".earshot-probe"


class ObjectStoreError(StorageError):
    """The object store refused or failed. ``reason``: ``unreachable``, ``no_bucket``,
    ``bad_credentials``, ``denied``, ``mismatch`` (an upload that did not verify),
    ``missing`` (no such object), ``local`` (the local file), or ``error``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying later (everything but a local file that is gone)."""
        return self.reason != "local"


@dataclass(frozen=True)
class StoreLocation:
    bucket: str
    prefix: str  # "" or "a/b/" (always ending in "/")

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_store_url(url: str) -> StoreLocation:
    """``s3://BUCKET[/PREFIX]`` → bucket and prefix; anything else is a ConfigError."""
    m = re.fullmatch(r"s3://([^/]*)(?:/(.*))?", url.strip())
    if m is None:
        raise ConfigError(f"--archive-store {url!r}: use s3://BUCKET/PREFIX")
    bucket, prefix = m.group(1), (m.group(2) or "").strip("/")
    if not BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(f"--archive-store {url!r}: {bucket!r} is not a valid bucket name "
                          "(3-63 characters: lower-case letters, digits, '.', '-')")
    if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
        raise ConfigError(f"--archive-store {url!r}: the prefix has an empty, '.' or '..' "
                          "segment")
    return StoreLocation(bucket, f"{prefix}/" if prefix else "")


@dataclass(frozen=True)
class S3Config:
    location: StoreLocation
    endpoint_url: str | None = None  # None: AWS S3 itself
    region: str | None = None
    access_key_id: str | None = None  # None: boto3's credential chain
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    addressing_style: str | None = None  # None: path with an endpoint_url, else AWS's default
    part_size: int = 16 * MiB  # multipart part size
    multipart_threshold: int = 64 * MiB  # files this big or bigger go up in parts
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    attempts: int = 3  # botocore's own retries per request (the queue retries beyond)

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART:
            raise ConfigError(f"object store part size must be at least {MIN_PART} bytes")
        if self.multipart_threshold < self.part_size:
            raise ConfigError("object store multipart threshold must be at least the part size")
        if self.addressing_style not in (None, "path", "virtual", "auto"):
            raise ConfigError(f"addressing style {self.addressing_style!r}: path, virtual or auto")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ConfigError("object store credentials need both an access key id and a "
                              "secret access key (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")

    @classmethod
    def from_env(cls, url: str, env: Mapping[str, str] | None = None,
                 **overrides: Any) -> S3Config:
        """From ``s3://BUCKET/PREFIX`` and the AWS_* variables; ``overrides`` (explicit
        options) win over the variables."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            "access_key_id": env.get("AWS_ACCESS_KEY_ID"),
            "secret_access_key": env.get("AWS_SECRET_ACCESS_KEY"),
            "session_token": env.get("AWS_SESSION_TOKEN"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(location=parse_store_url(url), **values)


@dataclass(frozen=True)
class UploadResult:
    key: str
    size: int
    etag: str
    parts: int  # 0: a plain upload
    sha256: str  # hex, of the local file
    verified: str  # "etag" (size and MD5-based ETag) or "content-md5" (size, and per request)
    seconds: float


# -- pure helpers ------------------------------------------------------------------------------
def multipart_etag(part_md5s: list[bytes]) -> str:
    """The ETag S3 gives a multipart upload: MD5 of the parts' MD5 digests, then ``-N``."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


def part_size_for(size: int, part_size: int) -> int:
    """A part size that keeps a file within S3's 10 000 parts (in whole MiB)."""
    need = -(-size // MAX_PARTS)
    return max(part_size, -(-need // MiB) * MiB)


def check_name(name: str) -> str:
    """A relative path as a key suffix; refuses absolute paths, ``..`` and empty segments."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise ValueError(f"object name {name!r} is not a relative path")
    if any(p in ("", ".", "..") for p in name.split("/")):
        raise ValueError(f"object name {name!r} has an empty, '.' or '..' segment")
    return name


def http_range(start: int, end: int | None) -> str:
    """Bytes ``[start, end)`` as an HTTP Range value (end None: to the end)."""
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"byte range [{start}, {end}) is not valid")
    return f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


# -- the store ---------------------------------------------------------------------------------
def _boto3() -> Any:
    try:
        import boto3  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise MissingDependency("--archive-store s3://… needs boto3: "
                                "pip install 'earshot[s3]'") from None
    return boto3


class S3ObjectStore:
    """Upload closed files, read byte ranges, delete; blocking calls (run them in a thread).
    A boto3 client is thread-safe: one store serves every thread."""

    def __init__(self, config: S3Config, client: Any = None) -> None:
        self.config = config
        self.location = config.location
        self.bucket = config.location.bucket
        self.client = client if client is not None else self._make_client()

    def _make_client(self) -> Any:
        boto3 = _boto3()
        from botocore.config import Config

        c = self.config
        style = c.addressing_style or ("path" if c.endpoint_url else None)
        bc = Config(
            region_name=c.region, connect_timeout=c.connect_timeout,
            read_timeout=c.read_timeout,
            retries={"max_attempts": c.attempts, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": style} if style else None,  # type: ignore[arg-type,unused-ignore]
        )
        session = boto3.session.Session(
            aws_access_key_id=c.access_key_id, aws_secret_access_key=c.secret_access_key,
            aws_session_token=c.session_token, region_name=c.region)
        return session.client("s3", endpoint_url=c.endpoint_url, config=bc)

    @property
    def where(self) -> str:
        return f"{self.location.url} at {self.config.endpoint_url or 'AWS S3'}"

    def key(self, name: str) -> str:
        return self.location.prefix + check_name(name)

    # -- errors in words ---------------------------------------------------------------------
    def _error(self, exc: BaseException, doing: str) -> ObjectStoreError:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        if isinstance(exc, ConnectionError | HTTPClientError):  # refused, timed out, cut
            return ObjectStoreError(
                "unreachable", f"object store {self.config.endpoint_url or 'AWS S3'} "
                f"unreachable while {doing}: {exc}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return ObjectStoreError(
                "bad_credentials", f"no credentials for {self.where} while {doing}: set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile or role)")
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            text = f"{code or status}: {err.get('Message') or 'no message'}"
            if code in ("NoSuchBucket",) or (code == "404" and doing.startswith("checking")):
                return ObjectStoreError("no_bucket", f"bucket {self.bucket!r} does not exist "
                                        f"at {self.config.endpoint_url or 'AWS S3'} ({text})")
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectStoreError("missing", f"no object while {doing} in {self.where}")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                        "ExpiredToken", "AuthorizationHeaderMalformed"):
                return ObjectStoreError(
                    "bad_credentials", f"{self.where} refused the credentials while {doing} "
                    f"({text}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
            if code in ("AccessDenied", "403", "AllAccessDisabled") or status == 403:
                return ObjectStoreError(
                    "denied", f"access denied while {doing} in {self.where} ({text}): the "
                    "credentials need s3:ListBucket, s3:PutObject, s3:GetObject and "
                    "s3:DeleteObject on the bucket and prefix (docs/deploy.md)")
            return ObjectStoreError("error", f"object store error while {doing} in "
                                    f"{self.where} ({text})")
        if isinstance(exc, BotoCoreError):
            return ObjectStoreError("error", f"object store error while {doing} in "
                                    f"{self.where}: {exc}")
        raise exc

    def _call(self, doing: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, doing) from None

    # -- start-up ----------------------------------------------------------------------------
    def check(self) -> None:
        """Prove at start-up what uploads will need: the endpoint answers, the bucket exists,
        the credentials are accepted and may list, write, read and delete under the prefix.
        Raises :class:`ObjectStoreError` saying which of these failed."""
        self._call("checking the bucket", self.client.list_objects_v2,
                   Prefix=self.location.prefix, MaxKeys=1)
        probe = self.key(f"{PROBE_DIR}/{os.getpid()}-{time.time_ns()}")
        body = b"earshot start-up check\n"
        self._call("checking write access (PutObject)", self.client.put_object, Key=probe,
                   Body=body, ContentMD5=_b64(hashlib.md5(body).digest()))
        try:
            got = self._call("checking read access (GetObject)", self.client.get_object,
                             Key=probe)["Body"].read()
            if got != body:
                raise ObjectStoreError("mismatch", f"{self.where} returned other bytes than "
                                       "were written by the start-up check")
        finally:
            self._call("checking delete access (DeleteObject)", self.client.delete_object,
                       Key=probe)

    # -- upload ------------------------------------------------------------------------------
    def upload(self, path: str | os.PathLike[str], name: str) -> UploadResult:
        """Put a closed local file at ``name``; verified by size and checksum before it
        returns. Multipart from ``multipart_threshold`` on."""
        t0 = time.monotonic()
        key = self.key(name)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise ObjectStoreError("local", f"{path}: the file is gone") from None
        except OSError as exc:
            raise ObjectStoreError("local", f"{path}: {exc.strerror or exc}") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            md5, sha = _hashes(f, size)  # (a first pass: the metadata needs the SHA-256)
            if size >= self.config.multipart_threshold:
                etag, parts = self._put_multipart(f, key, size, sha)
            else:
                etag, parts = self._put_single(f, key, size, md5, sha)
            if os.fstat(f.fileno()).st_size != size:
                raise ObjectStoreError("local", f"{path} changed while it was uploaded")
        verified = self._verify(key, size, etag)
        return UploadResult(key, size, etag, parts, sha, verified, time.monotonic() - t0)

    def _put_single(self, f: Any, key: str, size: int, md5: bytes,
                    sha: str) -> tuple[str, int]:
        self._call(f"uploading {key}", self.client.put_object, Key=key,
                   Body=_Limited(f, size), ContentLength=size, ContentMD5=_b64(md5),
                   Metadata={"sha256": sha})
        return md5.hex(), 0

    def _put_multipart(self, f: Any, key: str, size: int, sha: str) -> tuple[str, int]:
        part_size = part_size_for(size, self.config.part_size)
        up = self._call(f"starting the multipart upload of {key}",
                        self.client.create_multipart_upload, Key=key,
                        Metadata={"sha256": sha})
        upload_id = up["UploadId"]
        digests: list[bytes] = []
        done: list[dict[str, Any]] = []
        try:
            for n, pos in enumerate(range(0, size, part_size), start=1):
                block = f.read(min(part_size, size - pos))
                if len(block) != min(part_size, size - pos):
                    raise ObjectStoreError("local", f"{key}: the file shrank while it was "
                                           "uploaded")
                digest = hashlib.md5(block).digest()
                r = self._call(f"uploading part {n} of {key}", self.client.upload_part,
                               Key=key, UploadId=upload_id, PartNumber=n, Body=block,
                               ContentMD5=_b64(digest))
                etag = str(r["ETag"]).strip('"')
                encrypted = r.get("ServerSideEncryption") == "aws:kms" or r.get(
                    "SSECustomerAlgorithm")
                if _is_md5(etag) and etag != digest.hex() and not encrypted:
                    raise ObjectStoreError("mismatch", f"part {n} of {key}: the store's ETag "
                                           f"{etag} is not the part's MD5 {digest.hex()}")
                digests.append(digest)
                done.append({"PartNumber": n, "ETag": r["ETag"]})
            self._call(f"completing the multipart upload of {key}",
                       self.client.complete_multipart_upload, Key=key, UploadId=upload_id,
                       MultipartUpload={"Parts": done})
        except BaseException:
            from contextlib import suppress

            with suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id)
            raise
        return multipart_etag(digests), len(digests)

    def _verify(self, key: str, size: int, expected_etag: str) -> str:
        head = self._call(f"verifying {key}", self.client.head_object, Key=key)
        got_size = int(head["ContentLength"])
        if got_size != size:
            raise ObjectStoreError("mismatch", f"{key}: {got_size} bytes in the store, "
                                   f"{size} in the file")
        etag = str(head.get("ETag", "")).strip('"')
        if etag == expected_etag:
            return "etag"
        encrypted = head.get("ServerSideEncryption") == "aws:kms" or head.get(
            "SSECustomerAlgorithm")
        if encrypted or not re.fullmatch(r"[0-9a-f]{32}(-[0-9]+)?", etag):
            return "content-md5"  # an ETag that is no MD5 (SSE-KMS, SSE-C, other stores)
        raise ObjectStoreError("mismatch", f"{key}: the store's ETag {etag} is not the "
                               f"file's {expected_etag}")

    # -- reads -------------------------------------------------------------------------------
    def size(self, name: str) -> int | None:
        """The object's size, or None when there is none."""
        try:
            head = self._call(f"looking up {name}", self.client.head_object, Key=self.key(name))
        except ObjectStoreError as exc:
            if exc.reason == "missing":
                return None
            raise
        return int(head["ContentLength"])

    def read(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of an object, by one ranged GET (never the whole object);
        shorter when the object ends first, empty when it ends before ``start``."""
        if end == start:
            if start < 0:
                raise ValueError(f"byte range [{start}, {end}) is not valid")
            return b""
        return b"".join(self.iter_range(name, start, end))

    def iter_range(self, name: str, start: int = 0, end: int | None = None,
                   chunk_size: int = 256 * 1024) -> Iterator[bytes]:
        """Bytes ``[start, end)`` (end None: to the end) as chunks, streamed from one ranged
        GET: a download of any size in bounded memory."""
        value = http_range(start, end)
        if end is not None and end == start:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key(name)
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=key, Range=value)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return  # starts at or past the end
            raise self._error(exc, f"reading {key}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"reading {key}") from None
        body = r["Body"]
        try:
            while True:
                try:
                    chunk = body.read(chunk_size)
                except BotoCoreError as exc:
                    raise self._error(exc, f"reading {key}") from None
                if not chunk:
                    break
                yield chunk
        finally:
            body.close()

    def download(self, name: str, dest: str | os.PathLike[str]) -> int:
        """The whole object into a local file (atomically: a temporary name, then renamed)."""
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.download-{os.getpid()}")
        n = 0
        try:
            with open(tmp, "wb") as out:
                for chunk in self.iter_range(name):
                    out.write(chunk)
                    n += len(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return n

    # -- delete ------------------------------------------------------------------------------
    def delete(self, name: str) -> None:
        """Remove an object (no error if there is none)."""
        self._call(f"deleting {name}", self.client.delete_object, Key=self.key(name))

    def names(self, under: str = "") -> list[str]:
        """Names (relative to the prefix) of the objects under ``under``."""
        out: list[str] = []
        prefix = self.location.prefix + under
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            r = self._call(f"listing {prefix}", self.client.list_objects_v2, **kw)
            out += [o["Key"][len(self.location.prefix):] for o in r.get("Contents", [])]
            if not r.get("IsTruncated"):
                return out
            token = r.get("NextContinuationToken")

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


def _hashes(f: Any, size: int) -> tuple[bytes, str]:
    """MD5 digest and SHA-256 hex of the first ``size`` bytes; the file rewound."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    left = size
    while left > 0:
        block = f.read(min(MiB, left))
        if not block:
            break
        md5.update(block)
        sha.update(block)
        left -= len(block)
    f.seek(0)
    return md5.digest(), sha.hexdigest()


def _is_md5(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{32}", text))


class _Limited:
    """A file object that reads at most ``size`` bytes (what was hashed is what is sent)."""

    def __init__(self, f: Any, size: int) -> None:
        self.f, self.left, self.start = f, size, f.tell()
        self.size = size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data: bytes = self.f.read(n)
        self.left -= len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:  # botocore rewinds on retry
        if whence == 0:
            pos = offset
        elif whence == 1:
            pos = self.tell() + offset
        else:
            pos = self.size + offset
        self.f.seek(self.start + pos)
        self.left = self.size - pos
        return pos

    def tell(self) -> int:
        return self.size - self.left

    def __len__(self) -> int:
        return self.size
