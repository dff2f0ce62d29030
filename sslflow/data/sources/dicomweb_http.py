"""How sslflow talks to a DICOMweb archive: credentials, TLS, retries, and what an error answer means.

One ``requests`` session per archive and process, used by dicomweb-client for QIDO-RS and for WADO-RS:
- **Credentials** from the environment (a Flyte Secret mounted as these variables on a cluster: docs/data.md),
  never from the URL: ``SSLFLOW_DICOMWEB_TOKEN`` (an OAuth bearer token), or ``SSLFLOW_DICOMWEB_USERNAME`` +
  ``SSLFLOW_DICOMWEB_PASSWORD`` (HTTP basic). They are sent only over https, or http to a loopback address, and
  never appear in a message or a log.
- **TLS** is always verified: against ``SSLFLOW_DICOMWEB_CA_BUNDLE`` (a PEM file: a hospital's own CA) when set,
  whatever REQUESTS_CA_BUNDLE says, else as requests verifies (REQUESTS_CA_BUNDLE, else certifi's bundle).
- **Retries**: urllib3's ``Retry`` on connection errors and on 429, 500, 502, 503, 504, with exponential backoff (at
  once, then 0.5 s, 1 s, 2 s, ... at most BACKOFF_MAX_S) and the server's ``Retry-After`` honoured on 429 and 503,
  RETRIES times; dicomweb-client's own retrying is turned off so that it does not multiply them. One request at a time
  per process: the load on the archive is one request per ingest chunk running (docs/data.md).
- **Answers that stop ingest** (SourceError): 401 (no or wrong credentials), 403 (not allowed), 404 (no DICOMweb
  service at that URL, or the instance is gone), any other error status once the retries are spent, an unreachable
  host. Messages name the archive's base URL and what was being done, never a UID: a URL naming a study, series or
  instance identifies a person (its path is logged by urllib3's retry warning: that warning is filtered out here).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from sslflow.data.types import SourceError
from sslflow.errors import ServiceUnavailable

TOKEN_ENV, USERNAME_ENV, PASSWORD_ENV, CA_BUNDLE_ENV = (
    "SSLFLOW_DICOMWEB_TOKEN",
    "SSLFLOW_DICOMWEB_USERNAME",
    "SSLFLOW_DICOMWEB_PASSWORD",
    "SSLFLOW_DICOMWEB_CA_BUNDLE",
)
RETRIES = 8
BACKOFF_FACTOR_S = (
    0.25  # waits 0, 0.5, 1, 2, 4, ... s before the retries (urllib3: factor x 2^(errors - 1), none after the first)
)
BACKOFF_MAX_S = 30
RETRY_STATUSES = (429, 500, 502, 503, 504)
TIMEOUT_S = (10, 120)  # connect, read
INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'  # as stored: no transcoding
REFUSALS = {
    401: (
        f"the archive asks for credentials, or refused the ones given: set {TOKEN_ENV}, or {USERNAME_ENV} and "
        f"{PASSWORD_ENV}"
    ),
    403: (
        "the archive refuses these credentials access to it: ask its administrator for read (QIDO-RS and WADO-RS) "
        "access"
    ),
    404: (
        "not found: no DICOMweb service at this URL (is the path, e.g. /dicom-web, right?) or the instance was "
        "deleted since ingest listed it"
    ),
}


class _NoUrlsInRetryWarnings(logging.Filter):
    """Drops urllib3's "Retrying ... after connection broken ...: <url>" warnings: the URL names a study and
    instance."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Retrying")


logging.getLogger("urllib3.connectionpool").addFilter(_NoUrlsInRetryWarnings())
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its INFO messages quote UIDs


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _credentials(base_url: str) -> dict:
    """The session settings for the credentials in the environment ({} for none); SourceError for both kinds at once
    or credentials that would cross a network in clear text."""
    token, username, password = (os.environ.get(name, "").strip() for name in (TOKEN_ENV, USERNAME_ENV, PASSWORD_ENV))
    if token and (username or password):
        raise SourceError(
            f"both {TOKEN_ENV} and {USERNAME_ENV}/{PASSWORD_ENV} are set: set one kind of DICOMweb credentials"
        )
    if bool(username) != bool(password):
        raise SourceError(f"{USERNAME_ENV} and {PASSWORD_ENV} go together: set both, or neither")
    parts = urlsplit(base_url)
    if (token or username) and parts.scheme != "https" and not _is_loopback(parts.hostname or ""):
        raise SourceError(
            f"{base_url}: credentials are sent only over https (or to a loopback address); use dicomweb+https://"
        )
    if token:
        return {"headers": {"Authorization": f"Bearer {token}"}}
    return {"auth": (username, password)} if username else {}


class _VerifyingAdapter(HTTPAdapter):
    """An HTTPAdapter that verifies TLS against the CA bundle at ``verify`` whatever a request asks: requests lets
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's own setting."""

    def __init__(self, verify: str, retry: Retry):
        super().__init__(max_retries=retry)
        self.verify = verify

    def send(self, request, **options):
        return super().send(request, **{**options, "verify": self.verify})


SERVICE = "DICOMweb archive"


