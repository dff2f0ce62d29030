"""metadata.csv joined with a listing on disk (sslflow/data/metadata_catalog.py, the S3 plan's): the same rows, order
and refusals as the in-memory rules of sslflow/data/metadata.py, read a few rows at a time."""

from __future__ import annotations

import pandas as pd
import pytest

from sslflow.data import metadata_catalog
from sslflow.data.metadata import in_case_order, metadata_rows, parse_metadata_csv
from sslflow.data.metadata_catalog import MetadataCatalog
from sslflow.data.types import SourceError

WHERE = "s3://scans/site-a/metadata.csv"


def _catalog(tmp_path, text: str) -> MetadataCatalog:
    (tmp_path / "metadata.csv").write_text(text)
    return MetadataCatalog.from_csv(tmp_path / "metadata.csv", WHERE)


def test_rows_come_in_the_in_memory_case_order_with_their_objects(tmp_path, monkeypatch):
    monkeypatch.setattr(metadata_catalog, "ROW_BATCH", 3)  # several batches
    text = "path,case_id,site,label\nb.png,p2,,1\na.png,,,0\nc.png,p1,x,1.0\nd.png,p2,,\né.png,,,2\nz/a.png,p1,,0\n"
    catalog = _catalog(tmp_path, text)
    paths = ["a.png", "b.png", "c.png", "d.png", "é.png", "z/a.png", "unlisted.png"]
    catalog.add_objects((path, f"site-a/{path}", index, f'"{index}"') for index, path in enumerate(paths))
    expected = in_case_order(metadata_rows(parse_metadata_csv(text.encode(), WHERE), WHERE, first_row=2))
    found = list(catalog.rows_in_case_order())
    assert [(position, row) for position, row, _ in found] == expected
    assert [item for _, _, item in found] == [
        (f"site-a/{row['path']}", paths.index(row["path"]), f'"{paths.index(row["path"])}"') for _, row in expected
    ]
    assert catalog.missing() == ([], 0) and list(catalog.unlisted()) == ["unlisted.png"]
    catalog.close()


def test_missing_objects_are_counted_and_the_first_named_in_row_order(tmp_path):
    catalog = _catalog(tmp_path, "path\n" + "".join(f"img{index}.png\n" for index in range(8)))
    catalog.add_objects([("img3.png", "k", 1, "e")])
    first, count = catalog.missing()
    assert count == 7 and [row["path"] for row in first] == ["img0.png", "img1.png", "img2.png", "img4.png", "img5.png"]
    assert first[0]["where"] == f"{WHERE} row 2, column 'path'"


@pytest.mark.parametrize(
    "text, message",
    [
        ("path\nimg0.png\nimg1.png\nimg0.png\n", r"row 4, column 'path': 'img0.png' is listed twice \(also row 2\)"),
        (
            "path\n../out.png\nok.png\n/abs.png\n",
            r"row 2, column 'path': '../out.png' contains '..'.*2 rows of .* fail",
        ),
        ("file,case_id\na.png,1\n", r"missing required column 'path' \(columns found: \['file', 'case_id'\]\)"),
        ("file,case_id\n", r"missing required column 'path'"),
        ("", r"not parseable as CSV \(EmptyDataError"),
    ],
)
def test_bad_rows_are_refused_as_the_in_memory_rules_refuse_them(tmp_path, text, message):
    with pytest.raises(SourceError, match=message):
        _catalog(tmp_path, text)
    if text:
        with pytest.raises(SourceError, match=message):
            metadata_rows(pd.read_csv(tmp_path / "metadata.csv", dtype=str, keep_default_na=False), WHERE, first_row=2)
