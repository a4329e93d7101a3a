"""The one way to open an image as RGB, used by training, the image scan, evaluation and predict.

Every PIL mode is converted deliberately (alpha composited on a background, 16-bit scaled, palette
transparency honoured); the EXIF orientation is applied; multi-frame files give their first frame;
files are recognised by content, never by extension. PIL's decompression-bomb guard stays on.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A path, raw bytes, a `datasets.Image(decode=False)` dict ({"bytes", "path"}) or an already open image.
ImageSource = str | os.PathLike | bytes | dict | Image.Image

BACKGROUND_RGB = (255, 255, 255)
EXIF_ORIENTATION_TAG = 0x0112
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_BIT_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class BadImageError(Exception):
    """An image that cannot be used: missing, empty, truncated, not an image, or too large."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def describe_source(source: ImageSource) -> str:
    """A short human-readable name for an image source (its path when there is one)."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, dict):
        return source.get("path") or "<image bytes>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<PIL image>"
    return "<image bytes>"


class ImageHeader(NamedTuple):
    """What the file says about itself, before any conversion."""

    format: str | None  # JPEG, PNG, ... (None for an image made in memory)
    mode: str  # the file's PIL mode: CMYK, P, I;16, ...
    orientation: int  # EXIF orientation (1: upright or none)


class DecodedImage:
    """An RGB image and where it came from: with JPEG draft decoding, `image` is smaller than the
    photo, and `extent` is the photo's full area in `image`'s pixel coordinates (fractional).
    `original_size` is the photo's (width, height) as displayed (after the EXIF orientation).

    Held as a PIL image, or as raw pixels (height x width x 3 uint8, e.g. a prepared copy): each form
    is made from the other only when asked for, so a tensor-only transform never builds a PIL image."""

    __slots__ = ("_image", "_pixels", "original_size", "extent", "header")

    def __init__(
        self,
        image: Image.Image | None,
        original_size: tuple[int, int] | None = None,
        extent: tuple[float, float] | None = None,
        pixels: np.ndarray | None = None,
        header: ImageHeader | None = None,
    ):
        """Without `original_size` / `extent`, the decode is the whole photo at full scale."""
        if image is None and pixels is None:
            raise ValueError("DecodedImage needs an image or its pixels")
        self._image, self._pixels, self.header = image, pixels, header
        self.original_size = original_size or self.size
        self.extent = extent or (float(self.original_size[0]), float(self.original_size[1]))

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            self._image = Image.fromarray(self._pixels, "RGB")
        return self._image

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            image = self._image  # RGB already when it comes from open_image: no copy needed
            self._pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        return self._pixels

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the decode."""
        if self._image is not None:
            return self._image.size
        return self._pixels.shape[1], self._pixels.shape[0]

    @property
    def scale(self) -> float:
        """Decoded pixels per original pixel (1 without draft decoding)."""
        return self.extent[0] / self.original_size[0]


def decode_image(
    source: ImageSource,
    draft_size: tuple[int, int] | None = None,
    *,
    exact_extent: bool = True,
    background: tuple[int, int, int] = BACKGROUND_RGB,
) -> DecodedImage:
    """Open `source` as a loaded RGB image, upright according to its EXIF orientation, with its header.

    `draft_size` (width, height) lets a JPEG decode at a reduced DCT scale (1/2 .. 1/8) that still
    covers it: much faster when the target is far smaller than the photo. The photo's original size is
    kept, so that sizes and crop boxes can be computed on the photo and mapped onto the smaller decode
    (the output geometry is unchanged). A rotation would move the draft's padded edge, so a rotated
    photo is decoded in full, unless `exact_extent=False` (callers that use the picture, not its
    geometry: checks, hashes, thumbnails, stored copies).

    Raises `BadImageError` (with the file and the reason) for anything that is not a usable image.
    """
    raw_rgb = _raw_ppm(source)
    if raw_rgb is not None:
        return DecodedImage(None, pixels=raw_rgb, header=ImageHeader("PPM", "RGB", 1))
    with image_errors(source):
        raw = _open(source)
        orientation = raw.getexif().get(EXIF_ORIENTATION_TAG, 1)
        header = ImageHeader(
            raw.format, raw.mode, orientation if isinstance(orientation, int) and orientation else 1
        )
        transposed = header.orientation in _TRANSPOSING_ORIENTATIONS
        upright_size = raw.size[::-1] if transposed else raw.size
        box = None
        # A caller's PIL image is decoded already (and drafting would shrink the caller's object).
        if (
            draft_size is not None
            and raw.format == "JPEG"
            and not isinstance(source, Image.Image)
            and (header.orientation == 1 or not exact_extent)
        ):
            drafted = raw.draft("RGB", draft_size)
            box = drafted[1] if drafted else None
        image = to_rgb(_apply_exif_orientation(raw, header.orientation), background)
    if box is None or image.size == upright_size:
        return DecodedImage(image, header=header)
    extent = (float(box[3]), float(box[2])) if transposed else (float(box[2]), float(box[3]))
    return DecodedImage(image, upright_size, extent, header=header)


def open_image(
    source: ImageSource,
    *,
    draft_size: tuple[int, int] | None = None,
    background: tuple[int, int, int] = BACKGROUND_RGB,
) -> Image.Image:
    """`decode_image`'s picture alone, for callers that only show or hash it (any JPEG, rotated or
    not, decodes at the draft scale that covers `draft_size`)."""
    return decode_image(source, draft_size, exact_extent=False, background=background).image


