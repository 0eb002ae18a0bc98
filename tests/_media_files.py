"""Hostile media files, made on the spot: PNG byte flips, a PNG bomb, a raw MJPEG stream, 16-bit masks.

Shared by tests/test_media_decoding.py and the bad-input matrix.
"""

from __future__ import annotations

import functools
import struct
import zlib

import cv2
import numpy as np


def idat_positions(png: bytes) -> list[int]:
    """Offsets of every byte of every IDAT chunk's data."""
    positions, offset = [], 8
    while offset < len(png):
        (length,), kind = struct.unpack(">I", png[offset:offset + 4]), png[offset + 4:offset + 8]
        if kind == b"IDAT":
            positions.extend(range(offset + 8, offset + 8 + length))
        offset += 12 + length
    return positions


def flip_idat_bit(png: bytes, index: int, bit: int = 0x01) -> bytes:
    """``png`` with one bit flipped in the ``index``-th byte of its image data; the chunk's CRC is left as it was."""
    damaged = bytearray(png)
    damaged[idat_positions(png)[index]] ^= bit
    return bytes(damaged)


def gradient_png(size: int = 256) -> bytes:
    """A compressible grey ramp as PNG: zlib meets many flipped bits in it without an error."""
    ok, encoded = cv2.imencode(".png", np.tile(np.linspace(0, 255, size).astype(np.uint8)[None, :, None],
                                               (size, 1, 3)))
    assert ok
    return encoded.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=1)
def png_bomb(side: int = 20000) -> bytes:
    """A valid 1-bit black PNG of side x side pixels: about 50 kB on disk, 4.8 GB as an IMAGE."""
    packer, row = zlib.compressobj(9), b"\x00" * (1 + side // 8)
    idat = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def write_raw_mjpeg(path, frames: int = 12, height: int = 64, width: int = 80):
    """Concatenated JPEGs named ``.avi`` (frame k a flat grey of 20*k): FFmpeg opens it as MJPEG and
    reports a negative sentinel instead of a frame count."""
    with open(path, "wb") as out:
        for k in range(frames):
            ok, jpeg = cv2.imencode(".jpg", np.full((height, width, 3), 20 * k, np.uint8))
            out.write(jpeg.tobytes())
    return path


def feathered_disk(size: int = 64, radius: float = 16, feather: float = 16) -> np.ndarray:
    """A 16-bit mask: white inside ``radius``, ramping linearly to black over ``feather`` pixels."""
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(yy - size / 2, xx - size / 2)
    return np.round(np.clip((radius + feather - distance) / feather, 0, 1) * 65535).astype(np.uint16)
