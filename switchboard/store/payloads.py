"""Payloads as stored: event bodies and entity states, compressed with zstd when that pays.

A stored payload is one tag byte saying how the rest is encoded, then the bytes:

* ``0x00``: the payload as received (below ``MIN_BYTES``, when zstd does not make it smaller, or with
  ``cassandra.compress_payloads = false``);
* ``0x01``: a zstd frame of the payload (level 1; the frame header carries the content size).

The encoding travels inside the value, not in a column of its own. Two writes of one cell with the same
timestamp (an entity's state at one version, written twice) are reconciled by Cassandra cell by cell, larger
value wins, so a separate codec column could pair one write's bytes with the other write's codec; a tagged
value is always whole. Turning compression on or off is therefore safe at any time: every reader decodes both.

Rows written before payloads were encoded keep their bytes, as received, in the columns they were written to
(``events.body``, ``entities.state``); the encoded columns are ``events.body_encoded`` and
``entities.state_encoded``. Readers use the old column where the new one is empty and, for an entity's state,
where the old one was written later (by a newer version of the entity: ``switchboard.store.entities``).

Why: Cassandra's write path costs in proportion to the bytes (commit log serialisation and checksum, memtable
copy, flush, compaction, the request itself), and an event's body is most of them (once: the ``entity``
operation's state refers to it, ``switchboard.store.entities``). A ~5 KB JSON event shrinks ~3.8x in ~12 µs
of the processor's CPU (docs/benchmarks.md, for what it saves on Cassandra).
"""

from __future__ import annotations

import threading

import zstandard

from switchboard.errors import CorruptData

RAW = 0x00
ZSTD = 0x01
MIN_BYTES = 128  # smaller payloads gain little and cost a frame header
LEVEL = 1

_local = threading.local()  # zstd contexts are not thread-safe: one pair per thread


def _compressor() -> zstandard.ZstdCompressor:
    c: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if c is None:
        c = _local.compressor = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def encode(data: bytes, *, compress: bool = True) -> bytes:
    """``data`` as stored: zstd-compressed when ``compress``, at least ``MIN_BYTES`` long and smaller for
    it; as received otherwise."""
    if compress and len(data) >= MIN_BYTES:
        packed = _compressor().compress(data)
        if len(packed) < len(data):
            return bytes((ZSTD,)) + packed
    return bytes((RAW,)) + data


def decode(value: bytes) -> bytes:
    """The payload ``encode`` stored as ``value``. Raises ``CorruptData`` when it cannot be decoded."""
    if not value:
        raise CorruptData("a stored payload is empty (not even its tag byte)")
    tag = value[0]
    if tag == RAW:
        return bytes(value[1:])
    if tag == ZSTD:
        try:
            return _decompressor().decompress(value[1:])
        except zstandard.ZstdError as exc:
            raise CorruptData(f"a stored zstd payload does not decompress: {exc}") from exc
    raise CorruptData(f"a stored payload has unknown encoding tag {tag:#04x}")


def decode_or(value: bytes | None, legacy: bytes | None) -> bytes:
    """The payload of a row that has ``value`` in its encoded column or, written before payloads were
    encoded, ``legacy`` as received (``b""`` when it has neither)."""
    if value is not None:
        return decode(value)
    return legacy or b""


class Encoder:
    """Encodes the payloads of one write (a commit): each distinct bytes object once, so that a body staged
    twice in one commit (an event's body as another entity's state, say) is compressed once. Keeps what it
    encoded until it is dropped: make one per write."""

    def __init__(self, *, compress: bool) -> None:
        self.compress = compress
        self._done: dict[int, tuple[bytes, bytes]] = {}  # id(data) -> (data, encoded); data held: ids stay unique

    def __call__(self, data: bytes) -> bytes:
        hit = self._done.get(id(data))
        if hit is not None and hit[0] is data:
            return hit[1]
        out = encode(data, compress=self.compress)
        self._done[id(data)] = (data, out)
        return out
