"""A small synchronous Python client for the /v1 API (the CLI is built on it)."""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson

from modelplex import signatures
from modelplex.oauth_client import ClientCredentials, OAuthError, auth_from
from modelplex.signatures import WebhookVerificationError as WebhookVerificationError

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientError(Exception):
    """The server answered with a problem document, or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail


class ModelplexClient:
    def __init__(
        self, url: str = DEFAULT_URL, *, timeout_s: float = 60.0, api_key: str | None = None,
        oauth: ClientCredentials | None = None,
    ) -> None:  # fmt: skip
        """`api_key` or `oauth` (a client-credentials grant) is sent as
        `Authorization: Bearer`; without either, the environment's
        `MODELPLEX_OAUTH_*` or `MODELPLEX_API_KEY` (see `modelplex.oauth_client`)."""
        try:
            auth = auth_from(api_key, oauth)
        except OAuthError as exc:
            raise ClientError(str(exc)) from None
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, auth=auth)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ModelplexClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def list_models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = self._request("GET", "/v1/models")["models"]
        return models

    def get_model(self, model: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/models/{model}")

    def predict(
        self,
        model: str,
        instances: list[Any],
        *,
        version: str | None = None,
        top_k: int | None = None,
        detail: str = "standard",
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"instances": instances}
        if top_k is not None:
            body["parameters"] = {"top_k": top_k}
        return self.predict_body(model, body, version=version, detail=detail)

    def predict_body(
        self,
        model: str,
        body: dict[str, Any],
        *,
        version: str | None = None,
        detail: str = "standard",
    ) -> dict[str, Any]:
        """Predict with a whole /v1 body (`instance` or `instances`, `parameters`)."""
        return self._request(
            "POST",
            _predict_path(model, version),
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json", "X-Response-Detail": detail},
        )

    def predict_files(
        self,
        model: str,
        input_name: str,
        files: list[Path],
        *,
        version: str | None = None,
        top_k: int | None = None,
        detail: str = "standard",
    ) -> dict[str, Any]:
        uploads = [
            (
                input_name,
                (
                    f.name,
                    f.read_bytes(),
                    mimetypes.guess_type(f.name)[0] or "application/octet-stream",
                ),
            )
            for f in files
        ]
        data = {"top_k": str(top_k)} if top_k is not None else None
        return self._request(
            "POST",
            _predict_path(model, version),
            files=uploads,
            data=data,
            headers={"X-Response-Detail": detail},
        )

    def classify(self, image: Path, *, top_k: int = 5, model: str | None = None) -> dict[str, Any]:
        data = {"top_k": str(top_k)}
        if model:
            data["model"] = model
        return self._request(
            "POST",
            "/v1/classify",
            files={"image": (image.name, image.read_bytes(), "application/octet-stream")},
            data=data,
        )

    # -- jobs and batches ------------------------------------------------------
    def submit_job(
        self,
        *,
        model: str | None = None,
        pipeline: str | None = None,
        input: Any = None,
        file: Path | None = None,
        version: str | None = None,
        callback_url: str | None = None,
        callback_events: list[str] | None = None,
        priority: int = 0,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        target = {"model": model} if model else {"pipeline": pipeline}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        fields: dict[str, Any] = {
            "version": version, "callback_url": callback_url,
            "callback_events": callback_events or None, "metadata": metadata,
        }  # fmt: skip
        given = {name: value for name, value in fields.items() if value is not None}
        if file is not None:  # the form carries the JSON body's fields as text
            data = {**target, "priority": str(priority)}
            for name, value in given.items():
                data[name] = (
                    ",".join(value) if name == "callback_events"
                    else orjson.dumps(value).decode() if name == "metadata"
                    else value
                )  # fmt: skip
            return self._request(
                "POST", "/v1/jobs", files={"file": (file.name, file.read_bytes())}, data=data,
                headers=headers,
            )  # fmt: skip
        body: dict[str, Any] = {**target, "input": input, "priority": priority, **given}
        return self._request("POST", "/v1/jobs", json=body, headers=headers)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}")

    def list_jobs(
        self, *, status: str | None = None, model: str | None = None, limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        params = {"status": status, "model": model, "limit": limit, "cursor": cursor}
        return self._request("GET", "/v1/jobs", params={k: v for k, v in params.items() if v})

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel")

    def job_result(self, job_id: str) -> Any:
        return self._send("GET", f"/v1/jobs/{job_id}/result").json()

    def download_result(self, job_id: str, target: Path) -> int:
        """Write a completed job's result, as the server sends it, to `target`
        (streamed: a result in the blob store can be large); the bytes written.
        `target` appears whole or not at all."""
        partial = target.with_name(f".{target.name}.part")
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/result") as response:
                if response.is_error:
                    response.read()
                    self._raise(response)
                written = 0
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        written += out.write(chunk)
            partial.replace(target)
            return written
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach {self._http.base_url}: {exc}") from exc
        except OAuthError as exc:
            raise ClientError(f"cannot obtain an access token: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)

    def submit_batch(
        self, file: Path, *, model: str | None = None, pipeline: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        data = {"model": model} if model else {"pipeline": pipeline or ""}
        if options:
            data["options"] = orjson.dumps(options).decode()
        files = {"file": (file.name, file.read_bytes(), "application/jsonl")}
        return self._request("POST", "/v1/batches", files=files, data=data)

    def list_batches(
        self, *, status: str | None = None, model: str | None = None, limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        params = {"status": status, "model": model, "limit": limit, "cursor": cursor}
        return self._request("GET", "/v1/batches", params={k: v for k, v in params.items() if v})

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/batches/{batch_id}")

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/batches/{batch_id}/cancel")

    def batch_lines(self, batch_id: str, *, errors: bool = False) -> list[dict[str, Any]]:
        kind = "errors" if errors else "results"
        response = self._send("GET", f"/v1/batches/{batch_id}/{kind}")
        return [orjson.loads(line) for line in response.content.splitlines() if line.strip()]

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach {self._http.base_url}: {exc}") from exc
        except OAuthError as exc:
            raise ClientError(f"cannot obtain an access token: {exc}") from exc
        if response.is_error:
            self._raise(response)
        return response

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            document = self._send(method, path, **kwargs).json()
        except ValueError:
            raise ClientError("the server's answer is not JSON") from None
        if not isinstance(document, dict):
            raise ClientError("the server's answer is not a JSON object")
        return document

    @staticmethod
    def _raise(response: httpx.Response) -> None:
        try:
            document = response.json()
        except ValueError:
            document = None
        if isinstance(document, dict) and "code" in document:
            detail = str(document.get("detail", ""))
            raise ClientError(
                f"{document['code']}: {detail}",
                status=response.status_code,
                code=str(document["code"]),
                detail=detail,
            )
        raise ClientError(f"HTTP {response.status_code}", status=response.status_code)


def _predict_path(model: str, version: str | None) -> str:
    if version is None:
        return f"/v1/models/{model}/predict"
    return f"/v1/models/{model}/versions/{version}/predict"


def verify_webhook(
    payload: bytes, headers: Mapping[str, str], secret: str, *,
    tolerance_s: int = signatures.TOLERANCE_S,
) -> dict[str, Any]:  # fmt: skip
    """The event of a modelplex webhook, after checking its Standard Webhooks
    signature with `secret` (the server's `webhook_secret`, `whsec_...`) and that its
    timestamp is within `tolerance_s` of now. Pass the body exactly as received
    and the request's headers (any mapping; names in any case).

    Raises WebhookVerificationError if the signature or timestamp is wrong, and
    ValueError if `secret` is not a `whsec_<base64>` secret."""
    return signatures.verify(payload, headers, secret, tolerance_s=tolerance_s)
