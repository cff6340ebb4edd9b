"""Webhook events end to end: a real server and worker process (SQLite and
PostgreSQL) deliver to a real receiver over a socket; every event has one
envelope and one job shape, arrives in order, and verifies as documented."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import standardwebhooks

from modelplex.client import WebhookVerificationError, verify_webhook
from modelplex.signatures import SECRET_PREFIX
from tests.jobs.conftest import JobsEnv
from tests.jobs.harness import TEST_SECRET, Receiver, receiver, wait_for, wait_job

ENVELOPE = {"type", "id", "timestamp", "data"}
JOB_FIELDS = {
    "id", "status", "pipeline", "version", "progress", "steps", "step", "attempts",
    "cancel_requested", "created_at", "started_at", "finished_at", "metadata", "result",
    "result_in_blob", "error",
}  # fmt: skip
FINISHED = ("job.completed", "job.failed", "job.cancelled")
JOBS_DOC = Path(__file__).resolve().parents[2] / "docs" / "7-jobs.md"


def doc_section(title: str) -> str:
    text = JOBS_DOC.read_text()
    start = text.index(f"### {title}\n")
    return text[start : text.index("\n### ", start + 1)]


def documented_fields() -> tuple[set[str], set[str]]:
    """The fields the events tables of docs/7-jobs.md name: (envelope, data)."""
    tables = doc_section("Events").split("| field | what |")[1:]
    envelope, data = (
        {name for row in table.splitlines() if row.startswith("| `")
         for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
        for table in tables
    )  # fmt: skip
    return envelope, data


def run_to_the_end(env: JobsEnv, hooks: Receiver, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Submit, wait for the job's final event; every event received, in arrival order."""
    job_id = env.client.post("/v1/jobs", json={**body, "callback_url": hooks.url}).json()["id"]
    wait_job(env.client, job_id)
    wait_for(lambda: any(orjson.loads(r["body"])["type"] in FINISHED for r in hooks.received))
    return [orjson.loads(r["body"]) for r in hooks.received]


def assert_iso(value: str | None) -> None:
    assert value is not None
    assert datetime.fromisoformat(value).utcoffset() is not None  # ISO 8601 with its zone


def test_every_event_has_one_shape_and_a_jobs_events_arrive_in_order(jobs_env: JobsEnv) -> None:
    with receiver() as hooks:
        body = {"pipeline": "slow-steps", "input": {"slices": 2, "slice_s": 0.01},
                "callback_events": ["job.step"], "metadata": {"album": 7}}  # fmt: skip
        events = run_to_the_end(jobs_env, hooks, body)
        headers = [r["headers"] for r in hooks.received]
    seen = [
        (e["type"], e["data"]["step"] and e["data"]["step"]["name"],
         e["data"]["step"] and e["data"]["step"]["status"])
        for e in events
    ]  # fmt: skip
    assert seen == [
        ("job.step", "slow", "RUNNING"),
        ("job.step", "slow", "COMPLETED"),
        ("job.step", "finish", "RUNNING"),
        ("job.step", "finish", "COMPLETED"),
        ("job.completed", None, None),  # after the last step's end, never before it
    ]
    job = jobs_env.client.get(f"/v1/jobs/{events[0]['data']['id']}").json()
    for event, sent in zip(events, headers, strict=True):
        assert set(event) == ENVELOPE
        assert event["id"] == sent["webhook-id"]  # the same id in the body and the header
        assert_iso(event["timestamp"])
        data = event["data"]
        assert set(data) == JOB_FIELDS  # every field in every event
        assert (data["id"], data["pipeline"], data["metadata"]) == (job["id"], "slow-steps",
                                                                    {"album": 7})  # fmt: skip
        assert_iso(data["created_at"])
        assert_iso(data["started_at"])
        for step in data["steps"]:
            assert step["started_at"] is None or datetime.fromisoformat(step["started_at"])
    envelope, documented = documented_fields()  # docs/7-jobs.md describes them, field by field
    assert envelope == ENVELOPE
    assert documented == JOB_FIELDS | {"model"}
    steps = [e["data"] for e in events[:4]]
    assert [d["status"] for d in steps] == ["PROCESSING"] * 4
    assert [d["step"]["index"] for d in steps] == [0, 0, 1, 1]
    assert steps[1]["steps"][0]["status"] == "COMPLETED"
    assert_iso(steps[1]["step"]["finished_at"])
    assert all(d["result"] is None and d["error"] is None for d in steps)
    done = events[-1]["data"]
    assert (done["status"], done["progress"], done["error"]) == ("COMPLETED", 1.0, None)
    assert done["result"] == job["result"] == {"done": True, "slept": 2, "echo": None}
    assert done["result_in_blob"] is False
    assert_iso(done["finished_at"])
    assert [s["status"] for s in done["steps"]] == [s["status"] for s in job["steps"]]
    assert len({e["id"] for e in events}) == len(events)


