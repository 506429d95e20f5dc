"""Read images as users have them into RGB uint8 arrays, and write RGB arrays to PNG or JPEG.

``load_image`` takes a path, a PIL image or a numpy array and returns a new (H, W, 3) uint8 RGB array.
Choices, the same for every source:

- Transparency (RGBA, LA, palette or colour-key transparency) is composited over white, as a document viewer
  shows it; the RGB hidden under fully transparent pixels is arbitrary and is never used.
- 16-bit data is scaled to 8 bit as ``round(v / 257)``, so 65535 -> 255 and 0 -> 0 (never clipped at 255).
  Pillow itself decodes 16-bit RGB(A) PNGs to their high byte (``v >> 8``, at most 1 below that rounding).
- Float data must lie in [0, 1] (it is scaled by 255); other ranges are refused rather than guessed.
- CMYK is converted by Pillow's naive formula (colour profiles are ignored).
- The EXIF orientation tag of phone photos is honoured (the array is upright as a viewer shows it).
- Multi-frame files (GIF, TIFF, APNG) give their first frame; HEIC / HEIF (phone photos) are read by the
  pillow-heif plugin when the ``heif`` extra is installed, else refused with that hint.
- Images under ``MIN_SIDE`` pixels on a side or over ``MAX_PIXELS`` pixels are refused; for files the size is
  read from the header, before any pixel is decoded.

Every failure raises ImageReadError naming the file (or array) and the reason.
"""

from __future__ import annotations

import functools
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cprfa.errors import ImageReadError, InvalidInputError

HEIF_SUFFIXES = (".heic", ".heif")
MIN_SIDE = 32
MAX_PIXELS = 100_000_000
_FLOAT_TOLERANCE = 0.01
# What Pillow raises on broken files besides OSError (its decoders are not consistent about it).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, struct.error, zlib.error)


def load_image(source: str | os.PathLike | Image.Image | np.ndarray, bgr: bool = False) -> np.ndarray:
    """Read an image into a new RGB uint8 array of shape (H, W, 3).

    Args:
        source: a file path (str or Path), a PIL image, or a numpy array of shape (H, W), (H, W, 1), (H, W, 3)
            or (H, W, 4) and dtype uint8, uint16 or float (in [0, 1]). Arrays are taken as RGB(A) unless
            ``bgr`` is set.
        bgr: the array is in OpenCV's BGR(A) channel order (as ``cv2.imread`` gives); only for numpy arrays.
    Raises:
        ImageReadError: the file is missing, a directory, not an image, truncated or corrupt; or the image is
            too small or too large; or the array has an unsupported shape, dtype or range.
        InvalidInputError: ``bgr`` was set for a path or PIL image.
    """
    if bgr and not isinstance(source, np.ndarray):
        raise InvalidInputError(f"bgr=True applies to numpy arrays only, not to {type(source).__name__}")
    if isinstance(source, (str, os.PathLike)):
        return _load_file(Path(source))
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "")
        name = f"PIL image {filename}" if filename else "PIL image"
        _check_size(name, *source.size)
        return _from_pil(name, source, owned=False)
    if isinstance(source, np.ndarray):
        return _from_array(source, bgr)
    raise ImageReadError(
        f"cannot read an image from a {type(source).__name__}: give a path, a PIL image or a numpy array"
    )


