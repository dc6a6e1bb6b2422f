"""Reading an image file: the one place where image decoders run.

Every image a dataset item names is decoded by `read_image`, and every error a decoder can raise
(a truncated file, a header PIL cannot parse, a decompression bomb past
`PIL.Image.MAX_IMAGE_PIXELS`, a codec bug) becomes a `BadImageError` naming the file. The data
loader then stops with that error, or skips the file with DATASET.SKIP_BAD_IMAGES True.

Conversion to RGB keeps the image's meaning: a 16-bit image is scaled from [0, 65535] to
[0, 255] (PIL's `convert("RGB")` clips it, so that everything above 255 turns white), and a
palette image is looked up in its palette, through RGBA when it has a transparent colour.
"""
import numpy as np
from PIL import Image

__all__ = ["BadImageError", "read_image", "to_rgb", "SIXTEEN_BIT_MODES"]

# PIL modes holding one 16-bit (or wider integer) channel. "I" is how PIL opened 16-bit
# greyscale PNGs before version 10.2 (and TIFFs still): it is read as 16-bit too.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BadImageError(OSError):
    """An image file that is missing, truncated, too large or not an image; `path` names it."""

    def __init__(self, path, reason):
        self.path = path
        super().__init__(f'cannot read image "{path}": {reason}')


def to_rgb(img):
    """`img` as an 8-bit RGB PIL image, scaling 16-bit values and resolving palettes.

    16-bit modes: v8 = round(v16 * 255 / 65535), values outside [0, 65535] clipped first.
    Palette ("P"): the palette's colours (through RGBA when a colour is marked transparent, as
    PIL recommends). Every other mode: PIL's own conversion (alpha dropped, as in Dassl).
    """
    if img.mode in SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        scaled = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if img.mode in ("P", "PA"):
        with_alpha = img.mode == "PA" or "transparency" in img.info
        return img.convert("RGBA" if with_alpha else "RGB").convert("RGB")
    return img.convert("RGB")


def read_image(path):
    """The image at `path` as an RGB PIL image (see `to_rgb`).

    Raises BadImageError (an OSError) naming the file for any failure to open or decode it,
    PIL's DecompressionBombError included. The whole image is decoded here, so a truncated file
    fails now and not inside a transform.
    """
    try:
        with Image.open(path) as img:
            return to_rgb(img)
    except Exception as e:  # noqa: BLE001 - the decoding boundary: every decoder error is a bad image
        raise BadImageError(path, f"{type(e).__name__}: {e}") from e
