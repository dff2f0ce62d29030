"""The services a run needs, checked when it starts: a run whose tracking server, S3 endpoint or archive does not
answer is refused in seconds, naming the service and its URI (never credentials), before any stage.

Each service gets one request without retries and SSLFLOW_SERVICE_TIMEOUT_S seconds (default 5) to answer:
the MLflow tracking server that MLFLOW_TRACKING_URI names (sslflow/tracking/server.py) and the service of each
source (``Source.check_service``: the S3 endpoint of an s3:// source; local files need none). Later in a run,
the same outage (sslflow.errors.ServiceUnavailable) fails a stage as recoverable and Flyte retries it
(tasks/shared.py), since waiting may cure it and the input is not at fault.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

from sslflow.data.sources import open_source
from sslflow.errors import Refusal, ServiceUnavailable
from sslflow.tracking.server import check_tracking_server

TIMEOUT_VARIABLE = "SSLFLOW_SERVICE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 5.0


class UnreachableService(Refusal):
    """A service the run needs did not answer when the run started; the message names each one and its URI."""


def service_timeout_s() -> float:
    """Seconds each service has to answer when the run starts: $SSLFLOW_SERVICE_TIMEOUT_S, else DEFAULT_TIMEOUT_S."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise Refusal(
            f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds above 0: set it to e.g. 5, or unset it for "
            f"{DEFAULT_TIMEOUT_S:g}"
        )
    return seconds


def check_services(sources: Iterable[str] = ()) -> None:
    """Check the tracking server and the service of each source in ``sources`` (URIs as ingest takes them), each with
    one request and service_timeout_s() seconds; UnreachableService naming every one that did not answer."""
    timeout_s = service_timeout_s()
    checks = [check_tracking_server] + [open_source(source).check_service for source in sources]
    silent: list[ServiceUnavailable] = []
    for check in checks:
        try:
            check(timeout_s)
        except ServiceUnavailable as outage:
            silent.append(outage)
    if silent:
        told = " ".join(str(outage) for outage in silent)
        raise UnreachableService(
            f"the run was not started: {told} ({TIMEOUT_VARIABLE} sets the seconds each service has to answer.)"
        ) from silent[0]
