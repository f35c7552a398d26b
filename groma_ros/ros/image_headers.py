"""The size a compressed image declares in its header, read before any decoder runs.

Why: a decoder allocates the whole frame from the header's width and height before it reads a pixel,
so a few hundred bytes can claim gigabytes (a 0.9 MB TIFF declaring 30000x30000, a 336-byte JPEG
whose SOF hides behind a junk byte that libjpeg skips). The codec therefore accepts only the formats
whose header is parsed here, PNG (IHDR) and JPEG (the first frame header, SOF0-SOF15, found by a strict
marker walk), checks the declared size, and only then decodes. Written by hand: OpenCV and Pillow
expose a size only after (or while) decoding, and their sniffers accept far more formats.
"""

from __future__ import annotations

import struct

ACCEPTED = "JPEG (SOF0-SOF15: baseline, extended, progressive, lossless, arithmetic) and PNG"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}  # colour type -> bits
_PNG_MAX_DIM = 2**31 - 1
# every SOFn: 0xC0..0xCF without DHT (0xC4), JPG (0xC8) and DAC (0xCC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0..7: no length field
_KNOWN_SIGNATURES = (  # named in the refusal only
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"), (b"GIF8", "GIF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"v/1\x01", "OpenEXR"), (b"#?RADIANCE", "Radiance HDR"), (b"#?RGBE", "Radiance HDR"),
    (b"\x00\x00\x00\x1cftypavif", "AVIF"), (b"\x00\x00\x00\x20ftypavif", "AVIF"),
)


class HeaderError(ValueError):
    """The header is missing, malformed, or of a format that is not accepted."""


def declared_size(data: bytes) -> tuple[str, int, int]:
    """``(format, width, height)`` declared by a PNG or JPEG header; anything else -> :class:`HeaderError`."""
    if data.startswith(PNG_SIGNATURE):
        return ("png", *png_size(data))
    if data.startswith(b"\xff\xd8"):
        return ("jpeg", *jpeg_size(data))
    raise HeaderError(f"{_describe(data)} is not accepted; accepted: {ACCEPTED}, whose header sizes are checked "
                      "before decoding")


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk that must follow the PNG signature."""
    if len(data) < 33:
        raise HeaderError(f"PNG of {len(data)} bytes is too short for its IHDR chunk")
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        raise HeaderError(f"PNG does not start with a 13-byte IHDR chunk (got {kind!r}, length {length})")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if not (1 <= width <= _PNG_MAX_DIM and 1 <= height <= _PNG_MAX_DIM):
        raise HeaderError(f"PNG IHDR declares {width}x{height}; each side must be 1..{_PNG_MAX_DIM}")
    if depth not in _PNG_DEPTHS.get(colour, ()):
        raise HeaderError(f"PNG IHDR has an invalid colour type {colour} / bit depth {depth}")
    return width, height


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the first frame header, walking the markers from SOI as ITU-T T.81 B.1 defines them.

    Fill bytes (0xFF runs) before a marker are allowed; anything else between segments is refused (libjpeg
    would skip it and read whatever SOF follows). Refused too: a scan, EOI or second SOI before any SOF,
    truncated segments, a SOF whose length disagrees with its component count, and a height of 0 (size
    deferred to a DNL marker, i.e. not declared up front).
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise HeaderError("JPEG does not start with SOI (FF D8)")
    i = 2
    while True:
        if i >= n:
            raise HeaderError("JPEG ends before its frame header (SOF)")
        if data[i] != 0xFF:
            raise HeaderError(f"JPEG has junk byte 0x{data[i]:02X} at offset {i} where a marker must start")
        while i < n and data[i] == 0xFF:  # the marker's FF and any fill bytes
            i += 1
        if i >= n:
            raise HeaderError("JPEG ends inside fill bytes, before its frame header (SOF)")
        marker, at = data[i], i - 1
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0x00:
            raise HeaderError(f"JPEG has a stuffed FF 00 at offset {at} outside entropy-coded data")
        if marker in (0xD8, 0xD9, 0xDA):
            name = {0xD8: "a second SOI", 0xD9: "EOI", 0xDA: "a scan (SOS)"}[marker]
            raise HeaderError(f"JPEG has {name} at offset {at} before any frame header (SOF)")
        if i + 2 > n:
            raise HeaderError(f"JPEG segment FF {marker:02X} at offset {at} is truncated")
        length = data[i] << 8 | data[i + 1]
        if length < 2 or i + length > n:
            raise HeaderError(f"JPEG segment FF {marker:02X} at offset {at} has length {length}, "
                              f"{n - i} bytes remain")
        if marker in _JPEG_SOF:
            if length < 8:
                raise HeaderError(f"JPEG frame header FF {marker:02X} is {length} bytes long")
            height, width, components = struct.unpack(">HHB", data[i + 3 : i + 8])
            if components == 0 or length != 8 + 3 * components:
                raise HeaderError(f"JPEG frame header FF {marker:02X} has length {length} for {components} "
                                  "components")
            if width == 0 or height == 0:
                raise HeaderError(f"JPEG frame header declares {width}x{height} (a height of 0 defers it to "
                                  "a DNL marker); the size must be declared up front")
            return width, height
        i += length


def _describe(data: bytes) -> str:
    if not data:
        return "empty data"
    for signature, name in _KNOWN_SIGNATURES:
        if data.startswith(signature):
            return f"{name} data"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP data"
    if len(data) >= 2 and data[0:1] == b"P" and data[1:2] in b"1234567":
        return "PNM data"
    return f"data starting with {data[:8]!r} (neither PNG nor JPEG)"
