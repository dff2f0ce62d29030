"""What runs where `pyflyte run --remote` is launched: the workflows compiled and serialized, the inputs turned into
literals. None of it lists or fingerprints a source: the launching process sends no request to the S3 endpoint and
needs no bucket credentials; the fingerprint is the first task of the run (tasks/ingest.py: source_fingerprint).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from flytekit import FlyteContextManager
from flytekit.configuration import Image, ImageConfig, SerializationSettings
from flytekit.core.type_engine import TypeEngine
from flytekit.tools.translator import get_serializable

from tasks.ingest import plan_ingest, source_fingerprint
from workflows.data import validate_data
from workflows.ingest import ingest
from workflows.launch_plans import scheduled_pipeline, ssl_pipeline_multinode
from workflows.pipeline import ssl_pipeline

S3_SOURCES = {
    "generic_source": "s3://hospital/generic",
    "domain_source": "s3://hospital/domain",
    "shift_source": "s3://hospital/shift",
}


@pytest.fixture
def counting_s3_endpoint(monkeypatch) -> Iterator[list[str]]:
    """An S3 endpoint (AWS_ENDPOINT_URL) that records every request it gets and answers each with a 500; no AWS
    credentials anywhere in the environment."""
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _record(self) -> None:
            requests.append(f"{self.command} {self.path}")
            self.send_response(500)
            self.end_headers()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _record

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield requests
    finally:
        server.shutdown()
        server.server_close()


def _launch_literals(workflow, values: dict) -> None:
    """What `pyflyte run --remote` does with a workflow's inputs before it sends the execution: each to a literal."""
    context = FlyteContextManager.current_context()
    for name, value in values.items():
        python_type = workflow.python_interface.inputs[name]
        TypeEngine.to_literal(context, value, python_type, TypeEngine.to_literal_type(python_type))


def test_launching_on_s3_sources_sends_no_request_and_needs_no_credentials(counting_s3_endpoint):
    settings = SerializationSettings(
        image_config=ImageConfig(default_image=Image(name="default", fqn="registry.example.com/sslflow", tag="0"))
    )
    for workflow in (ssl_pipeline, validate_data, scheduled_pipeline, ssl_pipeline_multinode):
        get_serializable({}, settings, workflow)  # registration: the workflow, its tasks and its default inputs
    _launch_literals(ssl_pipeline, S3_SOURCES)
    _launch_literals(scheduled_pipeline, S3_SOURCES)
    _launch_literals(validate_data, {"source": "s3://hospital/scans"})
    assert counting_s3_endpoint == []


def test_the_fingerprint_is_an_uncached_task_whose_output_keys_the_cached_plan():
    assert not source_fingerprint.metadata.cache and plan_ingest.metadata.cache
    assert "fingerprint" in plan_ingest.python_interface.inputs
    plan = next(node for node in ingest.nodes if node.flyte_entity is plan_ingest)
    assert {b.var: b.binding.promise.var for b in plan.bindings if b.binding.promise is not None}[
        "fingerprint"
    ] == "fingerprint"
    for workflow, sources in ((ssl_pipeline, len(S3_SOURCES)), (validate_data, 1)):
        fingerprints = {node.id for node in workflow.nodes if node.flyte_entity is source_fingerprint}
        assert len(fingerprints) == sources
        for node in workflow.nodes:
            if node.flyte_entity is ingest:  # each ingest gets the fingerprint of its own source, from the task
                promise = next(b.binding.promise for b in node.bindings if b.var == "fingerprint")
                assert promise.node_id in fingerprints and promise.var == "o0"
