"""``multipart/form-data`` bodies (what the ``openai`` SDK uploads), pure: bytes in, parts
out. Small on purpose: the body is read whole (up to the upload limit) before parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from earshot.integrations.common import DoorError

_PARAM = re.compile(r';\s*([\w*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
MAX_PARTS = 100


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def _params(value: str) -> dict[str, str]:
    out = {}
    for key, raw in _PARAM.findall(";" + value.split(";", 1)[1] if ";" in value else ""):
        v = raw.strip()
        if v.startswith('"') and v.endswith('"'):
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        out[key.lower()] = v
    return out


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type, or a 400."""
    ct = content_type or ""
    if ct.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise DoorError("invalid_request", "expected a multipart/form-data body (the file and "
                        "the fields, as the OpenAI API takes them)", status=400)
    boundary = _params(ct).get("boundary", "")
    if not 1 <= len(boundary) <= 200:
        raise DoorError("invalid_request", "multipart/form-data without a boundary",
                        status=400)
    return boundary.encode("latin-1")


def parse(body: bytes, boundary: bytes) -> list[Part]:
    """The parts of a ``multipart/form-data`` body, in order, or a 400 (``DoorError``)."""
    delim = b"--" + boundary
    if not body.startswith(delim):
        start = body.find(b"\r\n" + delim)
        if start < 0:
            raise DoorError("invalid_request", "malformed multipart body: no boundary",
                            status=400)
        body = body[start + 2:]
    chunks = body.split(b"\r\n" + delim)
    parts: list[Part] = []
    first = chunks[0][len(delim):]
    chunks = [first, *chunks[1:]]
    closed = False
    for chunk in chunks:
        if chunk.startswith(b"--"):
            closed = True
            break
        if not chunk.startswith(b"\r\n"):
            raise DoorError("invalid_request", "malformed multipart body", status=400)
        head, sep, data = chunk[2:].partition(b"\r\n\r\n")
        if not sep:
            raise DoorError("invalid_request", "malformed multipart part (no header end)",
                            status=400)
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        if disposition.split(";", 1)[0].strip().lower() != "form-data":
            raise DoorError("invalid_request", "a multipart part without "
                            "'Content-Disposition: form-data'", status=400)
        params = _params(disposition)
        parts.append(Part(params.get("name", ""), params.get("filename"),
                          headers.get("content-type"), data))
        if len(parts) > MAX_PARTS:
            raise DoorError("invalid_request", f"more than {MAX_PARTS} form fields",
                            status=400)
    if not closed:
        raise DoorError("invalid_request", "malformed multipart body: it does not end",
                        status=400)
    return parts
