"""A tracking server that does not answer: one clear error naming the URI, after MLflow's bounded retries.

MLflow retries each request with backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7, and
MLFLOW_HTTP_REQUEST_TIMEOUT seconds per try, default 120); then the stage fails with
``TrackingServerUnavailable``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import requests
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException

from sslflow.tracking.store import tracking_uri


class TrackingServerUnavailable(RuntimeError):
    """The MLflow tracking server did not answer, after MLflow's bounded retries."""


def is_unreachable(error: BaseException) -> bool:
    """True for a failed HTTP exchange with the server (refused, reset, timed out, retries used up), not for an API error."""
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
            f"MLflow tracking server {tracking_uri()} did not answer after {MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()} retries "
            f"(MLFLOW_HTTP_REQUEST_MAX_RETRIES; MLFLOW_HTTP_REQUEST_TIMEOUT={MLFLOW_HTTP_REQUEST_TIMEOUT.get()} s per try). "
            "Check that the server is running and reachable from here, or point MLFLOW_TRACKING_URI at one that is. "
            f"Last error: {error}"
        ) from error
