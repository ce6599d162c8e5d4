"""Ogg Opus archives (RFC 7845) written incrementally, with exact granule positions.

Two ways in:

* **remux** (preferred when the ingest is Opus): ``OggOpusWriter(path, rate, channels,
  pre_skip=P)`` then :meth:`OggOpusWriter.write_packet` for every packet received. The
  client's packets are stored bit-exact (no re-encoding, no PyAV needed); ``P`` is the
  stream's pre-skip at ``rate`` (what the client sent in ``start``);
* **encode**: ``OggOpusWriter(path, rate, channels)`` then :meth:`OggOpusWriter.write` with
  PCM; an :class:`~earshot.codec.opus.OpusEncoder` (PyAV) runs inside and supplies the
  pre-skip.

Granule positions count 48 kHz samples *including* the pre-skip (RFC 7845 §4): a page's
granule is the total duration of the packets up to its last one. The OpusHead carries
``pre_skip * 48000 // rate`` and the final (EOS) page's granule is ``pre_skip_48k +
length * 48000 // rate`` — less than the packets' total when the end was padded — so a
reader plays exactly ``length`` samples: the stream's sample count.

Pages are written by hand (the Ogg CRC is CRC-32 with polynomial 0x04C11DB7, MSB first,
no reflection, initial value 0 — not zlib's; computed here with zlib on bit-reversed
bytes). One packet never spans pages.

Crash safety: pages go out with plain ``os.write`` (no user-space buffer), so a written
page survives ``kill -9`` (``fsync=True`` adds power-loss safety, one fsync per page). A
page is written once at least ``page_ms`` (default 1 s) of audio is pending beyond a tail
of at least 120 ms + pre-skip, which is held back so that the final page can always trim
the end padding. If the process dies, the file is a valid Ogg Opus stream without an EOS
page, ending at the last complete page: lost are the pending packets (at most about
``page_ms`` + 130 ms of audio) plus, in encode mode, the encoder's buffer (< 1 frame +
lookahead); the tail is not trimmed. A page torn by a power cut fails its CRC and readers
skip it; :func:`scan` finds the last good page and :meth:`OggOpusWriter.reopen` truncates
there and continues a remux archive.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from earshot.codec.opus import (
    MAX_PACKET_SAMPLES_48K,
    OPUS_RATES,
    Application,
    OpusEncoder,
    OpusHead,
    parse_packet,
)
from earshot.errors import EarshotError, ProtocolError, StorageError
from earshot.wire.codes import Code

_BOS, _EOS = 0x02, 0x04
_PAGE_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq,
# crc, segments
_REV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
VENDOR = "earshot"


def ogg_crc(data: bytes) -> int:
    """The Ogg page checksum (RFC 3533): CRC-32/MPEG-2 polynomial, init 0, no final xor."""
    reflected = zlib.crc32(data.translate(_REV8), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def ogg_page(flags: int, granule: int, serial: int, seq: int, packets: list[bytes]) -> bytes:
    """One Ogg page holding whole ``packets`` (at most 255 lacing values)."""
    lacing = bytearray()
    for p in packets:
        lacing += b"\xff" * (len(p) // 255) + bytes([len(p) % 255])
    if len(lacing) > 255:
        raise StorageError(f"{len(packets)} packets need {len(lacing)} > 255 lacing values")
    head = _PAGE_HEADER.pack(b"OggS", 0, flags, granule, serial, seq, 0, len(lacing))
    page = bytearray(head + lacing + b"".join(packets))
    struct.pack_into("<I", page, 22, ogg_crc(bytes(page)))
    return bytes(page)


def opus_tags(vendor: str = VENDOR, comments: tuple[str, ...] = ()) -> bytes:
    """The RFC 7845 §5.2 comment header."""
    v = vendor.encode()
    out = b"OpusTags" + struct.pack("<I", len(v)) + v + struct.pack("<I", len(comments))
    for c in comments:
        b = c.encode()
        out += struct.pack("<I", len(b)) + b
    return out


@dataclass(frozen=True, slots=True)
class OggOpusInfo:
    """What :func:`scan` found: the header and the last good page."""

    head: OpusHead
    serial: int
    pages: int  # good pages, headers included
    granule: int  # granule of the last good page that completes a packet (48 kHz)
    next_seq: int
    eos: bool  # the stream was closed (has its EOS page)
    valid_bytes: int  # end of the last good page; anything after it is torn or foreign
    size: int

    @property
    def samples_48k(self) -> int:
        """Playable length at 48 kHz: last granule minus pre-skip."""
        return max(0, self.granule - self.head.pre_skip_48k)

    def frames(self, rate: int) -> int:
        """Playable length in samples at ``rate``."""
        return self.samples_48k * rate // 48000


def scan(path: str | os.PathLike[str]) -> OggOpusInfo:
    """Walk an Ogg Opus file page by page (checking CRCs) up to its first bad page."""
    data = Path(path).read_bytes()
    pos = pages = 0
    granule, seq, serial, eos = 0, 0, 0, False
    head: OpusHead | None = None
    while pos + 27 <= len(data):
        cap, ver, flags, gran, ser, sq, crc, nseg = _PAGE_HEADER.unpack_from(data, pos)
        if cap != b"OggS" or ver != 0 or pos + 27 + nseg > len(data):
            break
        lacing = data[pos + 27 : pos + 27 + nseg]
        end = pos + 27 + nseg + sum(lacing)
        if end > len(data):
            break
        page = bytearray(data[pos:end])
        page[22:26] = b"\0\0\0\0"
        if ogg_crc(bytes(page)) != crc:
            break
        if pages == 0:
            try:
                head = OpusHead.parse(data[pos + 27 + nseg : end])
            except EarshotError as e:
                raise StorageError(f"{path}: not an Ogg Opus file ({e})") from None
            serial = ser
        elif ser != serial:
            break  # chained or multiplexed streams: not ours
        if gran != -1:
            granule = gran
        seq, eos, pages, pos = sq + 1, bool(flags & _EOS), pages + 1, end
    if head is None:
        raise StorageError(f"{path}: no valid Ogg Opus header page")
    return OggOpusInfo(head, serial, pages, granule, seq, eos, pos, len(data))


class OggOpusWriter:
    """Append-only Ogg Opus writer; see the module docstring for modes and crash safety.

    ``pre_skip`` (samples at ``rate``) given: remux mode, feed :meth:`write_packet`.
    ``pre_skip=None``: encode mode, feed :meth:`write` (``bitrate``, ``application`` and
    ``frame_ms`` configure the encoder). Never overwrites an existing file.
    """

    def __init__(self, path: str | os.PathLike[str], rate: int, channels: int, *,
                 pre_skip: int | None = None, bitrate: int = 32000,
                 application: Application = "audio", frame_ms: float = 20,
                 page_ms: int = 1000, fsync: bool = False, serial: int | None = None,
                 comments: tuple[str, ...] = ()) -> None:
        if rate not in OPUS_RATES or channels not in (1, 2):
            raise StorageError(f"Ogg Opus needs a rate in {OPUS_RATES} and 1 or 2 channels")
        self.path = Path(path)
        self.rate = rate
        self.channels = channels
        self._factor = 48000 // rate
        self.encoder = (
            OpusEncoder(rate, channels, frame_ms=frame_ms, bitrate=bitrate,
                        application=application)
            if pre_skip is None else None
        )
        self.pre_skip = self.encoder.pre_skip if self.encoder is not None else int(pre_skip or 0)
        if not 0 <= self.pre_skip * self._factor <= 0xFFFF:
            raise StorageError(f"pre-skip of {self.pre_skip} samples does not fit an OpusHead")
        self._pre48 = self.pre_skip * self._factor
        self._page48 = max(0, page_ms) * 48
        self._hold48 = MAX_PACKET_SAMPLES_48K + self._pre48
        self._fsync = fsync
        self.serial = serial if serial is not None else int.from_bytes(os.urandom(4), "little")
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise StorageError(f"{path} already exists; archives are never overwritten") from None
        self._seq = 0
        self._granule = 0  # 48 kHz samples in all packets so far (pre-skip included)
        self._written = 0  # granule of the last page on disk
        self._pending: list[tuple[bytes, int]] = []
        self._pending_segs = 0
        self.final_frames: int | None = None  # the length recorded by close()
        try:
            head = OpusHead(channels, self._pre48, rate)
            self._write_page(_BOS, 0, [head.to_bytes()])
            self._write_page(0, 0, [opus_tags(comments=comments)])
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def reopen(cls, path: str | os.PathLike[str], rate: int, *, page_ms: int = 1000,
               fsync: bool = False) -> OggOpusWriter:
        """Continue a remux archive left open (e.g. by a crash): truncate to the last good
        page and append packets after it. Its :attr:`position` says where it ends."""
        info = scan(path)
        if info.eos:
            raise StorageError(f"{path} is a finished Ogg Opus stream (EOS page present)")
        if rate not in OPUS_RATES or info.head.pre_skip_48k % (48000 // rate):
            raise StorageError(f"{path}: cannot continue at {rate} Hz")
        self = cls.__new__(cls)
        self.path = Path(path)
        self.rate = rate
        self.channels = info.head.channels
        self._factor = 48000 // rate
        self.encoder = None
        self._pre48 = info.head.pre_skip_48k
        self.pre_skip = self._pre48 // self._factor
        self._page48 = max(0, page_ms) * 48
        self._hold48 = MAX_PACKET_SAMPLES_48K + self._pre48
        self._fsync = fsync
        self.serial = info.serial
        self._fd = os.open(self.path, os.O_WRONLY)
        os.truncate(self._fd, info.valid_bytes)
        os.lseek(self._fd, info.valid_bytes, os.SEEK_SET)
        self._seq = info.next_seq
        self._granule = self._written = info.granule
        self._pending, self._pending_segs = [], 0
        self.final_frames = None
        return self

    # -- state ----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def position(self) -> int:
        """Stream samples (at ``rate``) covered by the packets so far, pre-skip removed."""
        return max(0, self._granule - self._pre48) // self._factor

    @property
    def durable_position(self) -> int:
        """Stream samples on disk in complete pages (what survives a crash now)."""
        return max(0, self._written - self._pre48) // self._factor

    # -- input ----------------------------------------------------------------------------
    def write_packet(self, packet: bytes, samples: int | None = None) -> None:
        """Append one Opus packet as received (remux mode). ``samples``, if given, must be
        its duration at ``rate`` (as counted by the server); it is checked against the TOC.
        """
        self._check_open()
        if self.encoder is not None:
            raise StorageError("this archive encodes PCM (pre_skip=None); use write()")
        n48 = parse_packet(packet)[1]
        if samples is not None and samples * self._factor != n48:
            raise ProtocolError(
                Code.BAD_OPUS, f"packet lasts {n48 // self._factor} samples, not {samples}"
            )
        self._add(bytes(packet), n48)

    def write(self, pcm: np.ndarray) -> int:
        """Encode float32 (or int16) PCM ``(frames, channels)`` and append (encode mode).
        Returns the number of packets produced."""
        self._check_open()
        if self.encoder is None:
            raise StorageError("this archive remuxes packets (pre_skip given); use write_packet()")
        packets = self.encoder.encode(pcm)
        for p in packets:
            self._add(p, parse_packet(p)[1])
        return len(packets)

    def flush(self) -> None:
        """Write every pending page now, except the tail held back for end trimming."""
        self._check_open()
        self._drain(self._hold48)

    def close(self, length: int | None = None) -> int:
        """Write the last page (EOS) and close; returns the length recorded, in samples.

        ``length`` is the stream's true sample count: by default the PCM written (encode
        mode) or all packets minus pre-skip (remux mode). The end is trimmed to it; it
        cannot exceed the packets, and trimming stops at the last page already written."""
        if self._fd < 0:
            return self.final_frames or 0
        try:
            if self.encoder is not None:
                for p in self.encoder.flush():
                    self._add(p, parse_packet(p)[1], auto=False)
                if length is None:
                    length = self.encoder.frames_in
            if length is None:
                length = self.position
            final = self._pre48 + length * self._factor
            if length < 0 or (length > 0 and final > self._granule):
                raise StorageError(
                    f"length {length} is beyond the {self.position} samples of packets written"
                )
            # an empty stream ends at 0; trimming cannot reach into pages already written
            final = max(min(final, self._granule), self._written) if self._granule else 0
            self._write_page(_EOS, final, [p for p, _ in self._pending])
            self._pending, self._pending_segs = [], 0
            self.final_frames = max(0, final - self._pre48) // self._factor
        finally:
            os.close(self._fd)
            self._fd = -1
        return self.final_frames

    def __enter__(self) -> OggOpusWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pages ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._fd < 0:
            raise StorageError(f"{self.path} is closed")

    def _add(self, packet: bytes, n48: int, *, auto: bool = True) -> None:
        segs = len(packet) // 255 + 1
        if self._pending_segs + segs > 255:
            self._drain(self._hold48)
            if self._pending_segs + segs > 255:
                self._drain(0)
        self._pending.append((packet, n48))
        self._pending_segs += segs
        self._granule += n48
        if auto and self._granule - self._written >= self._page48 + self._hold48:
            self._drain(self._hold48)

    def _drain(self, keep48: int) -> None:
        """Write pending packets as one page, keeping a tail of at least ``keep48``."""
        split, tail = len(self._pending), 0
        while split > 0 and tail < keep48:
            split -= 1
            tail += self._pending[split][1]
        if split == 0:
            return
        chunk, self._pending = self._pending[:split], self._pending[split:]
        granule = self._written + sum(n for _, n in chunk)
        self._write_page(0, granule, [p for p, _ in chunk])
        self._pending_segs = sum(len(p) // 255 + 1 for p, _ in self._pending)

    def _write_page(self, flags: int, granule: int, packets: list[bytes]) -> None:
        page = ogg_page(flags, granule, self.serial, self._seq, packets)
        view = memoryview(page)
        while view:
            view = view[os.write(self._fd, view):]
        if self._fsync:
            os.fsync(self._fd)
        self._seq += 1
        if packets:
            self._written = max(self._written, granule)
