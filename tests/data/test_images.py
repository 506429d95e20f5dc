"""load_image / save_image on every kind of image file users have, and on every kind of bad input."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from cprfa.data.images import MAX_PIXELS, load_image, save_image
from cprfa.errors import ImageReadError, InvalidInputError


def _rgb_pattern(height=48, width=64):
    """A uint8 (H, W, 3) image with distinct values everywhere."""
    v, u = np.mgrid[:height, :width]
    return np.stack([u * 3, v * 5, (u + v) % 256], axis=-1).astype(np.uint8)


def _over_white(color, alpha):
    return np.rint(np.asarray(color) * alpha / 255 + 255 * (1 - alpha / 255))


# --- file kinds ---------------------------------------------------------------------------------------------


def test_rgb_png_loads_exactly(tmp_path):
    pattern = _rgb_pattern()
    Image.fromarray(pattern).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
    np.testing.assert_array_equal(image, pattern)
    assert np.array_equal(load_image(str(tmp_path / "a.png")), pattern)  # str paths too


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.new("L", (40, 36), 77).save(tmp_path / "grey.png")
    image = load_image(tmp_path / "grey.png")
    assert image.shape == (36, 40, 3)
    assert (image == 77).all()


def test_palette_image_uses_its_palette(tmp_path):
    indices = np.zeros((40, 40), np.uint8)
    indices[:, 20:] = 1
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    image = load_image(tmp_path / "palette.png")
    assert tuple(image[5, 5]) == (255, 0, 0)
    assert tuple(image[5, 30]) == (0, 0, 255)


def test_palette_transparency_is_white(tmp_path):
    indices = np.zeros((40, 40), np.uint8)
    indices[:, 20:] = 1
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "palette.png", transparency=1)
    image = load_image(tmp_path / "palette.png")
    assert tuple(image[5, 5]) == (255, 0, 0)
    assert tuple(image[5, 30]) == (255, 255, 255)


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :, :3] = (200, 10, 60)
    rgba[:, :10, 3] = 255  # opaque
    rgba[:, 10:20, 3] = 128  # half transparent
    rgba[:, 20:, 3] = 0  # transparent: the hidden colour must not show
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    image = load_image(tmp_path / "rgba.png").astype(int)
    assert tuple(image[0, 0]) == (200, 10, 60)
    assert np.abs(image[0, 15] - _over_white((200, 10, 60), 128)).max() <= 1
    assert tuple(image[0, 30]) == (255, 255, 255)


def test_grey_alpha_is_composited_over_white(tmp_path):
    Image.new("LA", (40, 40), (0, 0)).save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png") == 255).all()


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.array([0, 1000, 32896, 65535], np.uint16)  # -> 0, 4, 128, 255
    grey = np.repeat(np.repeat(values, 10)[None, :], 36, axis=0)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    image = load_image(tmp_path / "grey16.png")
    np.testing.assert_array_equal(image[0, ::10, 0], [0, 4, 128, 255])
    assert (image[..., 0] == image[..., 2]).all()


def test_16_bit_rgb_png_is_scaled(tmp_path):
    rgb16 = np.zeros((36, 40, 3), np.uint16)
    rgb16[:] = (65535, 32896, 1000)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[:, :, ::-1])  # OpenCV writes BGR
    image = load_image(tmp_path / "rgb16.png").astype(int)
    assert np.abs(image[0, 0] - [255, 128, 4]).max() <= 1


def test_cmyk_jpeg_gives_plausible_rgb(tmp_path):
    cmyk = Image.new("CMYK", (40, 40), (0, 0, 0, 0))  # white
    cmyk.paste((0, 255, 255, 0), (0, 0, 20, 40))  # magenta + yellow = red
    cmyk.save(tmp_path / "cmyk.jpg")
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    image = load_image(tmp_path / "cmyk.jpg").astype(int)
    assert image.shape == (40, 40, 3)
    red, white = image[20, 5], image[20, 35]
    assert red[0] > 220 and red[1] < 40 and red[2] < 40
    assert (white > 230).all()


@pytest.mark.parametrize("orientation, red_at, not_red_at", [(6, (8, 40), (8, 8)), (8, (56, 8), (8, 8)),
                                                              (3, (40, 56), (8, 8))])
def test_exif_orientation_is_honoured(tmp_path, orientation, red_at, not_red_at):
    # Stored 64 wide x 48 high, red 16 x 16 block at the stored top-left corner, blue elsewhere.
    stored = np.zeros((48, 64, 3), np.uint8)
    stored[:] = (0, 0, 255)
    stored[:16, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "phone.jpg")
    # 6: shown turned 90° clockwise (top-left -> top-right); 8: counter-clockwise (-> bottom-left); 3: 180°.
    assert image.shape == ((64, 48, 3) if orientation in (6, 8) else (48, 64, 3))
    assert image[red_at][0] > 200 and image[red_at][2] < 50
    assert image[not_red_at][0] < 50 and image[not_red_at][2] > 200
    with Image.open(tmp_path / "phone.jpg") as pil:  # a PIL image straight from Image.open: the same
        np.testing.assert_array_equal(load_image(pil), image)
        assert pil.size == (64, 48) and pil.getexif()[0x0112] == orientation  # the caller's image: unchanged


def test_heic_phone_photos_are_read(tmp_path):
    pytest.importorskip("pillow_heif").register_heif_opener()  # the heif extra (and the test extra) writes it
    stored = np.zeros((48, 64, 3), np.uint8)
    stored[:] = (0, 0, 255)
    stored[:16, :16] = (255, 0, 0)
    Image.fromarray(stored).save(tmp_path / "phone.heic", quality=95)
    image = load_image(tmp_path / "phone.heic").astype(int)
    assert image.shape == (48, 64, 3)
    assert np.abs(image[8, 8] - [255, 0, 0]).max() < 30 and np.abs(image[40, 56] - [0, 0, 255]).max() < 30


def test_multi_frame_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 40), color) for color in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert tuple(load_image(tmp_path / "anim.gif")[10, 10]) == (255, 0, 0)


# --- bad files ----------------------------------------------------------------------------------------------


def _read_error(source) -> str:
    with pytest.raises(ImageReadError) as info:
        load_image(source)
    return str(info.value)


def test_missing_file(tmp_path):
    message = _read_error(tmp_path / "nowhere.jpg")
    assert "nowhere.jpg" in message and "not found" in message


def test_directory(tmp_path):
    (tmp_path / "photos.jpg").mkdir()
    message = _read_error(tmp_path / "photos.jpg")
    assert "photos.jpg" in message and "directory" in message


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    message = _read_error(tmp_path / "notes.jpg")
    assert "notes.jpg" in message and "not an image" in message


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty.png" in _read_error(tmp_path / "empty.png")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file(tmp_path, suffix):
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    message = _read_error(tmp_path / f"cut{suffix}")
    assert f"cut{suffix}" in message and "truncated" in message


def test_tiny_image(tmp_path):
    Image.new("RGB", (31, 200)).save(tmp_path / "tiny.png")
    message = _read_error(tmp_path / "tiny.png")
    assert "tiny.png" in message and "too small" in message and "31 x 200" in message


def _png_1bit(width: int, height: int, pixel_data: bool) -> bytes:
    """An all-black 1-bit greyscale PNG; without pixel_data its IDAT is cut short (header only is valid)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    if pixel_data:
        compressor = zlib.compressobj(9)
        row = 1 + (width + 7) // 8  # filter byte + packed bits, all zero
        body = b"".join(compressor.compress(bytes(row * 1000)) for _ in range(height // 1000))
        idat = body + compressor.compress(bytes(row * (height % 1000))) + compressor.flush()
    else:
        idat = zlib.compress(bytes(100))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_huge_image_is_refused_from_its_header(tmp_path):
    width, height = 10_001, 10_000  # just over 100 megapixels; a valid file of about 100 kB
    assert width * height > MAX_PIXELS
    (tmp_path / "huge.png").write_bytes(_png_1bit(width, height, pixel_data=True))
    assert (tmp_path / "huge.png").stat().st_size < 1_000_000
    message = _read_error(tmp_path / "huge.png")
    assert "huge.png" in message and "too large" in message and "10001 x 10000" in message


def test_decompression_bomb_gets_our_message(tmp_path):
    # 900 megapixels: past Pillow's own limit, which raises while opening. The pixel data is cut short, so a
    # "too large" message (not "truncated") also shows that nothing was decoded.
    (tmp_path / "bomb.png").write_bytes(_png_1bit(30_000, 30_000, pixel_data=False))
    message = _read_error(tmp_path / "bomb.png")
    assert "bomb.png" in message and "too large" in message


# --- arrays and PIL images ----------------------------------------------------------------------------------


def test_uint8_rgb_array_is_copied():
    pattern = _rgb_pattern()
    image = load_image(pattern)
    np.testing.assert_array_equal(image, pattern)
    assert not np.shares_memory(image, pattern)


def test_bgr_flag_swaps_channels():
    pattern = _rgb_pattern()
    np.testing.assert_array_equal(load_image(pattern[:, :, ::-1], bgr=True), pattern)
    bgra = np.dstack([pattern[:, :, ::-1], np.full(pattern.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(load_image(bgra, bgr=True), pattern)


def test_grey_arrays():
    grey = np.full((40, 50), 9, np.uint8)
    assert load_image(grey).shape == (40, 50, 3)
    assert (load_image(grey[:, :, None]) == 9).all()


def test_uint16_and_float_arrays_are_scaled():
    assert (load_image(np.full((40, 40, 3), 65535, np.uint16)) == 255).all()
    assert (load_image(np.full((40, 40), 1000, np.uint16)) == 4).all()
    assert (load_image(np.full((40, 40, 3), 0.5, np.float32)) == 128).all()
    assert (load_image(np.full((40, 40, 3), 1.0, np.float64)) == 255).all()


def test_rgba_array_is_composited_over_white():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 255
    assert (load_image(rgba) == 255).all()  # fully transparent red: white
    rgba[..., 3] = 255
    assert tuple(load_image(rgba)[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("array, reason", [
    (np.zeros((40, 40, 2), np.uint8), "shape"),
    (np.zeros((40, 40, 3), np.int64), "dtype"),
    (np.full((40, 40, 3), 255.0), "[0, 1]"),
    (np.full((40, 40, 3), np.nan, np.float32), "NaN"),
    (np.zeros((10, 40, 3), np.uint8), "too small"),
])
def test_bad_arrays(array, reason):
    message = _read_error(array)
    assert reason in message and "numpy array" in message


def test_pil_image_input():
    pattern = _rgb_pattern()
    np.testing.assert_array_equal(load_image(Image.fromarray(pattern)), pattern)
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert (load_image(rgba) == 255).all()


def test_bad_source_types():
    assert "list" in _read_error([[1, 2, 3]])
    with pytest.raises(InvalidInputError, match="bgr"):
        load_image("photo.jpg", bgr=True)


# --- save_image ---------------------------------------------------------------------------------------------


def test_save_png_round_trip_creates_folders(tmp_path):
    pattern = _rgb_pattern()
    path = save_image(tmp_path / "out" / "deeper" / "a.png", pattern)
    assert path.is_file()
    np.testing.assert_array_equal(load_image(path), pattern)


def test_save_jpeg(tmp_path):
    flat = np.full((40, 40, 3), (10, 200, 30), np.uint8)
    path = save_image(tmp_path / "a.JPEG", flat)
    assert Image.open(path).format == "JPEG"
    assert np.abs(load_image(path).astype(int) - flat).max() <= 3


def test_save_refuses_bad_input(tmp_path):
    with pytest.raises(InvalidInputError, match="suffix"):
        save_image(tmp_path / "a.bmp", _rgb_pattern())
    with pytest.raises(InvalidInputError, match="uint8"):
        save_image(tmp_path / "a.png", np.zeros((40, 40, 3), np.float32))
