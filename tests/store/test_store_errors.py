"""The one sentence a store failure becomes: it names the part that failed and what to check, for real
exceptions of the S3 client and of MLflow's HTTP client against a server that keeps failing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlflow_persist._store.mlflow_store import translate
from mlflow_persist.errors import StoreError, StoreUnavailableError


class _AlwaysFailing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def failing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysFailing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_keeps_answering_500_is_named_as_such(failing_server: str) -> None:
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    with pytest.raises(Exception) as raised:
        http_request(
            MlflowHostCreds(failing_server), "/api/2.0/mlflow/experiments/get", "GET", max_retries=1, backoff_factor=0
        )
    error = translate(raised.value, "upload the checkpoint")
    assert isinstance(error, StoreUnavailableError)
    assert "the tracking server kept answering HTTP 500" in str(error)
    assert "check the tracking server's log" in str(error)
    assert "connection refused" not in str(error)


def test_an_unreachable_object_store_points_at_the_s3_settings() -> None:
    botocore = pytest.importorskip("botocore.exceptions")
    error = translate(
        botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket"), "upload the checkpoint"
    )
    assert isinstance(error, StoreUnavailableError)
    assert "the object store failed (EndpointConnectionError" in str(error)
    assert "MLFLOW_S3_ENDPOINT_URL" in str(error)
    assert "tracking URI" not in str(error)
    denied = translate(
        botocore.ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject"),
        "upload the checkpoint",
    )
    assert isinstance(denied, StoreError) and "AccessDenied" in str(denied)