def _raw_ppm(source: ImageSource) -> np.ndarray | None:
    """Prepared copies are binary PPM (`P6 width height 255`, RGB bytes): their pixels, read without a
    parser or a copy. Anything else (or a PPM that does not fit this exact form) returns None."""
    if not isinstance(source, (bytes, bytearray)) or not source.startswith(b"P6\n"):
        return None
    try:
        size_end = source.index(b"\n", 3)
        width, height = (int(v) for v in source[3:size_end].split())
        start = source.index(b"\n", size_end + 1) + 1
        if source[size_end + 1 : start - 1] != b"255" or len(source) - start != width * height * 3:
            return None
        return np.frombuffer(source, dtype=np.uint8, count=width * height * 3, offset=start).reshape(
            height, width, 3
        )
    except ValueError:
        return None


@contextlib.contextmanager
def image_errors(source: ImageSource) -> Iterator[None]:
    """Inside the block, whatever Pillow raises on a bad file becomes a `BadImageError` that names
    `source` and the reason. Oversized images beyond PIL's hard limit still raise (and are reported);
    the warning below that limit is silenced."""
    name = describe_source(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except FileNotFoundError as error:
        raise BadImageError(name, "file not found") from error
    except IsADirectoryError as error:
        raise BadImageError(name, "is a directory, not an image file") from error
    except PermissionError as error:
        raise BadImageError(name, "permission denied (make it readable, e.g. chmod a+r)") from error
    except UnidentifiedImageError as error:
        raise BadImageError(name, _unidentified_reason(source)) from error
    except Image.DecompressionBombError as error:
        raise BadImageError(name, f"too large to decode safely ({error})") from error
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise BadImageError(name, f"cannot be decoded ({error})") from error
        raise BadImageError(name, "symbolic link loop (the link points back to itself)") from error
    except (SyntaxError, ValueError, EOFError, struct.error) as error:
        raise BadImageError(name, f"cannot be decoded ({error})") from error


def read_source_bytes(source: ImageSource) -> bytes:
    """The encoded bytes of a path, raw bytes or a `{"bytes", "path"}` record."""
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            return source["bytes"]
        if not source.get("path"):
            raise ValueError("image record has neither bytes nor path")
        source = source["path"]
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    return Path(source).read_bytes()


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            return Image.open(io.BytesIO(source["bytes"]))
        if source.get("path"):
            return Image.open(source["path"])
        raise ValueError("image record has neither bytes nor path")
    if isinstance(source, (bytes, bytearray)):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


def _apply_exif_orientation(image: Image.Image, orientation: int) -> Image.Image:
    # exif_transpose copies the pixels even when there is nothing to do: only call it when needed.
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    image.load()
    return image


def _unidentified_reason(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        try:
            if os.path.getsize(source) == 0:
                return "empty file (0 bytes)"
        except OSError:
            pass
    elif isinstance(source, (bytes, bytearray)) and len(source) == 0:
        return "empty file (0 bytes)"
    if is_heif(source):
        return (
            "HEIC/HEIF image, which Pillow reads only with the pillow-heif plugin: pip install pillow-heif "
            "(the hf-classifier[heif] extra), or convert it to JPEG"
        )
    return "not an image (content not recognised by Pillow)"


# ISO-BMFF brands of HEIC/HEIF stills and sequences (iPhone photos): bytes 8-12 after "ftyp".
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})


def is_heif(source: ImageSource) -> bool:
    """True for HEIC/HEIF content (by its file-type box, whatever the name says)."""
    try:
        if isinstance(source, dict):
            source = source.get("bytes") or source.get("path") or b""
        if isinstance(source, (bytes, bytearray)):
            head = bytes(source[:12])
        else:
            with open(source, "rb") as handle:
                head = handle.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def _register_heif_opener() -> None:
    """HEIC photos open like any other image when pillow-heif is installed (optional extra)."""
    with contextlib.suppress(ImportError):
        from pillow_heif import register_heif_opener

        register_heif_opener()


_register_heif_opener()


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND_RGB) -> Image.Image:
    """Convert any PIL mode to RGB without the usual traps (black cut-outs, white 16-bit images)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _ALPHA_MODES or "transparency" in image.info:
        # Palette/L/RGB images can carry a transparent colour (tRNS); composite like real alpha.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if mode in _HIGH_BIT_DEPTH_MODES:
        return Image.fromarray(_to_uint8(image), mode="L").convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV: Pillow's own conversions are right for these.
    return image.convert("RGB")


def _to_uint8(image: Image.Image) -> np.ndarray:
    """Scale a 16/32-bit integer or float image to 8 bits (a plain convert would clip to white)."""
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        return (array.astype(np.uint32) >> 8).astype(np.uint8)
    if image.mode == "I":
        # Mode I usually holds 16-bit data (e.g. some TIFFs); 8-bit data is left as it is.
        scaled = array >> 8 if array.max(initial=0) > 255 else array
        return np.clip(scaled, 0, 255).astype(np.uint8)
    finite = np.nan_to_num(array.astype(np.float64))
    low, high = float(finite.min(initial=0.0)), float(finite.max(initial=0.0))
    if high <= 1.0 and low >= 0.0:  # floats in [0, 1]
        return np.round(finite * 255.0).astype(np.uint8)
    span = high - low or 1.0
    return np.round((finite - low) / span * 255.0).astype(np.uint8)


def available_cpus() -> int:
    """CPUs this process may use (respects affinity masks and container limits where visible)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def is_image_file(path: str | os.PathLike) -> bool:
    """True when Pillow recognises the content of `path` (reads the header only)."""
    try:
        with Image.open(path) as image:
            return bool(image.format)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def image_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) that Pillow can open."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def relative_or_absolute(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """`path` relative to `root` when it lies below it, else the absolute path, always with '/'."""
    path = Path(path)
    if root is not None:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return path.as_posix()
