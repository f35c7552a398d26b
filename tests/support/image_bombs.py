"""Compressed images whose header declares far more pixels than their bytes carry (decoder size bombs).

Built in milliseconds without ever holding the decoded size in memory, so tests can send them to the
codec and measure what a decode would have cost.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def zeros_zlib(n_mib: int) -> bytes:
    """A zlib stream that inflates to ``n_mib`` MiB of zeros: one full-flushed 1 MiB deflate block repeated
    (a full flush resets the compressor, so every block is the same bytes)."""
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(bytes(1 << 20)) + raw.flush(zlib.Z_FULL_FLUSH)
    adler = ((n_mib << 20) % 65521) << 16 | 1  # Adler-32 of zeros: a = 1, b = n mod 65521
    return b"\x78\xda" + block * n_mib + b"\x03\x00" + struct.pack(">I", adler)


def tiff_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """An 8-bit grey Deflate TIFF of ``width`` x ``height`` zeros in one strip (30000x30000: 0.9 MB)."""
    strip = zeros_zlib(-(-width * height // (1 << 20)))
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 4, height), (279, 4, len(strip))]  # (tag, type 3=SHORT/4=LONG, value)
    entries[5] = (273, 4, 8 + 2 + 12 * len(entries) + 4)  # the strip follows the IFD
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, 1, value, 0)
        for tag, kind, value in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + strip


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` with a token IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def small_jpeg(width: int = 16, height: int = 16) -> bytes:
    """A real grey baseline JPEG (OpenCV's encoder)."""
    ok, enc = cv2.imencode(".jpg", np.full((height, width), 128, np.uint8))
    assert ok
    return enc.tobytes()


def jpeg_with_size(data: bytes, width: int, height: int, junk_before_sof: bytes = b"") -> bytes:
    """``data`` (a JPEG) with its SOF0 rewritten to ``width`` x ``height``, ``junk_before_sof`` inserted
    before the SOF marker (libjpeg skips junk there with a warning and decodes the frame anyway)."""
    at = data.index(b"\xff\xc0")
    sof = bytearray(data[at:])
    sof[5:9] = struct.pack(">HH", height, width)
    return data[:at] + junk_before_sof + bytes(sof)
