"""`album-tagging`: tag a set of photos and summarise the album.

Steps (declared in the pipeline's `pipeline.toml`, see `build`):

1. `decode`: read the images (base64 strings, `{"name", "b64"}` objects, as
   `AlbumInput` declares, or a zip archive upload, read one entry at a time
   within `ARCHIVE_LIMITS`) and pre-process each the way EfficientNet-Lite
   expects. A file that is not a decodable JPEG, PNG or WebP image becomes an
   entry of the result's `errors` (its name, INPUT_DECODE_FAILED and the
   reason) and the others are tagged; with the pipeline option
   `on_undecodable_image = "fail"` it fails the job instead, and an album of
   which no image decodes fails either way. An archive that cannot be read
   safely (corrupt, truncated, encrypted, too many entries, a zip bomb) is
   INVALID_INPUT, never retried.
2. `features`: per image a perceptual hash (dHash), brightness and dominant
   colour; near-identical photos are grouped as duplicates.
3. `classify`: the `efficientnet-lite0` model from the repository, in batches.
4. `summarize`: each image's top labels, the album's top tags, and the
   images that did not decode (`errors`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelplex.core.model_config import ImagePreprocessing
from modelplex.core.preprocessing import ImagePreprocessor
from modelplex.core.tensors import Array
from modelplex.errors import InvalidInput
from modelplex.jobs.archives import ArchiveLimits, open_archive
from modelplex.jobs.pipelines import StepContext, StepError

MAX_IMAGES = 500
MAX_IMAGE_PIXELS = 40_000_000
THUMB = 9  # dHash compares 9x8 neighbours
DUPLICATE_BITS = 6  # hashes this close (of 64 bits) count as the same photo
TOP_LABELS = 5
# Every entry counts (a Mac adds a `__MACOSX/._` twin per photo); bytes are decompressed ones.
ARCHIVE_LIMITS = ArchiveLimits(
    max_entries=2 * MAX_IMAGES + 24, max_entry_bytes=128 * 1024**2, max_total_bytes=1024**3
)

PREPROCESSING = ImagePreprocessing(
    input="image", output="input", size=224, crop_fraction=0.875, mean=127.0, std=128.0
)

DECODE_FAILED = "INPUT_DECODE_FAILED"
UndecodablePolicy = Literal["report", "fail"]


class AlbumImage(BaseModel):
    """One photo with its name (shown in the result and its errors)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=1024)
    b64: str = Field(description="The base64 of a JPEG, PNG or WebP file.")


class AlbumOptions(BaseModel):
    """album-tagging's `[options]`, checked when the pipeline loads."""

    model_config = ConfigDict(extra="forbid")

    on_undecodable_image: UndecodablePolicy = "report"


class AlbumInput(BaseModel):
    """album-tagging's JSON input (or upload a zip archive of the photos as `file`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"images": [{"name": "cat.jpg", "b64": "/9j/4AAQ..."}]}]},
    )

    images: list[str | AlbumImage] = Field(
        min_length=1,
        max_length=MAX_IMAGES,
        description="The photos: base64 strings, or {name, b64} objects.",
    )


PIPELINE_TOML = """\
description = "Tag an album of photos: per-image labels, top tags, duplicates"
max_attempts = 2
options_schema = "AlbumOptions"

[input]
schema = "AlbumInput"
upload = true

[options]
# "report": an image that does not decode is an entry of the result's errors;
# "fail": it fails the job.
on_undecodable_image = "report"

[[steps]]
name = "decode"
function = "decode"
timeout_s = 600

[[steps]]
name = "features"
function = "features"
timeout_s = 300

[[steps]]
name = "classify"
model = "efficientnet-lite0"
input = "input"
output = "scores"
batch_size = 16
timeout_s = 600
retry = { max_attempts = 2, backoff_s = 1.0 }

[[steps]]
name = "summarize"
function = "summarize"
timeout_s = 60
"""

STEPS_PY = '''\
"""album-tagging's steps: the implementation ships with modelplex."""

from pathlib import Path

from modelplex.examples import album_tagging

