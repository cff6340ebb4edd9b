from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from modelplex.core.model_config import ImagePreprocessing
from modelplex.core.preprocessing import ImagePreprocessor
from modelplex.errors import InvalidInput
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