def test_a_retried_event_still_comes_before_the_jobs_later_ones(jobs_env: JobsEnv) -> None:
    with receiver(plan=[500, 503]) as hooks:  # the first event fails twice, then succeeds
        body = {"model": "digits", "input": {"instance": [0] * 64},
                "callback_events": ["job.step"]}  # fmt: skip
        events = run_to_the_end(jobs_env, hooks, body)
    statuses = [r["status"] for r in hooks.received]
    assert statuses == [500, 503, 200, 200, 200]
    seen = [(e["type"], e["data"]["step"] and e["data"]["step"]["status"]) for e in events]
    assert seen == [("job.step", "RUNNING")] * 3 + [("job.step", "COMPLETED"),
                                                    ("job.completed", None)]  # fmt: skip
    assert len({e["id"] for e in events[:3]}) == 1  # one event, three attempts


def test_a_failed_job_says_why_in_the_same_shape(jobs_env: JobsEnv) -> None:
    with receiver() as hooks:
        [event] = run_to_the_end(jobs_env, hooks, {"pipeline": "refuses", "input": {}})
    assert set(event) == ENVELOPE
    assert event["type"] == "job.failed"
    assert set(event["data"]) == JOB_FIELDS
    assert event["data"]["status"] == "FAILED"
    assert event["data"]["error"]["code"] == "INPUT_DECODE_FAILED"
    assert event["data"]["error"]["step"] == "refuse"
    assert event["data"]["result"] is None


def test_a_delivery_verifies_with_the_configured_secret(jobs_env: JobsEnv) -> None:
    assert jobs_env.settings.webhook_secret == TEST_SECRET  # what the server signs with
    assert TEST_SECRET.startswith(SECRET_PREFIX)
    with receiver() as hooks:
        run_to_the_end(jobs_env, hooks, {"pipeline": "refuses", "input": {}})
        [received] = hooks.received
    body, headers = received["body"], received["headers"]
    # A Standard Webhooks library, given the secret exactly as configured...
    library = standardwebhooks.Webhook(TEST_SECRET)
    assert library.verify(body, headers)["type"] == "job.failed"
    # ...and modelplex's client accept it; both refuse a tampered body or another secret.
    assert verify_webhook(body, headers, TEST_SECRET) == orjson.loads(body)
    # The documented receiver code, as written in docs/7-jobs.md, runs as it says.
    [code] = re.findall(r"```python\n(.*?)```", doc_section("Verifying a webhook"), re.S)
    scope: dict[str, Any] = {"body": body, "headers": headers, "secret": TEST_SECRET}
    exec(code, scope)
    assert scope["event"] == orjson.loads(body)
    tampered = body.replace(b'"FAILED"', b'"COMPLETED"')
    assert tampered != body
    other_secret = "whsec_" + "A" * 43 + "="
    for payload, secret in ((tampered, TEST_SECRET), (body, other_secret)):
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(secret).verify(payload, headers)
        with pytest.raises(WebhookVerificationError):
            verify_webhook(payload, headers, secret)
