"""Image pre-processing: encoded files in, normalised pixel tensors out.

Runs in a thread pool, one request at a time, before the request joins its
model's batch queue. Pillow decodes (it knows formats, EXIF orientation and
decompression bombs); OpenCV crops and resizes: its bicubic resize of a 224-pixel
crop takes ~45 us where Pillow's takes ~470 us, which is most of the cost of
pre-processing an image. Both release the GIL.

Work per request is bounded before any of it is done: Pillow opens files
lazily, so every header is read first and a request whose images would decode
to more than `max_request_pixels` in all is refused (a 40 MP single-colour PNG
is ~40 KB on the wire and ~0.5 s of decoding). Between images the caller's
`checkpoint` runs, so a request that timed out or was abandoned stops at the
next image instead of holding the thread for the rest.
"""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from modelplex.core.model_config import ImagePreprocessing
from modelplex.core.tensors import Array, Datatype, TensorSpec
from modelplex.errors import InvalidInput, PayloadTooLarge

_FORMATS = ("JPEG", "PNG", "WEBP")
_RESAMPLE = {"bicubic": "INTER_CUBIC", "bilinear": "INTER_LINEAR", "nearest": "INTER_NEAREST"}
"""`resample` to the name of OpenCV's flag (OpenCV is imported with the first image model)."""


@dataclass(slots=True)
class PreprocessOutcome:
    inputs: dict[str, Array]
    decode_s: float
    transform_s: float


class ImagePreprocessor:
    def __init__(
        self, config: ImagePreprocessing, max_pixels: int, max_request_pixels: int | None = None
    ) -> None:
        self._config = config
        self._max_pixels = max_pixels
        self._max_request_pixels = max_request_pixels
        # OpenCV is ~30 MiB of RSS: only a process that loads an image model pays it.
        import cv2

        self._resize = cv2.resize
        self._resample: int = getattr(cv2, _RESAMPLE[config.resample])
        # JPEG's decoder can scale by 1/2..1/8 for free; ask for no less than the
        # crop needs so the result is the same as a full decode and resize.
        side = int(np.ceil(config.size / config.crop_fraction))
        self._draft_size = (side, side)

    @property
    def output_spec(self) -> TensorSpec:
        size = self._config.size
        shape = (3, size, size) if self._config.layout == "NCHW" else (size, size, 3)
        return TensorSpec(self._config.output, Datatype.FP32, shape)

    def __call__(
        self, inputs: dict[str, Array], checkpoint: Callable[[], None] | None = None
    ) -> PreprocessOutcome:
        """Decode, crop and resize every image; `checkpoint` runs before each image
        and raises to stop the work (a deadline, a caller gone)."""
        files = inputs[self._config.input].reshape(-1)
        size = self._config.size
        t0 = time.perf_counter()
        images = deque(self._open(data, row) for row, data in enumerate(files))
        self._check_request_pixels(images)
        pixels = np.empty((len(files), size, size, 3), dtype=np.uint8)
        decode_s = time.perf_counter() - t0
        transform_s = 0.0
        for row in range(len(files)):
            if checkpoint is not None:
                checkpoint()
            t0 = time.perf_counter()
            # Popped, not iterated: a decoded image keeps its pixels, so none may
            # outlive its own row.
            image = self._decode(images.popleft(), row)
            t1 = time.perf_counter()
            pixels[row] = self._crop_resize(image)
            transform_s += time.perf_counter() - t1
            decode_s += t1 - t0
        t2 = time.perf_counter()
        tensor = (pixels.astype(np.float32) - self._config.mean) / self._config.std
        if self._config.layout == "NCHW":
            tensor = np.ascontiguousarray(tensor.transpose(0, 3, 1, 2))
        transform_s += time.perf_counter() - t2
        out = {k: v for k, v in inputs.items() if k != self._config.input}
        out[self._config.output] = tensor
        return PreprocessOutcome(out, decode_s, transform_s)

    def _open(self, data: object, row: int) -> Image.Image:
        """The image's header only: format, size and (for JPEG) the decoder's scale."""
        if not isinstance(data, bytes | bytearray) or not data:
            raise InvalidInput(f"instance {row}: image is empty")
        try:
            image: Image.Image = Image.open(io.BytesIO(data), formats=_FORMATS)
            width, height = image.size
            if width * height > self._max_pixels:
                raise InvalidInput(
                    f"instance {row}: image is {width}x{height}; the limit is "
                    f"{self._max_pixels} pixels"
                )
            if isinstance(image, ImageFile.ImageFile) and image.format == "JPEG":
                image.draft("RGB", self._draft_size)  # `size` is now what will be decoded
            return image
        except InvalidInput:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise InvalidInput(f"instance {row}: not a decodable JPEG, PNG or WebP image") from exc
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
            raise InvalidInput(f"instance {row}: image data is corrupt ({exc})") from exc

    def _check_request_pixels(self, images: deque[Image.Image]) -> None:
        limit = self._max_request_pixels
        if limit is None:
            return
        total = sum(image.width * image.height for image in images)
        if total > limit:
            raise PayloadTooLarge(
                f"the request's {len(images)} images decode to {total} pixels; the limit "
                f"per request is {limit}: send them in smaller requests"
            )

    def _decode(self, image: Image.Image, row: int) -> Image.Image:
        try:
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
        except (Image.DecompressionBombError, UnidentifiedImageError) as exc:
            raise InvalidInput(f"instance {row}: not a decodable JPEG, PNG or WebP image") from exc
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
            raise InvalidInput(f"instance {row}: image data is corrupt ({exc})") from exc

    def _crop_resize(self, image: Image.Image) -> Array:
        pixels = np.asarray(image, dtype=np.uint8)
        height, width = pixels.shape[:2]
        side = max(1, round(min(width, height) * self._config.crop_fraction))
        top, left = (height - side) // 2, (width - side) // 2
        crop = pixels[top : top + side, left : left + side]
        size = self._config.size
        resized: Array = self._resize(crop, (size, size), interpolation=self._resample)
        return resized
