"""Opening a picture a person hands to Luna (a query, an image to refine): bounded and explained.

The file must be a regular file (a FIFO or a device would block or never end), no larger than the
ingest bound, and its pixel count is checked from the header before a pixel is decoded (the same
decompression-bomb bound as ingest). Every refusal names the file and the reason.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from luna_core.containers.probe import ProbeLimits
from luna_core.errors import LunaConfigError


class PictureError(LunaConfigError):
    """A picture given on the command line (or in a job's config, or a request) that Luna cannot
    use; `reason`: not_an_image, too_large (bytes or pixels over Luna's bounds) or unreadable."""

    def __init__(self, message: str, reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason


def read_picture(path: str | os.PathLike[str], limits: ProbeLimits = ProbeLimits()):
    """The decoded picture at `path` (a PIL image, fully loaded)."""

    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not hang; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise PictureError(f"cannot read image {path}: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise PictureError(f"image {path} is not a regular file (a folder, FIFO or device)")
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > limits.max_file_bytes:
            raise PictureError(
                f"image {path} is {info.st_size:,} bytes, over the {limits.max_file_bytes:,} "
                "byte bound",
                "too_large",
            )
        data = fh.read(limits.max_file_bytes + 1)
    return decode_picture(data, str(path), limits)


def decode_picture(data: bytes, name: str, limits: ProbeLimits = ProbeLimits()):
    """The decoded picture in `data` (a PIL image, fully loaded); `name` says which in errors."""

    if len(data) > limits.max_file_bytes:
        raise PictureError(
            f"image {name} is {len(data):,} bytes, over the {limits.max_file_bytes:,} byte bound",
            "too_large",
        )
    try:
        with warnings.catch_warnings():
            # Luna's own bound applies below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise PictureError(
                    f"image {name} is {width}x{height} = {width * height / 1e6:.0f} MP, over the "
                    f"{limits.max_pixels / 1e6:.0f} MP bound (decompression-bomb guard)",
                    "too_large",
                )
            image.load()
    # Pillow refuses past twice its own limit, before Luna can look
    except Image.DecompressionBombError:
        raise PictureError(
            f"image {name} declares more pixels than the {limits.max_pixels / 1e6:.0f} MP bound "
            "(decompression-bomb guard)",
            "too_large",
        ) from None
    except UnidentifiedImageError:
        raise PictureError(
            f"{name} is not an image Luna can decode (not PNG, JPEG, WebP or another format Pillow "
            "reads)",
            "not_an_image",
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise PictureError(f"{name} is not an image Luna can decode ({exc})") from None
    return image
