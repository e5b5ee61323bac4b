"""Image and mask decoding: formats, modes, orientation, guards, fit policies."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from i2score.data.images import (
    DEFAULT_MAX_PIXELS,
    FIT_POLICIES,
    ImageError,
    decode_image,
    decode_mask,
    fit_mask,
    fit_to_resolution,
    tensor_to_png_bytes,
    to_tensor,
)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise_rgb(w: int = 48, h: int = 32, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG declaring ``width x height`` with almost no data: what a
    decompression bomb looks like from its header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def reason_of(fn, *args, **kw) -> str:
    with pytest.raises(ImageError) as info:
        fn(*args, **kw)
    return info.value.reason


# -- formats and modes ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP", "PPM"])
def test_lossless_formats_decode_exactly(fmt):
    a = noise_rgb()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    im = decode_image(encode(Image.fromarray(a), fmt, **kw))
    assert im.mode == "RGB" and im.size == (48, 32)
    np.testing.assert_array_equal(np.asarray(im), a)


@pytest.mark.parametrize("fmt", ["JPEG", "GIF"])
def test_lossy_formats_decode_to_rgb(fmt):
    a = np.zeros((32, 48, 3), np.uint8)
    a[:, :24] = (200, 30, 40)
    im = decode_image(encode(Image.fromarray(a), fmt))
    assert im.mode == "RGB" and im.size == (48, 32)
    assert np.abs(np.asarray(im, dtype=int)[16, 5] - (200, 30, 40)).max() < 12


def test_exif_orientation_is_applied():
    # Stored landscape: left half red, right half blue. Orientation 6 = "rotate 90 degrees
    # clockwise to display", so the displayed portrait has red on top, blue at the bottom.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(a), "JPEG", quality=95, exif=exif)
    im = decode_image(data)
    assert im.size == (20, 40)
    px = np.asarray(im, dtype=int)
    assert px[5, 10, 0] > 200 and px[5, 10, 2] < 50  # top: red
    assert px[35, 10, 2] > 200 and px[35, 10, 0] < 50  # bottom: blue


def test_no_exif_keeps_orientation():
    im = decode_image(encode(Image.fromarray(noise_rgb(40, 20))))
    assert im.size == (40, 20)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_scaled_not_clipped(fmt):
    a = np.array([[0, 65535, 128 * 257, 1000]], dtype=np.uint16).repeat(4, axis=0)
    src = Image.fromarray(a)
    assert src.mode.startswith("I;16")
    im = decode_image(encode(src, fmt))
    got = np.asarray(im)[0, :, 0]
    np.testing.assert_array_equal(got, [0, 255, 128, 4])  # 1000 * 255 / 65535 = 3.9
    assert (np.asarray(im)[..., 0] == np.asarray(im)[..., 2]).all()


def test_32bit_int_taken_as_16bit():
    a = np.array([[0, 65535, 32896]], dtype=np.int32)
    im = decode_image(encode(Image.fromarray(a, "I"), "TIFF"))
    np.testing.assert_array_equal(np.asarray(im)[0, :, 0], [0, 255, 128])


def test_float_image():
    a = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    im = decode_image(encode(Image.fromarray(a, "F"), "TIFF"))
    np.testing.assert_array_equal(np.asarray(im)[0, :, 1], [0, 128, 255])


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_to_rgb(fmt):
    cmyk = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # pure cyan
    im = decode_image(encode(cmyk, fmt))
    assert im.mode == "RGB"
    r, g, b = np.asarray(im, dtype=int)[8, 8]
    assert r < 20 and g > 235 and b > 235


def test_grayscale_and_bilevel():
    g = Image.fromarray(np.full((8, 8), 77, np.uint8), "L")
    np.testing.assert_array_equal(np.asarray(decode_image(encode(g)))[0, 0], [77, 77, 77])
    one = Image.new("1", (8, 8), 1)
    np.testing.assert_array_equal(np.asarray(decode_image(encode(one)))[0, 0], [255, 255, 255])


def test_palette_with_and_without_transparency():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((1, 1), 1)
    im = decode_image(encode(p))
    assert np.asarray(im)[0, 0].tolist() == [255, 0, 0] and np.asarray(im)[1, 1].tolist() == [0, 255, 0]
    p.info["transparency"] = 0  # index 0 (red) transparent -> background shows
    im = decode_image(encode(p, transparency=0), background=(0, 0, 255))
    assert np.asarray(im)[0, 0].tolist() == [0, 0, 255]
    assert np.asarray(im)[1, 1].tolist() == [0, 255, 0]


def test_rgba_and_la_composited_on_background():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    white = np.asarray(decode_image(encode(rgba)), dtype=int)[0, 0]
    assert abs(white[0] - 255) <= 1 and abs(white[1] - 127) <= 1 and abs(white[2] - 127) <= 1
    black = np.asarray(decode_image(encode(rgba), background=(0, 0, 0)), dtype=int)[0, 0]
    assert abs(black[0] - 128) <= 1 and black[1] == 0
    la = Image.new("LA", (4, 4), (0, 0))  # fully transparent black
    assert np.asarray(decode_image(encode(la)))[0, 0].tolist() == [255, 255, 255]


# -- errors --------------------------------------------------------------------------------------


def test_error_codes():
    data = encode(Image.fromarray(noise_rgb()))
    jpeg = encode(Image.fromarray(noise_rgb()), "JPEG")
    assert reason_of(decode_image, b"") == "empty_file"
    assert reason_of(decode_image, b"this is not an image at all") == "undecodable_image"
    assert reason_of(decode_image, data[: len(data) // 2]) == "truncated_image"
    assert reason_of(decode_image, jpeg[: len(jpeg) // 2]) == "truncated_image"
    assert reason_of(decode_image, b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n") == "undecodable_image"


def test_decompression_bomb_rejected_from_header(recwarn):
    # 100000 x 100000: beyond Pillow's own hard limit; 9000 x 9000: beyond ours (64 Mpx) only.
    assert reason_of(decode_image, png_header_only(100_000, 100_000)) == "decompression_bomb"
    assert reason_of(decode_image, png_header_only(9000, 9000)) == "decompression_bomb"
    assert DEFAULT_MAX_PIXELS < 9000 * 9000
    assert reason_of(decode_image, encode(Image.fromarray(noise_rgb())), max_pixels=100) == "decompression_bomb"
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


# -- fit policies --------------------------------------------------------------------------------


def three_bands(w: int = 60, h: int = 40) -> Image.Image:
    """Red | green | blue vertical bands, each a third of the width."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 3] = (255, 0, 0)
    a[:, w // 3 : 2 * w // 3] = (0, 255, 0)
    a[:, 2 * w // 3 :] = (0, 0, 255)
    return Image.fromarray(a)


def test_center_crop_keeps_the_middle():
    out = np.asarray(fit_to_resolution(three_bands(), 16, "center-crop"), dtype=int)
    assert out.shape == (16, 16, 3)
    # crop is columns 10..50 of 60: the left/right columns are still red/blue, the middle green
    assert out[8, 0, 0] > 200 and out[8, 8, 1] > 200 and out[8, 15, 2] > 200


def test_pad_keeps_everything_with_bars():
    out = np.asarray(fit_to_resolution(three_bands(), 30, "pad"), dtype=int)
    assert out.shape == (30, 30, 3)
    assert out[0].max() == 0 and out[-1].max() == 0  # 60x40 -> 30x20, 5-pixel bars top and bottom
    assert out[15, 2, 0] > 200 and out[15, 27, 2] > 200


def test_stretch_and_bad_policy():
    out = fit_to_resolution(three_bands(), 24, "stretch")
    assert out.size == (24, 24)
    assert np.asarray(out, dtype=int)[12, 12, 1] > 200
    with pytest.raises(ValueError):
        fit_to_resolution(three_bands(), 24, "zoom")  # type: ignore[arg-type]
    assert fit_to_resolution(three_bands(32, 32), 32).size == (32, 32)


@pytest.mark.parametrize("policy", FIT_POLICIES)
def test_mask_follows_image_geometry(policy):
    # A white square on black, given both as image and as mask: after fitting, the mask's ones
    # are exactly where the image is bright.
    a = np.zeros((40, 60), np.uint8)
    a[8:24, 30:50] = 255
    img = fit_to_resolution(Image.fromarray(a).convert("RGB"), 32, policy)
    mask = fit_mask(decode_mask(encode(Image.fromarray(a)), (60, 40)), 32, policy)
    assert mask.shape == (1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
    bright = torch.from_numpy(np.asarray(img)[..., 0] > 127).float()
    assert (mask[0] != bright).float().mean() < 0.03
    assert mask.sum() > 0


# -- masks ---------------------------------------------------------------------------------------


def square_mask(w: int = 60, h: int = 40) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : h // 2, w // 4 : w // 2] = 255
    return m


def test_binary_mask():
    m = decode_mask(encode(Image.fromarray(square_mask())), (60, 40))
    assert m.shape == (1, 40, 60) and m.dtype == torch.float32
    assert m.sum().item() == (square_mask() > 0).sum()


def test_antialiased_and_jpeg_masks_are_thresholded():
    from PIL import ImageDraw

    im = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(im).ellipse((10, 10, 54, 54), fill=255)
    soft = im.resize((256, 256), Image.Resampling.BICUBIC).resize((64, 64), Image.Resampling.BILINEAR)
    m = decode_mask(encode(soft), (64, 64))
    assert set(m.unique().tolist()) == {0.0, 1.0}
    m = decode_mask(encode(im, "JPEG", quality=75), (64, 64))
    assert abs(m.sum().item() - (np.asarray(im) > 127).sum()) < 60


def test_non_binary_mask_rejected():
    ramp = np.tile(np.linspace(0, 255, 60), (40, 1)).astype(np.uint8)
    assert reason_of(decode_mask, encode(Image.fromarray(ramp)), (60, 40)) == "non_binary_mask"
    gray = np.full((40, 60), 128, np.uint8)
    assert reason_of(decode_mask, encode(Image.fromarray(gray)), (60, 40)) == "non_binary_mask"


def test_mask_size_policy():
    big = Image.fromarray(square_mask()).resize((120, 80), Image.Resampling.NEAREST)
    m = decode_mask(encode(big), (60, 40))  # same aspect ratio: nearest resize
    assert m.shape == (1, 40, 60) and m.sum().item() == (square_mask() > 0).sum()
    odd = Image.fromarray(square_mask()).resize((61, 40), Image.Resampling.NEAREST)
    assert decode_mask(encode(odd), (60, 40)).shape == (1, 40, 60)  # within one pixel
    wrong = Image.fromarray(square_mask()).resize((60, 60))
    assert reason_of(decode_mask, encode(wrong), (60, 40)) == "mask_size_mismatch"
    assert reason_of(decode_mask, encode(big), (60, 40), resize="error") == "mask_size_mismatch"


def test_mask_modes():
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = square_mask()  # white strokes on a transparent layer
    m = decode_mask(encode(Image.fromarray(rgba, "RGBA")), (60, 40))
    assert m.sum().item() == (square_mask() > 0).sum()
    m16 = Image.fromarray(square_mask().astype(np.uint16) * 257)
    assert decode_mask(encode(m16), (60, 40)).sum().item() == (square_mask() > 0).sum()
    rgb = Image.fromarray(square_mask()).convert("RGB")
    assert decode_mask(encode(rgb, "JPEG", quality=95), (60, 40)).sum().item() > 0
    assert reason_of(decode_mask, b"", (60, 40)) == "empty_file"


# -- tensors -------------------------------------------------------------------------------------


def test_to_tensor_and_png_round_trip():
    a = noise_rgb(16, 16)
    t = to_tensor(Image.fromarray(a))
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), a / 127.5 - 1, atol=1e-6)
    back = to_tensor(decode_image(tensor_to_png_bytes(t)))
    assert (back - t).abs().max() < 1e-6
    x = torch.rand(1, 3, 8, 8) * 4 - 2  # out of range and batched: clipped, batch squeezed
    y = to_tensor(decode_image(tensor_to_png_bytes(x)))
    assert (y - x[0].clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-6
    with pytest.raises(ValueError):
        tensor_to_png_bytes(torch.zeros(4, 8, 8))