def save_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array of shape (H, W, 3), or a grey (H, W) one, to ``path``; return the path.

    The format follows the suffix: ``.png`` (zlib level 1, as OpenCV writes it: three times as fast as Pillow's
    default level 6 for files about a quarter larger), or ``.jpg`` / ``.jpeg`` (quality 95). Parent folders are
    created."""
    path = Path(path)
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
    image_format = formats.get(path.suffix.lower())
    if image_format is None:
        raise InvalidInputError(f"cannot save {path}: the suffix must be .png, .jpg or .jpeg")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)):
        raise InvalidInputError(
            f"cannot save {path}: the image must be uint8 of shape (H, W, 3) or (H, W), "
            f"got {rgb.dtype} of shape {rgb.shape}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if image_format == "JPEG" else {"compress_level": 1}
    Image.fromarray(np.ascontiguousarray(rgb)).save(path, format=image_format, **options)
    return path


def _load_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise ImageReadError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageReadError(f"{path} is a directory, not an image file")
    if path.suffix.lower() in HEIF_SUFFIXES:
        _register_heif()
    try:
        with warnings.catch_warnings():
            # Our own limit, checked below, replaces Pillow's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as error:
        raise ImageReadError(
            f"{path} is too large: Pillow refuses to open it ({error}); "
            f"images may have at most {MAX_PIXELS:,} pixels: downscale it first"
        ) from None
    except UnidentifiedImageError:
        hint = ""
        if path.suffix.lower() in HEIF_SUFFIXES:
            hint = " (HEIC/HEIF needs the pillow-heif plugin: pip install 'cprfa[heif]'; or convert it to JPEG)"
        raise ImageReadError(f"{path} is not an image file in a format Pillow can read{hint}") from None
    except _DECODE_ERRORS as error:
        raise ImageReadError(f"cannot read {path}: {error}") from None
    with image:
        _check_size(str(path), *image.size)
        return _from_pil(str(path), image, owned=True)


@functools.cache
def _register_heif() -> None:
    """Let Pillow open HEIC / HEIF files with pillow-heif (the heif extra), once, when the first one is read (not
    at import: it costs every start-up about 40 ms); without the extra such files are refused with a hint."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


def _check_size(name: str, width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE:
        raise ImageReadError(
            f"{name} is too small ({width} x {height} pixels); images need at least {MIN_SIDE} pixels a side"
        )
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"{name} is too large ({width} x {height} = {width * height:,} pixels); "
            f"images may have at most {MAX_PIXELS:,} pixels: downscale it first"
        )


def _from_pil(name: str, image: Image.Image, owned: bool) -> np.ndarray:
    """Decode a PIL image (size already checked) into RGB uint8 (H, W, 3); alters only an ``owned`` one."""
    try:
        image.load()
        if owned:
            ImageOps.exif_transpose(image, in_place=True)  # saves a copy of a possibly large image
        else:
            image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
            grey = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
            return _from_array(grey.astype(np.uint16), bgr=False, name=name)
        if image.mode == "F":
            return _from_array(np.asarray(image, dtype=np.float32), bgr=False, name=name)
        if image.has_transparency_data:
            return _over_white(np.asarray(image.convert("RGBA")))
        return np.array(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    except _DECODE_ERRORS as error:
        raise ImageReadError(f"cannot decode {name}: {error}") from None


def _from_array(array: np.ndarray, bgr: bool, name: str | None = None) -> np.ndarray:
    """Convert a (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 / uint16 / float array to RGB uint8."""
    name = name or f"numpy array of shape {array.shape} and dtype {array.dtype}"
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageReadError(f"{name}: the shape must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    _check_size(name, array.shape[1], array.shape[0])
    if array.dtype == np.uint8:
        array = array.copy()
    elif array.dtype == np.uint16:
        array = np.rint(array / 257.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageReadError(f"{name} contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -_FLOAT_TOLERANCE or high > 1 + _FLOAT_TOLERANCE:
            raise ImageReadError(
                f"{name}: float images must lie in [0, 1], got values in [{low:g}, {high:g}] "
                "(divide 0-255 data by 255, or pass it as uint8)"
            )
        array = np.rint(np.clip(array, 0, 1) * 255).astype(np.uint8)
    else:
        raise ImageReadError(f"{name}: the dtype must be uint8, uint16 or float, got {array.dtype}")
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    if bgr:
        array = array[:, :, [2, 1, 0, 3][: array.shape[2]]]
    if array.shape[2] == 4:
        return _over_white(array)
    return np.ascontiguousarray(array)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite RGBA uint8 (H, W, 4) over a white background -> RGB uint8 (H, W, 3)."""
    color = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:].astype(np.uint32)
    return ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
