"""Opening one image: every kind of bad input is refused by name or converted with a note."""

import pytest
from corpus import CORPUS
from helpers import image_bytes

from bmc.images import ImageError, open_image


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_every_bad_input_is_converted_with_a_note_or_refused_by_name(case):
    if case.converted:
        img = open_image(case.make(), name=case.name)
        assert img.mode == "RGB" and img.size == (64, 64)
        assert case.expect in img.info["bmc_converted"]
    else:
        with pytest.raises(ImageError, match=case.expect) as err:
            open_image(case.make(), name=case.name)
        assert str(err.value).startswith(case.name + ": ")


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "JPEG", "PNG"])
def test_plain_rgb_files_need_no_note(fmt):
    img = open_image(image_bytes(fmt), name="cell")
    assert img.mode == "RGB" and "bmc_converted" not in img.info


def test_decompression_bomb_is_refused_before_decoding():
    # A 20000×20000 PNG header (compresses to a few hundred kB of zeros) must be refused by size.
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    w = h = 20000
    raw = zlib.compress(b"\0" * (w + 1) * 64)  # only the first rows: decoding would fail anyway
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="too large"):
        open_image(png, name="bomb.png")
