from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from modelplex.core.model_config import ImagePreprocessing
from modelplex.core.preprocessing import ImagePreprocessor
from modelplex.errors import InvalidInput, PayloadTooLarge
from tests.helpers import encode_image

CONFIG = ImagePreprocessing(
    input="image", output="pixels", size=8, crop_fraction=0.5, mean=127.0, std=128.0
)


def batch(*files: bytes) -> dict[str, np.ndarray]:
    arr = np.empty(len(files), dtype=object)
    arr[:] = list(files)
    return {"image": arr}


def test_centre_crop_resize_and_normalise() -> None:
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    # The centre crop is rows 8-24, columns 24-40; white reaches past it by the
    # resampling filter's support, so the result is white throughout.
    pixels[2:30, 18:46] = 255
    outcome = ImagePreprocessor(CONFIG, 10_000)(batch(encode_image(pixels, "PNG")))
    tensor = outcome.inputs["pixels"]
    assert tensor.shape == (1, 3, 8, 8)
    assert tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, (255 - 127) / 128, atol=1e-6)
    assert "image" not in outcome.inputs


def test_nhwc_layout_and_grey_and_alpha_images() -> None:
    config = CONFIG.model_copy(update={"layout": "NHWC", "crop_fraction": 1.0})
    grey = encode_image(np.full((10, 10), 127, dtype=np.uint8), "PNG")
    rgba = encode_image(np.full((10, 10, 4), 127, dtype=np.uint8), "WEBP")
    tensor = ImagePreprocessor(config, 10_000)(batch(grey, rgba)).inputs["pixels"]
    assert tensor.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(tensor[0], 0, atol=1e-6)


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, :16] = 255  # stored: white left half
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: white top half
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    config = CONFIG.model_copy(
        update={"crop_fraction": 1.0, "layout": "NHWC", "mean": 0.0, "std": 1.0}
    )
    tensor = ImagePreprocessor(config, 10_000)(batch(buffer.getvalue())).inputs["pixels"][0]
    assert tensor[:2].mean() > 200  # top rows white
    assert tensor[-2:].mean() < 50  # bottom rows black


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GIF89a....", "JPEG, PNG or WebP"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "instance 0"),
    ],
)
def test_bad_files_are_invalid_input(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        ImagePreprocessor(CONFIG, 10_000)(batch(data))


def test_pixel_limit() -> None:
    big = encode_image(np.zeros((200, 200, 3), dtype=np.uint8), "PNG")
    with pytest.raises(InvalidInput, match="limit is 1000 pixels"):
        ImagePreprocessor(CONFIG, 1000)(batch(big))


def test_bad_row_is_named() -> None:
    good = encode_image(np.zeros((16, 16, 3), dtype=np.uint8), "PNG")
    with pytest.raises(InvalidInput, match="instance 1"):
        ImagePreprocessor(CONFIG, 10_000)(batch(good, b"junk"))


def test_request_pixel_limit_is_checked_from_headers_before_any_decoding() -> None:
    files = [encode_image(np.zeros((40, 50, 3), dtype=np.uint8), "PNG")] * 3
    checkpoints: list[int] = []
    preprocessor = ImagePreprocessor(CONFIG, 10_000, max_request_pixels=5_999)
    with pytest.raises(PayloadTooLarge, match="3 images decode to 6000 pixels"):
        preprocessor(batch(*files), lambda: checkpoints.append(1))
    assert checkpoints == []  # refused before the first image was decoded
    assert ImagePreprocessor(CONFIG, 10_000, 6_000)(batch(*files)).inputs["pixels"].shape[0] == 3


def test_jpeg_counts_the_pixels_its_decoder_will_produce() -> None:
    # The decoder scales JPEG by up to 1/8 for free: 800x800 decodes as 100x100 for
    # an 8-pixel crop, and that is what the request's limit counts.
    jpeg = encode_image(np.zeros((800, 800, 3), dtype=np.uint8), "JPEG")
    outcome = ImagePreprocessor(CONFIG, 1_000_000, max_request_pixels=10_000)(batch(jpeg))
    assert outcome.inputs["pixels"].shape == (1, 3, 8, 8)


def test_checkpoint_runs_before_each_image_and_stops_the_rest() -> None:
    files = [encode_image(np.zeros((10, 10, 3), dtype=np.uint8), "PNG")] * 4
    calls: list[int] = []

    def checkpoint() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise TimeoutError

    with pytest.raises(TimeoutError):
        ImagePreprocessor(CONFIG, 10_000)(batch(*files), checkpoint)
    assert len(calls) == 3
