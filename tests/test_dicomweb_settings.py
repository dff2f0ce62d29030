"""DICOMweb source settings that need no archive: the query a URI may hold, credentials and the Flyte Secrets that
carry them, how error answers and a misbehaving archive are refused, multipart answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from sslflow.data.sources import dicomweb, dicomweb_http, fingerprint_source, open_source
from sslflow.data.sources.dicomweb_http import PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV, archive_errors, archive_session
from sslflow.data.types import SourceError
from sslflow.services import UnreachableService, check_services

ROOT = Path(__file__).resolve().parents[1]


def test_the_query_is_split_by_level_and_may_hold_no_identifier():
    query = open_source(
        "dicomweb+https://pacs.example.org:8443/dicom-web/?ModalitiesInStudy=CT&StudyDate=20240101-20241231&00180015=CHEST"
    ).query
    assert query.base_url == "https://pacs.example.org:8443/dicom-web"
    assert query.study_filters == {
        "ModalitiesInStudy": "CT",
        "StudyDate": "20240101-20241231",
    } and query.series_filters == {"BodyPartExamined": "CHEST"}
    for attribute in ("PatientName=Doe*", "AccessionNumber=A1", "SOPInstanceUID=1.2.3", "00100020=PID-1"):
        with pytest.raises(
            SourceError,
            match=r"source dicomweb\+https://pacs.example.org/dicom-web: the query selects by \w+, an identifier",
        ) as refused:
            open_source(f"dicomweb+https://pacs.example.org/dicom-web?{attribute}")
        assert attribute.split("=")[1] not in str(refused.value)
    for uri, problem in [
        ("dicomweb+https://pacs/dicom-web?Modality=CT&limit=10", "limit is set by ingest"),
        ("dicomweb+https://pacs/dicom-web?Modalty=CT", "'Modalty' is not a DICOM attribute keyword"),
        ("dicomweb+https://pacs/dicom-web?Modality=CT&Modality=MR", "Modality is given twice; give one value"),
        ("dicomweb+https://reader:secret@pacs/dicom-web", "credentials in the URI would be logged"),
    ]:
        with pytest.raises(SourceError, match=problem):
            open_source(uri)


def test_a_bearer_token_is_sent_as_a_header_and_basic_credentials_as_auth(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "a-token-from-the-secret")
    monkeypatch.delenv(USERNAME_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    session = archive_session("https://pacs.example.org/dicom-web")
    assert session.headers["Authorization"] == "Bearer a-token-from-the-secret" and session.auth is None
    monkeypatch.delenv(TOKEN_ENV)
    monkeypatch.setenv(USERNAME_ENV, "reader")
    with pytest.raises(SourceError, match=f"{USERNAME_ENV} and {PASSWORD_ENV} go together"):
        archive_session("https://pacs.example.org/dicom-web")
    monkeypatch.setenv(PASSWORD_ENV, "secret")
    assert archive_session("https://pacs.example.org/dicom-web").auth == ("reader", "secret")


def test_registered_with_dicomweb_auth_the_ingest_tasks_request_its_flyte_secrets():
    script = (
        "import tasks.ingest as t; print(sorted((s.group, s.key, s.env_var) "
        "for task in (t.plan_ingest, t.ingest_chunk) for s in task.security_context.secrets))"
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "SSLFLOW_DICOMWEB_AUTH": "basic"}
    printed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert printed.strip().splitlines()[-1] == str(
        sorted(
            [("sslflow-dicomweb", "password", PASSWORD_ENV), ("sslflow-dicomweb", "username", USERNAME_ENV)] * 2
            + [("sslflow", "pseudonym_key", None)] * 2  # the plan pseudonymises a metadata.csv's UIDs too
        )
    )


def test_a_wado_rs_answer_is_split_into_its_parts():
    body = b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + b"DICM\r\n--not-b1" + b"\r\n--b1--\r\n"
    assert dicomweb_http._parts(body, 'multipart/related; type="application/dicom"; boundary=b1') == [
        b"DICM\r\n--not-b1"
    ]
    assert dicomweb_http._parts(b"bare", "application/dicom") == [b"bare"]  # some archives send the one part bare


def test_403_and_an_unreachable_archive_are_refused_by_name(monkeypatch):
    answer = requests.Response()
    answer.status_code = 403
    with pytest.raises(
        SourceError,
        match=r"archive https://pacs.example.org/dicom-web, retrieving: the archive refuses these credentials",
    ):
        with archive_errors("https://pacs.example.org/dicom-web", "retrieving"):
            answer.raise_for_status()
    monkeypatch.setattr(dicomweb_http, "RETRIES", 1)  # a refused connection is retried too: once is enough here
    with pytest.raises(
        dicomweb_http.ArchiveUnavailable, match=r"cannot be reached \(ConnectionError\)"
    ):  # an outage, not bad input
        fingerprint_source("dicomweb+http://127.0.0.1:9/dicom-web?Modality=CT")  # port 9 (discard): nothing listens


def test_an_archive_that_does_not_answer_is_named_before_the_run_starts():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(
            UnreachableService, match=rf"the DICOMweb archive http://127.0.0.1:{closed}/dicom-web did not answer within"
        ):
            check_services([f"dicomweb+http://127.0.0.1:{closed}/dicom-web?ModalitiesInStudy=CT"])


def test_an_archive_that_ignores_offset_is_refused_not_listed_forever():
    page = [{"0020000D": {"vr": "UI", "Value": [f"1.2.{index}"]}} for index in range(dicomweb.PAGE_SIZE)]
    with pytest.raises(
        SourceError, match=r"archive https://pacs/dicom-web, searching: the archive ignores the offset parameter"
    ):
        list(dicomweb._paged(lambda limit, offset: page, "https://pacs/dicom-web", "searching"))
