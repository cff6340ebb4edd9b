"""The jobs API end to end: real HTTP, a real worker process, SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sklearn.datasets import load_digits

from tests.jobs.conftest import JobsEnv
from tests.jobs.harness import receiver, wait_for, wait_job

DIGITS = load_digits(return_X_y=True)[0]


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post("/v1/jobs", json=body, headers=headers)


def test_model_job_lifecycle(jobs_env: JobsEnv) -> None:
    client = jobs_env.client
    body = {"instances": DIGITS[1500:1503].tolist()}
    response = submit(client, {"model": "digits", "input": body, "metadata": {"ticket": 7}})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "QUEUED"
    assert job["steps"] == [
        {"name": "inference", "status": "PENDING", "progress": 0.0, "started_at": None,
         "finished_at": None}
    ]  # fmt: skip
    done = wait_job(client, job["id"])
    assert done["status"] == "COMPLETED"
    assert done["attempts"] == 1
    assert done["metadata"] == {"ticket": 7}
    assert done["steps"][0]["status"] == "COMPLETED"
    assert done["history"][0]["worker"]
    sync = client.post("/v1/models/digits/predict", json=body).json()
    assert done["result"]["predictions"] == sync["predictions"]
    assert client.get(f"/v1/jobs/{job['id']}/result").json() == done["result"]
    assert "Retry-After" not in client.get(f"/v1/jobs/{job['id']}").headers


def test_unfinished_job_says_when_to_poll(jobs_env: JobsEnv) -> None:
    response = submit(jobs_env.client, {"pipeline": "slow-steps", "input": {"slices": 10}})
    job = jobs_env.client.get(response.headers["Location"])
    assert job.headers["Retry-After"] == "1"
    result = jobs_env.client.get(f"/v1/jobs/{response.json()['id']}/result")
    assert result.status_code == 409
    assert result.json()["code"] == "JOB_NOT_FINISHED"
    wait_job(jobs_env.client, response.json()["id"])


def test_idempotency_key(jobs_env: JobsEnv) -> None:
    client = jobs_env.client
    body = {"model": "digits", "input": {"instance": DIGITS[0].tolist()}}
    first = submit(client, body, **{"Idempotency-Key": "order-17"})
    again = submit(client, body, **{"Idempotency-Key": "order-17"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    different = submit(client, {**body, "priority": 5}, **{"Idempotency-Key": "order-17"})
    assert different.status_code == 409
    assert different.json()["code"] == "IDEMPOTENCY_CONFLICT"
    other = submit(client, body, **{"Idempotency-Key": "order-18"})
    assert other.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "nope", "input": {}}, 404, "MODEL_NOT_FOUND"),
        ({"pipeline": "nope", "input": {}}, 404, "PIPELINE_NOT_FOUND"),
        (
            {"model": "digits", "version": "9", "input": {"instance": [0] * 64}},
            404,
            "VERSION_NOT_FOUND",
        ),
        ({"model": "digits", "input": {"instance": [1, 2]}}, 422, "INVALID_INPUT"),
        (
            {"model": "doubler", "input": {"instance": [1, 2], "parameters": {"top_k": 2}}},
            422,
            "INVALID_INPUT",
        ),
        ({"model": "digits", "pipeline": "x", "input": {}}, 422, "INVALID_INPUT"),
        ({"model": "digits"}, 422, "INVALID_INPUT"),
        ({"model": "digits", "input": {"instance": [0] * 64}, "extra": 1}, 422, "INVALID_INPUT"),
        (
            {"model": "digits", "input": {"instance": [0] * 64}, "priority": 1000},
            422,
            "INVALID_INPUT",
        ),
        ({"pipeline": "slow-steps", "input": [1]}, 422, "INVALID_INPUT"),
        (
            {"pipeline": "slow-steps", "input": {}, "callback_url": "ftp://x/y"},
            422,
            "INVALID_INPUT",
        ),
        (
            {"pipeline": "slow-steps", "input": {}, "callback_events": ["job.step"]},
            422,
            "INVALID_INPUT",
        ),
        (
            {"pipeline": "slow-steps", "input": {}, "callback_url": "http://h:99999/"},
            422,
            "INVALID_INPUT",
        ),
        (
            {"pipeline": "slow-steps", "input": {}, "callback_url": "http://[::1/"},
            422,
            "INVALID_INPUT",
        ),
        ({"pipeline": "slow-steps", "input": {}, "metadata": [1]}, 422, "INVALID_INPUT"),
    ],
)
def test_submission_is_validated(
    jobs_env: JobsEnv, body: dict[str, Any], status: int, code: str
) -> None:
    response = submit(jobs_env.client, body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


def test_unknown_job_and_bad_list_queries(jobs_env: JobsEnv) -> None:
    client = jobs_env.client
    assert client.get("/v1/jobs/job_nope").json()["code"] == "JOB_NOT_FOUND"
    assert client.post("/v1/jobs/job_nope/cancel").status_code == 404
    assert client.get("/v1/jobs?status=DONE").json()["code"] == "INVALID_INPUT"
    assert client.get("/v1/jobs?limit=0").status_code == 422


def test_list_is_paginated_newest_first(jobs_env: JobsEnv) -> None:
    client = jobs_env.client
    ids = [
        submit(client, {"model": "digits", "input": {"instance": DIGITS[i].tolist()}}).json()["id"]
        for i in range(5)
    ]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"model": "digits", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:5] == list(reversed(ids))
    assert len(seen) == len(set(seen))


def test_cancel_queued_at_once_and_running_at_a_step_boundary(jobs_env: JobsEnv) -> None:
    client = jobs_env.client
    slow = {"pipeline": "slow-steps", "input": {"slices": 40, "slice_s": 0.1}}
    running = [submit(client, slow).json()["id"] for _ in range(2)]  # fills concurrency 2
    wait_for(
        lambda: all(client.get(f"/v1/jobs/{j}").json()["status"] == "PROCESSING" for j in running)
    )
    queued = submit(client, slow).json()["id"]
    answer = client.post(f"/v1/jobs/{queued}/cancel")
    cancelled = answer.json()
    assert (answer.status_code, cancelled["status"]) == (200, "CANCELLED")
    assert cancelled["error"]["code"] == "CANCELLED"
    assert client.post(f"/v1/jobs/{queued}/cancel").status_code == 200  # a retried cancel
    answer = client.post(f"/v1/jobs/{running[0]}/cancel")
    flagged = answer.json()
    assert (answer.status_code, flagged["status"]) == (202, "PROCESSING")
    assert flagged["cancel_requested"] is True
    stopped = wait_job(client, running[0])
    assert stopped["status"] == "CANCELLED"
    assert [s["status"] for s in stopped["steps"]] == ["CANCELLED", "PENDING"]
    assert wait_job(client, running[1])["status"] == "COMPLETED"


def test_pipeline_progress_is_visible_while_it_runs(jobs_env: JobsEnv) -> None:
    client = jobs_env.client
    job_id = submit(
        client, {"pipeline": "slow-steps", "input": {"slices": 30, "slice_s": 0.1}}
    ).json()["id"]

    def midway() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        step = job["steps"][0]
        return job if step["status"] == "RUNNING" and 0 < step["progress"] < 1 else None

    job = wait_for(midway)
    assert 0 < job["progress"] < 0.5
    assert job["steps"][0]["started_at"] is not None
    done = wait_job(client, job_id)
    assert done["result"] == {"done": True, "slept": 30, "echo": None}
    assert done["progress"] == 1.0


def test_step_retry_policy(jobs_env: JobsEnv, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    body = {"pipeline": "flaky", "input": {"marker": str(marker), "failures": 2}}
    done = wait_job(jobs_env.client, submit(jobs_env.client, body).json()["id"])
    assert done["status"] == "COMPLETED"
    assert done["result"] == {"attempts_seen": 3}  # two step retries inside one job attempt
    assert done["attempts"] == 1


def test_job_retry_after_a_retryable_failure(jobs_env: JobsEnv, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    body = {"pipeline": "flaky-once", "input": {"marker": str(marker), "failures": 1}}
    done = wait_job(jobs_env.client, submit(jobs_env.client, body).json()["id"])
    assert done["status"] == "COMPLETED"
    assert done["attempts"] == 2
    assert len(done["history"]) == 2  # a retry is not mistaken for a lost worker
    assert done["history"][0]["error"]["code"] == "STEP_FAILED"
    assert "error" not in done["history"][1]
    assert "transient" not in str(done["history"])  # exception text stays in the worker log


def test_a_pipeline_may_allow_more_attempts_than_the_default(
    jobs_env: JobsEnv, tmp_path: Path
) -> None:
    body = {"pipeline": "flaky-five", "input": {"marker": str(tmp_path / "m"), "failures": 3}}
    done = wait_job(jobs_env.client, submit(jobs_env.client, body).json()["id"])
    assert done["max_attempts"] == 5
    assert done["status"] == "COMPLETED"
    assert done["attempts"] == 4


def test_a_result_that_is_not_json_fails_the_job_cleanly(jobs_env: JobsEnv) -> None:
    done = wait_job(
        jobs_env.client, submit(jobs_env.client, {"pipeline": "not-json", "input": {}}).json()["id"]
    )
    assert done["status"] == "FAILED"
    assert done["error"]["code"] == "RESULT_NOT_SERIALIZABLE"


def test_a_job_cannot_name_someone_elses_upload(jobs_env: JobsEnv) -> None:
    body = {"pipeline": "album-tagging", "input": {"upload": {"filename": "x.zip"}}}
    refused = submit(jobs_env.client, body)
    assert refused.status_code == 422
    assert "unknown fields ['input.upload']" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("input", "message"),
    [
        ({"foo": 1}, "unknown fields ['input.foo']; expected images"),
        ({}, "'input.images' is required"),
        ({"images": []}, "'input.images'"),
        ({"images": [{"name": "a.jpg"}]}, "'input.images.0"),
        ([1], "must be a JSON object"),
    ],
)
def test_a_pipeline_input_is_checked_against_its_schema_at_submission(
    jobs_env: JobsEnv, input: Any, message: str
) -> None:
    response = submit(jobs_env.client, {"pipeline": "album-tagging", "input": input})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "INVALID_INPUT"
    assert message in problem["detail"]


def test_files_go_only_where_they_are_taken(jobs_env: JobsEnv) -> None:
    to_model = jobs_env.client.post(
        "/v1/jobs", data={"model": "digits"}, files={"file": ("rows.json", b"[1, 2]")}
    )
    assert to_model.status_code == 422, to_model.text
    detail = to_model.json()["detail"]
    assert "model 'digits' takes JSON, not a file" in detail
    assert '{"instance": ...}' in detail
    assert "upload" not in detail  # no internal name
    to_pipeline = jobs_env.client.post(
        "/v1/jobs", data={"pipeline": "slow-steps"}, files={"file": ("a.zip", b"PK")}
    )
    assert to_pipeline.status_code == 422
    assert "pipeline 'slow-steps' takes no file" in to_pipeline.json()["detail"]


def test_failure_codes_name_the_step_and_are_not_retried(jobs_env: JobsEnv) -> None:
    done = wait_job(
        jobs_env.client, submit(jobs_env.client, {"pipeline": "refuses", "input": {}}).json()["id"]
    )
    assert done["status"] == "FAILED"
    assert done["error"] == {
        "code": "INPUT_DECODE_FAILED", "message": "'photo.jpg' is not an image", "step": "refuse",
    }  # fmt: skip
    assert done["attempts"] == 1
    assert done["steps"][0]["status"] == "FAILED"


def test_model_step_in_a_pipeline(jobs_env: JobsEnv) -> None:
    body = {"pipeline": "model-step", "input": {"rows": [[1, 2], [3, 4], [5, 6]]}}
    done = wait_job(jobs_env.client, submit(jobs_env.client, body).json()["id"])
    assert done["status"] == "COMPLETED", done
    assert done["result"] == {"y": [[2, 4], [6, 8], [10, 12]]}


def test_large_results_live_in_the_blob_store(jobs_env: JobsEnv) -> None:
    body = {
        "model": "digits",
        "input": {"instances": DIGITS[:200].tolist(), "parameters": {"top_k": 5}},
    }
    done = wait_job(jobs_env.client, submit(jobs_env.client, body).json()["id"])
    assert done["result_in_blob"] is True
    assert done["result"] is None
    result = jobs_env.client.get(f"/v1/jobs/{done['id']}/result").json()
    assert len(result["predictions"]) == 200


def photos_as_b64(photos: dict[str, bytes]) -> list[dict[str, str]]:
    return [{"name": n, "b64": base64.b64encode(d).decode()} for n, d in sorted(photos.items())]


def test_album_tagging_pipeline(jobs_env: JobsEnv, photos: dict[str, bytes]) -> None:
    images = photos_as_b64(photos) + photos_as_b64({"zz-again.jpg": photos["cat.jpg"]})
    done = wait_job(
        jobs_env.client,
        submit(jobs_env.client, {"pipeline": "album-tagging", "input": {"images": images}}).json()[
            "id"
        ],
    )
    assert done["status"] == "COMPLETED", done.get("error")
    assert [s["name"] for s in done["steps"]] == ["decode", "features", "classify", "summarize"]
    result = jobs_env.client.get(f"/v1/jobs/{done['id']}/result").json()
    top = {i["name"]: i["labels"][0]["class_id"] for i in result["images"]}
    assert top["coffee.png"] == 967
    assert top["tripod.webp"] == 872
    assert top["cat.jpg"] in {281, 282, 285}
    assert result["summary"]["images"] == 4
    assert ["cat.jpg", "zz-again.jpg"] in result["summary"]["duplicates"]


def test_album_tagging_zip_upload_and_a_bad_file(
    jobs_env: JobsEnv, photos: dict[str, bytes]
) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("album/coffee.png", photos["coffee.png"])
        zipped.writestr("album/notes.jpg", b"these are not pixels")
    response = jobs_env.client.post(
        "/v1/jobs",
        data={"pipeline": "album-tagging", "metadata": '{"album": "trip"}'},
        files={"file": ("album.zip", archive.getvalue(), "application/zip")},
    )
    assert response.status_code == 202, response.text
    done = wait_job(jobs_env.client, response.json()["id"])
    assert done["status"] == "COMPLETED", done.get("error")
    assert done["metadata"] == {"album": "trip"}
    result = jobs_env.client.get(f"/v1/jobs/{done['id']}/result").json()
    assert [i["name"] for i in result["images"]] == ["album/coffee.png"]
    assert result["images"][0]["labels"][0]["class_id"] == 967
    assert result["errors"] == [
        {
            "name": "album/notes.jpg",
            "code": "INPUT_DECODE_FAILED",
            "reason": "not a decodable JPEG, PNG or WebP image",
        }
    ]
    assert result["summary"]["images"] == 1
    assert result["summary"]["undecodable"] == 1


def test_an_album_option_fails_the_job_on_one_bad_image(
    jobs_env: JobsEnv, photos: dict[str, bytes]
) -> None:
    images = [*photos_as_b64({"coffee.png": photos["coffee.png"]}), {"name": "x", "b64": "!!"}]
    strict = submit(jobs_env.client, {"pipeline": "album-strict", "input": {"images": images}})
    done = wait_job(jobs_env.client, strict.json()["id"])
    assert done["status"] == "FAILED"
    assert done["error"] == {
        "code": "INPUT_DECODE_FAILED", "message": "'x' is not valid base64", "step": "decode",
    }  # fmt: skip
    bad = [{"name": "x", "b64": "!!"}, {"name": "y", "b64": base64.b64encode(b"no").decode()}]
    lenient = submit(jobs_env.client, {"pipeline": "album-tagging", "input": {"images": bad}})
    done = wait_job(jobs_env.client, lenient.json()["id"])
    assert done["status"] == "FAILED"  # nothing left to tag
    assert done["error"]["code"] == "INPUT_DECODE_FAILED"
    assert "none of the album's 2 images decodes" in done["error"]["message"]


def test_batch_with_some_bad_lines(jobs_env: JobsEnv) -> None:
    client = jobs_env.client
    lines = [
        orjson.dumps({"custom_id": f"row-{i}", "input": DIGITS[1500 + i].tolist()})
        for i in range(5)
    ]
    lines += [
        b"{this is not json",
        orjson.dumps({"input": DIGITS[0].tolist()}),  # no custom_id
        orjson.dumps({"custom_id": "short", "input": [1, 2, 3]}),  # the model refuses it
        orjson.dumps({"custom_id": "row-0", "input": DIGITS[0].tolist()}),  # duplicate id
    ]
    response = client.post(
        "/v1/batches",
        data={"model": "digits", "options": '{"top_k": 2}'},
        files={"file": ("rows.jsonl", b"\n".join(lines), "application/jsonl")},
    )
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    batch = wait_for(
        lambda: (b := client.get(f"/v1/batches/{batch_id}").json())["finished_at"] and b
    )
    assert batch["status"] == "PARTIALLY_FAILED"
    assert batch["counts"] == {
        "total": 9,
        "completed": 5,
        "failed": 4,
        "refused": 3,
        "pending": 0,
        "cancelled": 0,
    }
    assert batch["progress"] == 1.0
    assert [(r["line"], r["custom_id"]) for r in batch["refusals"]] == [
        (6, None), (7, None), (9, "row-0"),
    ]  # fmt: skip
    results = [
        orjson.loads(x) for x in client.get(f"/v1/batches/{batch_id}/results").content.splitlines()
    ]
    assert sorted(r["custom_id"] for r in results) == [f"row-{i}" for i in range(5)]
    sync = client.post(
        "/v1/models/digits/predict", json={"instances": DIGITS[1500:1505].tolist()}
    ).json()
    by_id = {r["custom_id"]: r["output"] for r in results}
    assert [by_id[f"row-{i}"]["class_id"] for i in range(5)] == [
        p["class_id"] for p in sync["predictions"]
    ]
    assert len(by_id["row-0"]["top_k"]) == 2
    errors = [
        orjson.loads(x) for x in client.get(f"/v1/batches/{batch_id}/errors").content.splitlines()
    ]
    assert len(errors) == 4
    assert {e["error"]["code"] for e in errors} == {"INVALID_INPUT"}
    assert {e.get("line") for e in errors if "line" in e} == {6, 7, 9}
    assert any(e["custom_id"] == "short" for e in errors)


def test_batch_submission_errors(jobs_env: JobsEnv) -> None:
    client = jobs_env.client
    empty = client.post(
        "/v1/batches?model=digits", content=b"\n\n", headers={"content-type": "application/jsonl"}
    )
    assert empty.json()["code"] == "INVALID_INPUT"
    unknown = client.post(
        "/v1/batches?model=nope",
        content=b'{"custom_id":"a","input":1}',
        headers={"content-type": "application/jsonl"},
    )
    assert unknown.json()["code"] == "MODEL_NOT_FOUND"
    wrong_type = client.post("/v1/batches", content=b"x", headers={"content-type": "text/plain"})
    assert wrong_type.json()["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert client.get("/v1/batches/batch_nope").json()["code"] == "BATCH_NOT_FOUND"
    bad_metadata = client.post(
        "/v1/batches",
        data={"model": "digits", "metadata": "[1, 2]"},
        files={"file": ("rows.jsonl", b'{"custom_id": "a", "input": []}')},
    )
    assert bad_metadata.json()["code"] == "INVALID_INPUT"
    top_k_for_no_classes = client.post(
        "/v1/batches",
        data={"model": "doubler", "options": '{"top_k": 2}'},
        files={"file": ("rows.jsonl", b'{"custom_id": "a", "input": [1, 2]}')},
    )
    assert top_k_for_no_classes.status_code == 422
    assert "has no classification" in top_k_for_no_classes.json()["detail"]


def test_pipeline_batch_lines_are_checked_against_its_schema(jobs_env: JobsEnv) -> None:
    lines = [
        orjson.dumps({"custom_id": "foo", "input": {"foo": 1}}),
        orjson.dumps({"custom_id": "empty", "input": {"images": []}}),
    ]
    response = jobs_env.client.post(
        "/v1/batches?pipeline=album-tagging",
        content=b"\n".join(lines),
        headers={"content-type": "application/jsonl"},
    )
    assert response.status_code == 202, response.text
    batch = jobs_env.client.get(f"/v1/batches/{response.json()['id']}").json()
    assert batch["counts"]["refused"] == 2
    refusals = {r["custom_id"]: r["error"] for r in batch["refusals"]}
    assert "unknown fields ['input.foo']" in refusals["foo"]["message"]
    assert "'input.images'" in refusals["empty"]["message"]
    assert {e["code"] for e in refusals.values()} == {"INVALID_INPUT"}


def test_a_batch_of_only_bad_lines_is_finished_at_once(jobs_env: JobsEnv) -> None:
    response = jobs_env.client.post(
        "/v1/batches?model=digits",
        content=b"nope\n{}\n",
        headers={"content-type": "application/jsonl"},
    )
    batch = response.json()
    assert batch["status"] == "FAILED"
    assert batch["finished_at"] is not None
    assert batch["counts"]["failed"] == 2
    assert "Retry-After" not in jobs_env.client.get(f"/v1/batches/{batch['id']}").headers


def test_webhook_retried_until_it_succeeds(jobs_env: JobsEnv) -> None:
    with receiver(plan=[500, 500, 200]) as hooks:
        body = {
            "model": "digits",
            "input": {"instance": DIGITS[0].tolist()},
            "callback_url": hooks.url,
        }
        job_id = submit(jobs_env.client, body).json()["id"]
        assert wait_job(jobs_env.client, job_id)["status"] == "COMPLETED"
        deliveries = wait_for(
            lambda: (
                (d := jobs_env.client.get(f"/v1/jobs/{job_id}/deliveries").json()["deliveries"])
                and d[0]["status"] != "PENDING"
                and d
            )
        )
    [delivery] = deliveries
    assert delivery["event"] == "job.completed"
    assert delivery["status"] == "DELIVERED"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert len(hooks.received) == 3
    assert all(r["valid"] for r in hooks.received)  # signed with the configured secret
    assert {r["headers"]["webhook-id"] for r in hooks.received} == {delivery["id"]}
    payload = orjson.loads(hooks.received[-1]["body"])
    assert payload["type"] == "job.completed"
    assert payload["data"]["id"] == job_id
    assert payload["data"]["result"]["predictions"][0]["class_id"] == 0


def test_webhook_gives_up_at_the_limit_and_the_job_stays_completed(jobs_env: JobsEnv) -> None:
    with receiver() as hooks:
        dead_url = hooks.url  # the receiver stops before the job finishes
    body = {"model": "digits", "input": {"instance": DIGITS[0].tolist()}, "callback_url": dead_url}
    job_id = submit(jobs_env.client, body).json()["id"]
    assert wait_job(jobs_env.client, job_id)["status"] == "COMPLETED"
    [delivery] = wait_for(
        lambda: (
            (d := jobs_env.client.get(f"/v1/jobs/{job_id}/deliveries").json()["deliveries"])
            and d[0]["status"] == "FAILED"
            and d
        )
    )
    assert len(delivery["attempts"]) == jobs_env.settings.webhook_max_attempts
    assert all(a["error"] for a in delivery["attempts"])
    assert jobs_env.client.get(f"/v1/jobs/{job_id}").json()["status"] == "COMPLETED"


def test_step_events_on_request(jobs_env: JobsEnv) -> None:
    with receiver() as hooks:
        body = {
            "pipeline": "slow-steps", "input": {"slices": 2}, "callback_url": hooks.url,
            "callback_events": ["job.step"],
        }  # fmt: skip
        job_id = submit(jobs_env.client, body).json()["id"]
        wait_job(jobs_env.client, job_id)
        wait_for(
            lambda: any(orjson.loads(r["body"])["type"] == "job.completed" for r in hooks.received)
        )
    events = [orjson.loads(r["body"]) for r in hooks.received]
    steps = [
        (e["data"]["step"]["name"], e["data"]["step"]["status"])
        for e in events
        if e["type"] == "job.step"
    ]
    assert ("slow", "COMPLETED") in steps
    assert ("finish", "COMPLETED") in steps
    assert events[-1]["type"] == "job.completed"


def test_pipelines_are_listed(jobs_env: JobsEnv) -> None:
    pipelines = {p["name"]: p for p in jobs_env.client.get("/v1/pipelines").json()["pipelines"]}
    assert pipelines["album-tagging"]["state"] == "READY"
    assert [s["name"] for s in pipelines["album-tagging"]["steps"]] == [
        "decode",
        "features",
        "classify",
        "summarize",
    ]
    assert pipelines["album-tagging"]["steps"][2]["kind"] == "model"
    album_input = pipelines["album-tagging"]["input"]
    assert album_input["upload"] is True
    assert album_input["schema"]["required"] == ["images"]
    assert album_input["schema"]["properties"]["images"]["maxItems"] == 500
    assert pipelines["album-tagging"]["options"] == {"on_undecodable_image": "report"}
    assert pipelines["slow-steps"]["input"] == {
        "schema": {"type": "object", "description": "Any JSON object."},
        "upload": False,
    }
    one = jobs_env.client.get("/v1/pipelines/album-tagging")
    assert one.json() == pipelines["album-tagging"]
    missing = jobs_env.client.get("/v1/pipelines/nope")
    assert missing.status_code == 404
    assert missing.json()["code"] == "PIPELINE_NOT_FOUND"
    components = jobs_env.client.get("/openapi.json").json()["components"]["schemas"]
    documented = components["PipelineInput.album-tagging"]
    assert documented["properties"]["images"]["items"]["anyOf"][1] == {
        "$ref": "#/components/schemas/PipelineInput.album-tagging.AlbumImage"
    }
    assert "PipelineInput.album-tagging.AlbumImage" in components
    assert "pipeline 'album-tagging' (or upload a file)" in documented["description"]
