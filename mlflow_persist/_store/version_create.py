"""Part of the MLflow adapter (store.py): creating a model version on a tracking server without ever creating
it twice.

MLflow's HTTP client retries a POST whose reply was lost (a dropped connection, a 502 from a proxy), and the
server, having done the work the first time, creates a second version. MLflow's create has no idempotency
key, so the only safe retry is one that first looks: here the create goes out with HTTP retries off, and
after a transient failure the registry is searched for the source before the request is sent again.

What remains is a reply that is lost after the search too (the server still working on the first request
when it answered the search); `MlflowStore.register_version` removes such a late duplicate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.model_registry_pb2 import CreateModelVersion
from mlflow.store.model_registry.rest_store import RestStore
from mlflow.utils.proto_json_utils import message_to_json, parse_dict
from mlflow.utils.rest_utils import http_request, verify_rest_response
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

__all__ = ["MAYBE_DONE_STATUSES", "T", "create_version_once", "may_have_been_done", "rest_store_of"]

T = TypeVar("T")
#: HTTP statuses after which the request may have been carried out (or may succeed when sent again).
MAYBE_DONE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def rest_store_of(client: Any) -> RestStore | None:
    """The REST model-registry store behind a registry client (or an `MlflowClient`), or None (a database or
    file store)."""
    try:
        store = client.store if hasattr(client, "store") else client._get_registry_client().store
    except (AttributeError, MlflowException):
        return None
    return store if isinstance(store, RestStore) else None


def may_have_been_done(exc: BaseException) -> bool:
    """Whether a failed create may have been carried out by the server, or may work when sent again: anything
    but the server's own refusal (a 4xx other than 408/429: bad name, permission, no such model)."""
    if isinstance(exc, RestException):
        return exc.get_http_status_code() in MAYBE_DONE_STATUSES
    return True


def create_version_once(
    store: RestStore,
    name: str,
    source: str,
    run_id: str | None,
    tags: Mapping[str, str],
    description: str | None,
    find_existing: Callable[[], T | None],
    attempts: int | None = None,
    backoff_s: float | None = None,
) -> ModelVersion | T:
    """Create the version with HTTP retries off; after a failure that may have been carried out, return what
    `find_existing()` finds, else send the request again (`attempts` in all, MLflow's retry count plus one by
    default, with its exponential backoff). Raises the last failure."""
    attempts = max(1, attempts if attempts is not None else MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() + 1)
    backoff_s = backoff_s if backoff_s is not None else float(MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get())
    body = json.loads(
        message_to_json(
            CreateModelVersion(
                name=name,
                source=source,
                run_id=run_id,
                description=description,
                tags=[ModelVersionTag(key, value).to_proto() for key, value in tags.items()],
            )
        )
    )
    endpoint, method = store._get_endpoint_from_method(CreateModelVersion)
    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=backoff_s),
        retry=retry_if_exception(may_have_been_done),
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                existing = find_existing()  # the server may have created it before the reply was lost
                if existing is not None:
                    return existing
            response = http_request(store.get_host_creds(), endpoint, method, max_retries=0, json=body)
            response = verify_rest_response(response, endpoint)
            proto = parse_dict(js_dict=json.loads(response.text), message=CreateModelVersion.Response())
            return ModelVersion.from_proto(proto.model_version)
    raise AssertionError("unreachable")  # pragma: no cover - tenacity returns or re-raises
