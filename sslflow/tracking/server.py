"""A tracking server that does not answer: one clear error naming the URI.

When the run starts, ``check_tracking_server`` sends one request without retries and waits a few seconds
(sslflow/services.py refuses the run if it gets no answer). During a run MLflow retries each request with
backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7, and MLFLOW_HTTP_REQUEST_TIMEOUT seconds per try,
default 120); then the stage fails with ``TrackingServerUnavailable``, an outage its task retries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import requests
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from sslflow.errors import ServiceUnavailable
from sslflow.tracking.store import EXPERIMENT_NAME, tracking_uri

SERVICE = "MLflow tracking server"
WHAT_TO_DO = "Check that the server is running and reachable from here, or point MLFLOW_TRACKING_URI at one that is."


class TrackingServerUnavailable(ServiceUnavailable):
    """The MLflow tracking server did not answer."""


def is_unreachable(error: BaseException) -> bool:
    """True for a failed HTTP exchange with the server (refused, reset, timed out, retries used up), not for an API
    error."""
    if isinstance(error, requests.exceptions.RequestException):
        return True
    if isinstance(error, MlflowException) and str(error.message).startswith("API request to"):
        cause = error.__cause__ or error.__context__
        return isinstance(cause, requests.exceptions.RequestException) or "Max retries exceeded" in error.message
    return False


@contextmanager
def explain_unreachable_server() -> Iterator[None]:
    """Turn MLflow's connection errors into one TrackingServerUnavailable that names the URI and what to do."""
    try:
        yield
    except Exception as error:
        if isinstance(error, TrackingServerUnavailable) or not is_unreachable(error):
            raise
        raise TrackingServerUnavailable(
            f"{SERVICE} {tracking_uri()} did not answer after {MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()} retries "
            f"(MLFLOW_HTTP_REQUEST_MAX_RETRIES; MLFLOW_HTTP_REQUEST_TIMEOUT={MLFLOW_HTTP_REQUEST_TIMEOUT.get()} s "
            "per try). "
            f"{WHAT_TO_DO} Last error: {error}",
            service=SERVICE,
            uri=tracking_uri(),
        ) from error


def check_tracking_server(timeout_s: float) -> None:
    """One request, no retry, to the tracking server MLFLOW_TRACKING_URI names (nothing to check for the embedded
    sqlite store or another local store): TrackingServerUnavailable naming its URI (without credentials) when it
    does not answer within ``timeout_s`` seconds. Any HTTP answer, an error status too, means the server is there."""
    if not os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
        return
    uri = tracking_uri()  # credentials moved out of the URI into MLflow's variables
    request = {
        "max_retries": 0,
        "backoff_factor": 0,
        "timeout": timeout_s,
        "raise_on_status": False,
        "params": {"experiment_name": EXPERIMENT_NAME},
    }
    try:
        http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/get-by-name", "GET", **request)
    except Exception as error:
        if not is_unreachable(error):
            raise
        raise TrackingServerUnavailable(
            f"{SERVICE} {uri} did not answer within {timeout_s:g} s. {WHAT_TO_DO}", service=SERVICE, uri=uri
        ) from error
