"""The image-decoding boundary: every decoder error is a bad image (skippable), 16-bit and palette
images keep their meaning. (The error messages themselves are rows of tests/test_bad_inputs.py.)"""
import numpy as np
import pytest
from PIL import Image

from trainers.data import DatasetWrapper, Datum
from trainers.data.image_io import BadImageError, read_image
from trainers.engine.config import get_cfg_default


def png_header(width, height):
    """A PNG that declares `width` x `height` pixels (and holds none): enough for PIL to judge its size."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _wrapper(items, skip):
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (8, 8)
    cfg.DATASET.SKIP_BAD_IMAGES = skip
    return DatasetWrapper(cfg, items)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    path = tmp_path / "depth16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")  # PIL opens it as a 16-bit image
    rgb = np.asarray(read_image(str(path)))
    assert rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255] and (rgb[..., 0] == rgb[..., 2]).all()


def test_32_bit_integer_images_are_read_as_16_bit_range(tmp_path):
    path = tmp_path / "int32.tiff"
    Image.fromarray(np.array([[-5, 32896, 70000]], dtype=np.int32), mode="I").save(path)
    assert np.asarray(read_image(str(path)))[0, :, 1].tolist() == [0, 128, 255]


def test_palette_images_take_their_palette_colours_with_or_without_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([200, 10, 20, 30, 40, 250] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "plain.png")
    image.save(tmp_path / "transparent.png", transparency=1)
    for name in ("plain.png", "transparent.png"):
        assert np.asarray(read_image(str(tmp_path / name)))[0].tolist() == [[200, 10, 20], [30, 40, 250]], name


def test_a_decompression_bomb_is_a_bad_image_and_is_skipped_on_request(tmp_path):
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "good.png")
    (tmp_path / "bomb.png").write_bytes(png_header(30000, 30000))
    with pytest.raises(BadImageError, match=r"bomb.png.*DecompressionBombError"):
        read_image(str(tmp_path / "bomb.png"))
    items = [Datum(str(tmp_path / "bomb.png"), 0, 0, "a"), Datum(str(tmp_path / "good.png"), 1, 0, "b")]
    with pytest.warns(UserWarning, match=r"Skipping unreadable image .*bomb.png"):
        item = _wrapper(items, skip=True)[0]
    assert item["impath"].endswith("good.png")
    with pytest.raises(BadImageError, match="SKIP_BAD_IMAGES"):
        _wrapper(items, skip=False)[0]


def test_any_decoder_error_is_a_bad_image(tmp_path, monkeypatch):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")

    def broken_decoder(self, *args, **kwargs):
        raise RuntimeError("codec crashed")
    monkeypatch.setattr(Image.Image, "convert", broken_decoder)
    with pytest.raises(BadImageError, match=r"a.png.*RuntimeError: codec crashed"):
        read_image(str(tmp_path / "a.png"))