AlbumInput = album_tagging.AlbumInput
AlbumOptions = album_tagging.AlbumOptions
decode = album_tagging.decode
features = album_tagging.features
summarize = album_tagging.summarizer(Path(__file__).with_name("labels.txt"))
'''


def build(folder: Path, labels: list[str]) -> None:
    folder.mkdir(parents=True)
    (folder / "pipeline.toml").write_text(PIPELINE_TOML)
    (folder / "steps.py").write_text(STEPS_PY)
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")


@contextlib.contextmanager
def _files(
    ctx: StepContext, data: Any
) -> Iterator[tuple[int, Iterator[tuple[str, bytes | _Undecodable]]]]:
    """How many images there are, then each (name, content) in turn: an archive's
    entries are read one at a time, so only one is ever in memory."""
    if not isinstance(data, dict):
        raise InvalidInput("input must be an object with 'images' or an archive")
    if "upload" in data:
        upload = data["upload"] if isinstance(data["upload"], dict) else {}
        filename = str(upload.get("filename") or "upload")
        with ctx.open_upload() as file, open_archive(file, ARCHIVE_LIMITS, filename) as archive:
            members = [m for m in archive.files() if not _hidden(m.filename)]
            if len(members) > MAX_IMAGES:
                raise InvalidInput(f"at most {MAX_IMAGES} images per album")
            yield len(members), ((m.filename, archive.read(m)) for m in members)
        return
    # The shape was checked at submission against AlbumInput; this is a second
    # line for a job stored before that (or a batch line).
    images = data.get("images")
    if not isinstance(images, list) or not images:
        raise InvalidInput("'images' must be a non-empty list")
    if len(images) > MAX_IMAGES:
        raise InvalidInput(f"at most {MAX_IMAGES} images per album")
    named = []
    for i, item in enumerate(images):
        name, text = (item.get("name"), item.get("b64")) if isinstance(item, dict) else (None, item)
        named.append((str(name or f"images[{i}]"), text))
    yield len(named), ((name, _b64_file(name, text)) for name, text in named)


class _Undecodable(Exception):
    """Why one image cannot be used: an error of that image alone."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64_file(name: str, text: Any) -> bytes | _Undecodable:
    """The file, or why it cannot be read."""
    if not isinstance(text, str):
        return _Undecodable("not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return _Undecodable("not valid base64")


def _hidden(path: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.split("/"))


def _policy(ctx: StepContext) -> UndecodablePolicy:
    return AlbumOptions.model_validate(ctx.options).on_undecodable_image


def decode(ctx: StepContext, data: Any) -> dict[str, Any]:
    policy = _policy(ctx)
    with _files(ctx, data) as (count, files):
        if not count:
            raise InvalidInput("the album has no images")
        preprocessor = ImagePreprocessor(PREPROCESSING, MAX_IMAGE_PIXELS)
        names: list[str] = []
        errors: list[dict[str, str]] = []
        pixels = np.empty((count, 3, 224, 224), dtype=np.float32)
        thumbs = np.empty((count, THUMB - 1, THUMB), dtype=np.float32)
        colours = np.empty((count, 3), dtype=np.float32)
        for i, (name, content) in enumerate(files):
            ctx.check_cancelled()
            try:
                tensor = _pixels(preprocessor, content)
            except _Undecodable as failure:
                if policy == "fail":
                    raise StepError(DECODE_FAILED, f"'{name}' is {failure.reason}") from None
                errors.append({"name": name, "code": DECODE_FAILED, "reason": failure.reason})
                ctx.progress((i + 1) / count)
                continue
            row = len(names)
            names.append(name)
            pixels[row] = tensor
            rgb = tensor * PREPROCESSING.std + PREPROCESSING.mean  # back to 0..255 for features
            colours[row] = rgb.reshape(3, -1).mean(axis=1)
            grey = rgb.mean(axis=0)
            thumbs[row] = _shrink(grey, THUMB - 1, THUMB)
            ctx.progress((i + 1) / count)
    if not names:  # nothing to tag: the album as a whole is unusable
        first = errors[0]
        raise StepError(
            DECODE_FAILED,
            f"none of the album's {len(errors)} images decodes ('{first['name']}' is "
            f"{first['reason']})",
        )
    kept = len(names)
    return {
        "names": names,
        "input": pixels[:kept],
        "thumbs": thumbs[:kept],
        "colours": colours[:kept],
        "errors": errors,
    }


def _pixels(preprocessor: ImagePreprocessor, content: bytes | _Undecodable) -> Array:
    if isinstance(content, _Undecodable):
        raise content
    one = np.empty(1, dtype=object)
    one[0] = content
    try:
        tensor: Array = preprocessor({"image": one}).inputs["input"][0]
    except InvalidInput:
        raise _Undecodable("not a decodable JPEG, PNG or WebP image") from None
    return tensor


def _shrink(image: Array, rows: int, cols: int) -> Array:
    """Block means: a cheap, deterministic downscale for hashing."""
    h, w = image.shape
    ys = np.linspace(0, h, rows + 1).astype(int)
    xs = np.linspace(0, w, cols + 1).astype(int)
    return np.array(
        [
            [image[ys[r] : ys[r + 1], xs[c] : xs[c + 1]].mean() for c in range(cols)]
            for r in range(rows)
        ]
    )


def features(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    thumbs: Array = data["thumbs"]
    bits = thumbs[:, :, 1:] > thumbs[:, :, :-1]  # dHash: is each pixel brighter than its left?
    hashes = np.packbits(bits.reshape(len(bits), -1), axis=1)
    groups: list[list[int]] = []
    assigned: dict[int, int] = {}
    for i in range(len(hashes)):
        ctx.check_cancelled()
        for j in range(i):
            distance = int(np.unpackbits(hashes[i] ^ hashes[j]).sum())
            if distance <= DUPLICATE_BITS:
                group = assigned.setdefault(j, len(groups))
                if group == len(groups):
                    groups.append([j])
                groups[group].append(i)
                assigned[i] = group
                break
        ctx.progress((i + 1) / len(hashes))
    brightness = data["colours"].mean(axis=1) / 255.0
    return {
        **data,
        "hashes": [h.tobytes().hex() for h in hashes],
        "brightness": brightness,
        "duplicates": groups,
    }


def summarizer(labels_path: Path) -> Any:
    labels = labels_path.read_text().splitlines()

    def summarize(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
        scores: Array = data["scores"]["probabilities"]
        names: list[str] = data["names"]
        images = []
        tags: Counter[str] = Counter()
        for i, name in enumerate(names):
            best = np.argsort(-scores[i])[:TOP_LABELS]
            top = [
                {
                    "label": labels[c],
                    "class_id": int(c),
                    "confidence": round(float(scores[i, c]), 5),
                }
                for c in best
            ]
            tags[top[0]["label"]] += 1
            images.append(
                {
                    "name": name,
                    "labels": top,
                    "brightness": round(float(data["brightness"][i]), 4),
                    "dhash": data["hashes"][i],
                }
            )
        errors: list[dict[str, str]] = data.get("errors", [])
        return {
            "images": images,
            "errors": errors,
            "summary": {
                "images": len(names),
                "undecodable": len(errors),
                "top_tags": [{"label": t, "count": n} for t, n in tags.most_common(10)],
                "duplicates": [[names[i] for i in group] for group in data["duplicates"]],
                "mean_brightness": round(float(np.mean(data["brightness"])), 4),
            },
        }

    return summarize
