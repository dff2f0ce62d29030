"""A source kind is one module behind the ``Source`` protocol and one line in ``SOURCE_KINDS``: ingest, its cache key
and the model's name follow without a change elsewhere (README, "where a change goes")."""

import numpy as np
import pytest
from ingested import ingest, labels
from toy_source import ToySource

from sslflow.config import IngestConfig
from sslflow.data import sources
from sslflow.data.chunks import plan_chunks
from sslflow.data.sources import fingerprint_source, open_source
from sslflow.registry.names import default_model_name


@pytest.fixture
def toy_kind(monkeypatch):
    monkeypatch.setattr(sources, "SOURCE_KINDS", [ToySource, *sources.SOURCE_KINDS])  # the one registry line


def test_a_toy_source_kind_is_ingested_and_names_its_model(toy_kind):
    assert open_source("toy://6").kind == "toy"
    manifest, pixels, summary = ingest("toy://6", IngestConfig(image_size=8, chunk_images=2))
    assert pixels.shape == (6, 1, 8, 8) and pixels.dtype == np.uint8
    assert sorted(labels(manifest)) == ["0", "0", "0", "1", "1", "1"]
    assert manifest["case_id"].nunique() == 3 and summary["quarantined"] == []
    assert all(chunk["kind"] == "toy" for chunk in plan_chunks("toy://6", IngestConfig(image_size=8)))
    assert fingerprint_source("toy://6") != fingerprint_source("toy://5")
    assert default_model_name("toy://6") == "sslflow-toy-6"


def test_nothing_outside_the_sources_package_tells_the_kinds_apart():
    """Outside sslflow/data/sources/ no module imports a kind's Source class or tests a source's kind: they go
    through the protocol (open_source, named_source and the Source methods)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    kind_classes = {kind.__name__ for kind in sources.SOURCE_KINDS} | {"FolderSource"}
    found = []
    for package in ("sslflow", "tasks", "workflows"):
        for path in sorted((root / package).rglob("*.py")):
            if path.is_relative_to(root / "sslflow" / "data" / "sources"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = {alias.name for alias in node.names} if isinstance(node, ast.ImportFrom) else set()
                attribute = node.attr if isinstance(node, ast.Attribute) else ""
                if names & (kind_classes | {"source_kind"}) or attribute == "kind" and "source" in ast.unparse(node):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not found, f"source kinds told apart outside sslflow/data/sources/: {found}"


def test_an_archive_query_names_its_model_wherever_the_pipeline_runs(tmp_path, monkeypatch):
    """A DICOMweb source's model name comes from its URI, not from the folder the process runs in (it once hashed the
    URI resolved as a local path)."""
    uri = "dicomweb+https://pacs.example/dicom-web?ModalitiesInStudy=CT"
    names = set()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        names.add(default_model_name(uri))
    assert names == {f"sslflow-{sources.source_name(uri)}"}
