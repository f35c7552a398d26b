"""CompressedImage decoding: only JPEG and PNG, and only after the size their header declares is checked.

The size bombs run in a fresh interpreter each, so the peak-RSS growth measured around the one call is
what that call cost (ru_maxrss never goes down, and nothing else runs in that process meanwhile).
"""

from __future__ import annotations

import array
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("sensor_msgs.msg")
from PIL import Image as PILImage  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from groma_ros.ros.image_codec import (  # noqa: E402
    ImageConversionError,
    compressed_imgmsg_to_cv2,
    compressed_to_rgb8,
)
from groma_ros.ros.image_headers import HeaderError, declared_size, jpeg_size  # noqa: E402
from tests.support import image_bombs  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(3)


def msg(data: bytes, fmt: str = "jpeg") -> CompressedImage:
    return CompressedImage(format=fmt, data=array.array("B", data))


def scene(h: int = 24, w: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 7 % 256, yy * 9 % 256, (xx + yy) * 3 % 256], axis=2).astype(np.uint8)


def pil_bytes(img: PILImage.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


# ------------------------------------------------------------------------------------ accepted, decoded

def _pil_jpegs() -> dict[str, bytes]:
    rgb = PILImage.fromarray(scene())
    exif = PILImage.Exif()
    exif[0x010F] = "groma test camera"  # Make: an APP1 segment before the frame header
    return {
        "pillow baseline": pil_bytes(rgb, "JPEG", quality=90),
        "pillow progressive": pil_bytes(rgb, "JPEG", quality=90, progressive=True),
        "pillow exif": pil_bytes(rgb, "JPEG", exif=exif.tobytes()),
        "pillow grey": pil_bytes(rgb.convert("L"), "JPEG"),
        "opencv restart markers": cv2.imencode(".jpg", scene()[..., ::-1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1]
        .tobytes(),
    }


@pytest.mark.parametrize("name", sorted(_pil_jpegs()))
def test_jpegs_from_other_encoders_decode(name):
    data = _pil_jpegs()[name]
    assert declared_size(data) == ("jpeg", 32, 24)
    out = compressed_imgmsg_to_cv2(msg(data), "rgb8")
    reference = np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB"))  # an independent decoder
    assert out.shape == (24, 32, 3)
    assert np.abs(out.astype(int) - reference).max() <= 3


def test_fill_bytes_before_a_marker_are_allowed():
    data = image_bombs.small_jpeg()
    at = data.index(b"\xff\xc0")
    padded = data[:at] + b"\xff\xff\xff" + data[at:]  # T.81 B.1.1.2: any marker may be preceded by fill bytes
    assert jpeg_size(padded) == (16, 16)
    np.testing.assert_array_equal(compressed_imgmsg_to_cv2(msg(padded)), compressed_imgmsg_to_cv2(msg(data)))


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA", "P", "LA"])
def test_pngs_from_pillow_decode(mode):
    base = scene()
    img = {"L": lambda: PILImage.fromarray(base[..., 0]),
           "I;16": lambda: PILImage.fromarray(base[..., 0].astype(np.uint16) * 257),
           "RGB": lambda: PILImage.fromarray(base),
           "RGBA": lambda: PILImage.fromarray(np.dstack([base, base[..., :1]])),
           "P": lambda: PILImage.fromarray(base).convert("P"),
           "LA": lambda: PILImage.fromarray(np.dstack([base[..., 0], base[..., 1]])),
           }[mode]()
    data = pil_bytes(img, "PNG")
    assert declared_size(data) == ("png", 32, 24)
    out = compressed_to_rgb8(msg(data, "png"))
    expect = np.asarray(img.convert("RGB"))
    if mode == "I;16":
        expect = np.repeat(base[..., :1], 3, axis=2)  # 257 * v scales back to v exactly
    np.testing.assert_array_equal(out, expect)


# ----------------------------------------------------------------------------------------- refused


def _other_formats() -> dict[str, bytes]:
    bgr = scene()[..., ::-1].copy()
    out = {name: cv2.imencode(ext, bgr)[1].tobytes() for name, ext in
           (("TIFF", ".tiff"), ("WebP", ".webp"), ("BMP", ".bmp"), ("PNM", ".ppm"))}
    out["GIF"] = pil_bytes(PILImage.fromarray(scene()), "GIF")
    out["TIFF (Pillow, uncompressed)"] = pil_bytes(PILImage.fromarray(scene()), "TIFF", compression="raw")
    out["JPEG 2000"] = pil_bytes(PILImage.fromarray(scene()), "JPEG2000")
    return out


@pytest.mark.parametrize("name", sorted(_other_formats()))
def test_other_formats_are_refused_before_decoding(name):
    data = _other_formats()[name]
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None  # OpenCV would decode it
    with pytest.raises(ImageConversionError) as err:
        compressed_to_rgb8(msg(data, name.lower()))
    text = str(err.value)
    assert f"{name.split(' (')[0]} data is not accepted" in text
    assert "accepted: JPEG (SOF0-SOF15" in text and "and PNG, whose header sizes are checked" in text


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


SOF = _segment(0xC0, struct.pack(">BHHB", 8, 16, 16, 1) + b"\x01\x11\x00")
APP0 = _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
SOS = _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")


@pytest.mark.parametrize("data,pattern", [
    (b"\xff\xd8" + APP0 + b"\x00" + SOF, r"junk byte 0x00 at offset 20 where a marker must start"),
    (b"\xff\xd8" + APP0 + SOS + SOF, r"a scan \(SOS\) at offset 20 before any frame header"),
    (b"\xff\xd8" + APP0 + b"\xff\xd9", "EOI at offset 20 before any frame header"),
    (b"\xff\xd8\xff\xd8" + SOF, "a second SOI at offset 2"),
    (b"\xff\xd8\xff\x00" + SOF, "stuffed FF 00 at offset 2 outside entropy-coded data"),
    (b"\xff\xd8" + APP0[:10], r"segment FF E0 at offset 2 has length 16, 8 bytes remain"),
    (b"\xff\xd8" + APP0, r"ends before its frame header \(SOF\)"),
    (b"\xff\xd8\xff\xff\xff", "ends inside fill bytes"),
    (b"\xff\xd8" + _segment(0xC2, struct.pack(">BHHB", 8, 0, 16, 1) + b"\x01\x11\x00"), "DNL marker"),
    (b"\xff\xd8" + _segment(0xC0, struct.pack(">BHHB", 8, 16, 16, 3) + b"\x01\x11\x00"),
     "has length 11 for 3 components"),
])
def test_malformed_jpeg_headers_are_refused(data, pattern):
    with pytest.raises(HeaderError, match=pattern):
        jpeg_size(data)
    with pytest.raises(ImageConversionError, match=pattern):
        compressed_to_rgb8(msg(data))


@pytest.mark.parametrize("marker", [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
def test_every_frame_header_kind_declares_its_size(marker):
    data = (b"\xff\xd8" + APP0 + _segment(0xC4, b"\x00" * 17) + b"\xff\x01\xff\xd3"  # DHT, TEM, RST3
            + _segment(marker, struct.pack(">BHHB", 8, 480, 640, 1) + b"\x01\x11\x00") + SOS)
    assert jpeg_size(data) == (640, 480)


@pytest.mark.parametrize("data,pattern", [
    (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 0) + b"IEND" + b"\0" * 30, "does not start with a 13-byte IHDR"),
    (image_bombs.png_bomb(0, 5), r"declares 0x5; each side must be 1\.\.2147483647"),
    (image_bombs.png_bomb(8, 8, bit_depth=16, colour=3), "invalid colour type 3 / bit depth 16"),
    (image_bombs.png_bomb(8, 8)[:30], "too short for its IHDR"),
    (image_bombs.png_bomb(100_000, 100_000), r"too large: height\*width = 100000\*100000"),
])
def test_malformed_and_oversized_pngs_are_refused(data, pattern):
    with pytest.raises(ImageConversionError, match=pattern):
        compressed_to_rgb8(msg(data, "png"))


def test_compressed_depth_checks_its_png_header():
    bomb = image_bombs.png_bomb(100_000, 100_000, bit_depth=16, colour=0)
    header = struct.pack("<iff", 0, 0.0, 0.0)
    for data in (bomb, header + bomb):
        with pytest.raises(ImageConversionError, match=r"png header, format '16UC1; compressedDepth'.*too large"):
            compressed_imgmsg_to_cv2(msg(data, "16UC1; compressedDepth"))
    jpeg = image_bombs.small_jpeg()
    with pytest.raises(ImageConversionError, match="not PNG"):
        compressed_imgmsg_to_cv2(msg(jpeg, "16UC1; compressedDepth"))


# ------------------------------------------------------------------------- size bombs: measured memory

BOMBS = {  # name -> (format, expression building the bytes in the child, expected refusal)
    "tiff 30000x30000": ("tiff", "b.tiff_bomb(30000, 30000)", "TIFF data is not accepted"),
    "jpeg 20000x20000, SOF behind a junk byte": (
        "jpeg", "b.jpeg_with_size(b.small_jpeg(), 20000, 20000, b'\\x00')", "junk byte 0x00 at offset"),
    "jpeg 60000x60000": ("jpeg", "b.jpeg_with_size(b.small_jpeg(), 60000, 60000)", "too large"),
    "png 100000x100000": ("png", "b.png_bomb(100_000, 100_000)", "too large"),
    "compressedDepth png 60000x60000": (
        "16UC1; compressedDepth", "b.png_bomb(60_000, 60_000, bit_depth=16, colour=0)", "too large"),
}
_CHILD = textwrap.dedent("""
    import array, json, resource, sys
    import psutil
    from sensor_msgs.msg import CompressedImage
    from groma_ros.ros.image_codec import ImageConversionError, compressed_imgmsg_to_cv2
    from tests.support import image_bombs as b
    fmt, expr = sys.argv[1], sys.argv[2]
    compressed_imgmsg_to_cv2(CompressedImage(format="jpeg", data=array.array("B", b.small_jpeg())))  # warm up
    png = b.cv2.imencode(".png", b.np.zeros((8, 8), b.np.uint8))[1].tobytes()
    compressed_imgmsg_to_cv2(CompressedImage(format="png", data=array.array("B", png)))
    data = eval(expr)
    message = CompressedImage(format=fmt, data=array.array("B", data))
    proc = psutil.Process()
    rss0, peak0 = proc.memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        compressed_imgmsg_to_cv2(message)
        outcome = "decoded"
    except ImageConversionError as exc:
        outcome = "refused: " + str(exc)
    peak1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(outcome=outcome, bytes=len(data), peak_growth=peak1 - peak0,
                          rss_growth=proc.memory_info().rss - rss0)))
""")


@pytest.mark.parametrize("name", list(BOMBS))
def test_size_bombs_are_refused_before_any_allocation(name):
    fmt, expr, refusal = BOMBS[name]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", _CHILD, fmt, expr], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["outcome"].startswith("refused: ") and refusal in result["outcome"], result
    assert result["peak_growth"] < 50 * 2**20, result  # a decode would have cost 400 MB .. 27 GB
    assert result["rss_growth"] < 50 * 2**20, result


# ------------------------------------------------------------------------------------------------ fuzz

_SEGMENTS = st.sampled_from([APP0, SOF, SOS, b"\xff\xd9", b"\xff\x01", b"\xff\xd0", b"\xff\xff", b"\x00",
                             _segment(0xC4, b"\x00" * 17), _segment(0xFE, b"comment"), b"\xff\xc0\x00"])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(_SEGMENTS, max_size=8), tail=st.binary(max_size=16))
def test_fuzz_jpeg_marker_walk_returns_a_size_or_refuses(parts, tail):
    data = b"\xff\xd8" + b"".join(parts) + tail
    try:
        width, height = jpeg_size(data)
    except HeaderError:
        return
    assert (width, height) == (16, 16)  # the only frame header in the alphabet
    assert SOF in data
