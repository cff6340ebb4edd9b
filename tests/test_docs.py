"""The documentation names every setting and error code, so a new one cannot go
undocumented; the quickstart's commands run as written against a real server."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import skimage.data
from PIL import Image

from modelplex.error_map import rows
from modelplex.jobs.pipelines import PIPELINE_FILE, PipelineConfig, StepConfig, StepRetry
from modelplex.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "5-configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name}`" in text, name
        assert f"`MODELPLEX_{name.upper()}`" in text, name


def test_every_error_code_is_documented() -> None:
    text = (DOCS / "4-api.md").read_text()
    for _, wire in rows():
        assert f"`{wire.code}`" in text, wire.code


def test_docs_index_links_exist() -> None:
    index = (DOCS / "README.md").read_text()
    for line in index.splitlines():
        if "](" in line:
            target = line.split("](", 1)[1].split(")", 1)[0]
            assert (DOCS / target).is_file(), target


def shell_block(page: str, heading: str) -> str:
    """The first ```sh block after `heading` in a docs page."""
    text = (DOCS / page).read_text()
    section = text[text.index(heading) :]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def phone_sized_photo() -> bytes:
    """A real photo (scikit-image's cup of coffee) at the size a camera gives: its
    base64 is far past the 128 KiB one command-line argument may hold on Linux."""
    image = Image.fromarray(skimage.data.coffee())
    image = image.resize((image.width * 3, image.height * 3), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_the_quickstart_commands_work_as_written(client: httpx.Client, tmp_path: Path) -> None:
    """Every command of "Ask it something", base64 JSON included, run by bash against a
    real server with a real photo, prints what the page says."""
    url = str(client.base_url).rstrip("/")
    photo = phone_sized_photo()
    assert len(base64.b64encode(photo)) > 128 * 1024
    (tmp_path / "photo.jpg").write_bytes(photo)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # the page runs .venv/bin/modelplex
    block = shell_block("1-quickstart.md", "## Ask it something")
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert any("-d @body.json" in line for line in commands)
    env = {**os.environ, "MODELPLEX_URL": url}
    outputs = []
    for command in commands:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command.replace("http://127.0.0.1:8000", url)],
            cwd=tmp_path, env=env, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (command, done.stderr.decode())
        outputs.append((command, done.stdout))
    answers = [(c, orjson.loads(out)) for c, out in outputs if "classify" in c or "predict" in c]
    assert len(answers) == 3
    for command, answer in answers:
        assert answer["predictions"][0]["label"] == "espresso", command
    # As the page says: five predictions by default, three for the JSON body's "top_k".
    counts = [len(answer["predictions"]) for _, answer in answers]
    assert counts[:2] == [5, 3], [c for c, _ in answers]
    [sample] = json_blocks("1-quickstart.md")  # the page's answer is this photo's
    documented, real = orjson.loads(sample)["predictions"], answers[1][1]["predictions"]
    assert [(p["label"], p["class_id"]) for p in documented] == [
        (p["label"], p["class_id"]) for p in real
    ]
    assert [p["confidence"] for p in documented] == pytest.approx(
        [p["confidence"] for p in real], abs=1e-3
    )


def test_the_pipeline_file_section_is_complete_and_its_example_loads(example_repo: Path) -> None:
    text = (DOCS / "7-jobs.md").read_text()
    section = text[text.index("### The pipeline file") :]
    section = section[: section.index("\n### ", 1)]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    shipped = (example_repo / "album-tagging" / PIPELINE_FILE).read_text()
    assert tomllib.loads(example) == tomllib.loads(shipped)  # the real one, as shipped
    PipelineConfig.model_validate(tomllib.loads(example))
    documented = set(re.findall(r"^\| `\[*([a-z_]+)\]*` \|", section, re.M))
    keys = set(PipelineConfig.model_fields) | set(StepConfig.model_fields)
    assert documented == keys, documented ^ keys
    for key in StepRetry.model_fields:
        assert f"{key} = " in section, key


def json_blocks(page: str) -> list[str]:
    return re.findall(r"```json\n(.*?)```", (DOCS / page).read_text(), re.S)


def test_the_api_pages_sample_answers_are_what_the_server_answers(client: httpx.Client) -> None:
    """The requests the page names, sent to a real server: the same answers but for
    the ids and times that differ per request."""
    readme = (DOCS.parent / "README.md").read_text()
    found = re.search(r"-d '(\{\"instance\": \[[0-9,]+\]\})'", readme)
    assert found is not None
    predicted = client.post("/v1/models/digits/predict", json=orjson.loads(found[1])).json()
    refused = client.post("/v1/models/digits/predict", json={"instance": [1, 2]}).json()
    *_, prediction_sample, problem_sample = json_blocks("4-api.md")
    for sample, real in ((prediction_sample, predicted), (problem_sample, refused)):
        documented: dict[str, Any] = orjson.loads(sample)
        for varies in ("id", "request_id", "metadata"):
            documented.pop(varies, None)
            real.pop(varies, None)
        assert documented == real