class ArchiveUnavailable(ServiceUnavailable):
    """The archive did not answer (no connection, a timeout, a server error after the retries): an outage, not bad
    input."""


def archive_session(base_url: str) -> requests.Session:
    """A session for the archive at ``base_url``: credentials, TLS verification, retries (module docstring)."""
    session = requests.Session()
    settings = _credentials(base_url)
    session.headers.update(settings.get("headers", {}))
    session.auth = settings.get("auth")
    bundle = os.environ.get(CA_BUNDLE_ENV)
    if bundle and not os.path.isfile(bundle):
        raise SourceError(
            f"{CA_BUNDLE_ENV}={bundle}: no such file; give the PEM file of the CA that signed the archive's certificate"
        )
    retry = Retry(
        total=RETRIES,
        other=0,
        backoff_factor=BACKOFF_FACTOR_S,
        backoff_max=BACKOFF_MAX_S,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )  # other=0: a TLS certificate that cannot be verified fails at once, not after a minute of retries
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", _VerifyingAdapter(bundle, retry) if bundle else HTTPAdapter(max_retries=retry))
    return session


def check_archive(base_url: str, timeout_s: float) -> None:
    """One QIDO-RS study search (limit 1) with ``timeout_s`` seconds and no retry: ArchiveUnavailable when the archive
    does not answer; any answer, an error too (401, 403, 404: ingest refuses those with their fix), shows it is up.
    No credentials are sent: whether the archive answers is all this asks."""
    try:
        requests.get(
            f"{base_url}/studies", params={"limit": 1}, timeout=timeout_s, verify=os.environ.get(CA_BUNDLE_ENV) or True
        )
    except requests.RequestException as error:
        raise ArchiveUnavailable(
            f"the {SERVICE} {base_url} did not answer within {timeout_s:g} s ({type(error).__name__}); check that it "
            "is running and reachable from here",
            service=SERVICE,
            uri=base_url,
        ) from None


def archive_client(base_url: str, session: requests.Session) -> DICOMwebClient:
    """A dicomweb-client client on ``session`` (archive_session), without its own retries (the session's honour
    Retry-After)."""
    client = DICOMwebClient(url=base_url, session=session, timeout=TIMEOUT_S)
    client.set_http_retry_params(retry=False)
    return client


@contextmanager
def archive_errors(base_url: str, what: str) -> Iterator[None]:
    """Turn what requests raises into a SourceError naming the archive and ``what`` was done (never a URL with a
    UID)."""
    try:
        yield
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else 0
        if status in RETRY_STATUSES:
            raise ArchiveUnavailable(
                f"DICOMweb archive {base_url}, {what}: HTTP {status} after {RETRIES} retries; try again later",
                service=SERVICE,
                uri=base_url,
            ) from None
        raise SourceError(f"DICOMweb archive {base_url}, {what}: {REFUSALS.get(status, f'HTTP {status}')}") from None
    except requests.exceptions.SSLError as error:
        raise SourceError(
            f"DICOMweb archive {base_url}, {what}: its TLS certificate cannot be verified ({type(error).__name__}); "
            f"set {CA_BUNDLE_ENV} to the PEM file of the CA that signed it"
        ) from None
    except requests.RequestException as error:
        raise ArchiveUnavailable(
            f"DICOMweb archive {base_url}, {what}: cannot be reached ({type(error).__name__}) after {RETRIES} "
            "retries; check that it is running and reachable from here",
            service=SERVICE,
            uri=base_url,
        ) from None


def _parts(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a multipart/related body (RFC 2046): each part's content after its blank line."""
    boundary = next(
        (
            item.split("=", 1)[1].strip().strip('"')
            for item in content_type.split(";")
            if item.strip().lower().startswith("boundary=")
        ),
        "",
    )
    if not content_type.lower().startswith("multipart/related") or not boundary:
        return [body]  # a single part sent bare (some archives do)
    parts = []
    for segment in (b"\r\n" + body).split(b"\r\n--" + boundary.encode())[1:]:  # the first delimiter may open the body
        if segment.startswith(b"--"):  # the close delimiter
            break
        header_end = segment.find(b"\r\n\r\n")
        parts.append(segment[header_end + 4 :] if header_end >= 0 else b"")
    return parts


def retrieve_instance_bytes(session: requests.Session, base_url: str, uids: tuple[str, str, str], what: str) -> bytes:
    """The bytes of one instance as the archive stores it (WADO-RS, transfer-syntax=*: a DICOM Part 10 file),
    uids: (study, series, instance). SourceError (archive_errors) for an error answer or not exactly one part."""
    study, series, instance = uids
    with archive_errors(base_url, what):
        response = session.get(
            f"{base_url}/studies/{study}/series/{series}/instances/{instance}",
            headers={"Accept": INSTANCE_ACCEPT},
            timeout=TIMEOUT_S,
        )
        response.raise_for_status()
    parts = _parts(response.content, response.headers.get("Content-Type", ""))
    if len(parts) != 1:
        raise SourceError(
            f"DICOMweb archive {base_url}, {what}: WADO-RS answered {len(parts)} parts for one instance; expected one"
        )
    return parts[0]
