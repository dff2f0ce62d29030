"""Bad input stops ingest with a message naming the file, row or column; the input's bytes never change."""

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ingested import image_keys, ingest
from PIL import Image

from sslflow.config import IngestConfig
from sslflow.data.chunks import ingest_source
from sslflow.data.manifest import MANIFEST_COLUMNS
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.types import SourceError, UndecodableImageError

CONFIG = IngestConfig(image_size=16)


def folder_digest(*roots: Path) -> str:
    """sha256 over every file's relative name, bytes and symlink target under the roots."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*")):
            digest.update(str(path.relative_to(root)).encode())
            if path.is_symlink():
                digest.update(str(path.readlink()).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _png(seed: int, size=(24, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buffer, format="JPEG"
    )
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's signature."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _good_folder(root: Path, count: int = 4) -> None:
    root.mkdir(exist_ok=True)
    for i in range(count):
        (root / f"img{i}.png").write_bytes(_png(i))


def _with_metadata(root: Path, text: str) -> None:
    _good_folder(root)
    (root / "metadata.csv").write_text(text)


# Each case builds a folder under tmp_path (and maybe beside it) and names the error it must raise.
def truncated_png(root):
    _good_folder(root)
    data = _png(99, size=(64, 64))
    (root / "truncated.png").write_bytes(data[: len(data) // 2])


def truncated_jpeg(root):
    _good_folder(root)
    data = _jpeg(7)
    (root / "cut.jpg").write_bytes(data[: len(data) // 2])


def zero_byte_file(root):
    _good_folder(root)
    (root / "empty.png").write_bytes(b"")


def text_named_png(root):
    _good_folder(root)
    (root / "notes.png").write_text("patient notes, not an image\n")


def html_named_jpg(root):
    _good_folder(root)
    (root / "page.jpg").write_text("<html><body>404 Not Found</body></html>")


def decompression_bomb(root):
    _good_folder(root)
    (root / "bomb.png").write_bytes(_png_claiming(60000, 60000))


def metadata_dotdot(root):
    _with_metadata(root, "path,case_id\nimg0.png,a\n../outside.png,b\n")


def metadata_absolute(root):
    _with_metadata(root, f"path,case_id\nimg0.png,a\n{root / 'img1.png'},b\n")


def metadata_symlink_out(root):
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png(50))
    _with_metadata(root, "path,case_id\nimg0.png,a\nlink.png,b\n")
    (root / "link.png").symlink_to(outside / "secret.png")


def symlink_out_without_metadata(root):
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png(51))
    _good_folder(root)
    (root / "link.png").symlink_to(outside / "secret.png")


def metadata_missing_file(root):
    _with_metadata(root, "path,case_id\nimg0.png,a\nimg7.png,b\n")


def metadata_without_path_column(root):
    _with_metadata(root, "file,case_id\nimg0.png,a\n")


def metadata_not_csv(root):
    _with_metadata(root, 'path,case_id\nimg0.png,"a\nimg1.png,b\n')  # an unterminated quote


def metadata_not_text(root):
    _good_folder(root)
    (root / "metadata.csv").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01")


def metadata_listed_twice(root):
    _with_metadata(root, "path,case_id\nimg0.png,a\nimg1.png,b\n./img0.png,c\n")


def empty_folder(root):
    root.mkdir(exist_ok=True)
    (root / "README.txt").write_text("scans go here\n")


def metadata_without_rows(root):
    _with_metadata(root, "path,case_id,site,label\n")


BAD_CASES = [
    (truncated_png, UndecodableImageError, r"truncated.png: not a decodable image, truncated or corrupt"),
    (truncated_jpeg, UndecodableImageError, r"cut.jpg: not a decodable image, truncated or corrupt"),
    (zero_byte_file, UndecodableImageError, r"empty.png: zero-byte file"),
    (text_named_png, UndecodableImageError, r"notes.png: not a PNG, JPEG, TIFF, BMP image"),
    (html_named_jpg, UndecodableImageError, r"page.jpg: not a PNG, JPEG, TIFF, BMP image"),
    (decompression_bomb, UndecodableImageError, r"bomb.png: decompression bomb"),
    (metadata_dotdot, SourceError, r"metadata.csv row 3, column 'path': '../outside.png' contains '..'"),
    (metadata_absolute, SourceError, r"metadata.csv row 3, column 'path': '/.*img1.png' is empty or absolute"),
    (
        metadata_symlink_out,
        SourceError,
        r"metadata.csv row 3, column 'path': 'link.png' resolves outside the source folder",
    ),
    (symlink_out_without_metadata, SourceError, r"link.png: 'link.png' resolves outside the source folder"),
    (metadata_missing_file, SourceError, r"metadata.csv row 3, column 'path': 'img7.png' does not exist"),
    (
        metadata_without_path_column,
        SourceError,
        r"metadata.csv: missing required column 'path' \(columns found: \['file', 'case_id'\]\)",
    ),
    (metadata_not_csv, SourceError, r"metadata.csv: not parseable as CSV \(ParserError"),
    (metadata_not_text, SourceError, r"metadata.csv: not parseable as CSV \(UnicodeDecodeError"),
    (
        metadata_listed_twice,
        SourceError,
        r"metadata.csv row 4, column 'path': 'img0.png' is listed twice \(also row 2\)",
    ),
    (empty_folder, SourceError, r"source .*/scans is empty"),
    (metadata_without_rows, SourceError, r"source .*/scans is empty"),
]


@pytest.mark.parametrize("build, error, message", BAD_CASES, ids=[case[0].__name__ for case in BAD_CASES])
def test_bad_input_stops_ingest_naming_the_problem_and_leaves_input_unchanged(tmp_path, build, error, message):
    root = tmp_path / "scans"
    build(root)
    before = folder_digest(tmp_path)
    with pytest.raises(error, match=message):
        ingest(root, CONFIG)
    assert folder_digest(tmp_path) == before


def test_pixel_limit_is_configurable(tmp_path):
    _good_folder(tmp_path)  # 24x20 = 480 pixels each
    with pytest.raises(
        UndecodableImageError, match=r"img0.png: decompression bomb: 20x24 = 480 pixels exceeds max_image_pixels=400"
    ):
        ingest(tmp_path, IngestConfig(image_size=16, max_image_pixels=400))


def test_every_undecodable_file_is_named_at_once(tmp_path):
    _good_folder(tmp_path, count=6)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(
        UndecodableImageError,
        match=r"2 of 8 image files cannot be decoded \(IngestConfig.max_bad_fraction=0.0 allows 0\)",
    ) as caught:
        ingest(tmp_path, CONFIG)
    assert "empty.png: zero-byte file" in str(caught.value) and "notes.jpg: not a PNG" in str(caught.value)


def test_max_bad_fraction_quarantines_undecodable_files_and_reports_them(tmp_path):
    _good_folder(tmp_path, count=7)
    (tmp_path / "broken.png").write_bytes(_png(9)[:200])
    before = folder_digest(tmp_path)
    config = IngestConfig(image_size=16, max_bad_fraction=0.125)  # 1 of 8
    manifest, _, summary = ingest(tmp_path, config)
    assert len(manifest) == 7 and manifest["image_key"].tolist() == image_keys([f"img{i}.png" for i in range(7)])
    (item,) = summary["quarantined"]  # the dataset's summary names the key, never the path
    assert (
        item["image_key"] == Pseudonyms().pseudonym("file", "broken.png") and "truncated or corrupt" in item["problem"]
    )
    assert "broken.png" not in json.dumps(summary) and item["problem"].startswith(item["image_key"] + ": ")
    assert folder_digest(tmp_path) == before and (tmp_path / "broken.png").exists()  # quarantine never moves files


def test_above_max_bad_fraction_fails_naming_the_files(tmp_path):
    _good_folder(tmp_path, count=6)
    (tmp_path / "a_bad.png").write_bytes(b"")
    (tmp_path / "b_bad.png").write_text("no")
    with pytest.raises(UndecodableImageError, match=r"2 of 8 .*max_bad_fraction=0.2 allows 1") as caught:
        ingest(tmp_path, IngestConfig(image_size=16, max_bad_fraction=0.2))
    assert "a_bad.png" in str(caught.value) and "b_bad.png" in str(caught.value)


def test_a_failed_dataset_write_leaves_nothing_behind(tmp_path, monkeypatch):
    _good_folder(tmp_path / "scans")
    output = tmp_path / "out"
    output.mkdir()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ingest_source(str(tmp_path / "scans"), CONFIG, output / "dataset-scans")
    assert list(output.iterdir()) == []  # neither the dataset nor its chunk or staging folders
    monkeypatch.undo()
    _, manifest, _ = ingest_source(str(tmp_path / "scans"), CONFIG, output / "dataset-scans")
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert sorted(path.name for path in output.iterdir()) == ["dataset-scans"]
    assert pd.read_parquet(output / "dataset-scans" / "manifest.parquet").shape[0] == 4


def test_the_first_missing_row_is_named_with_how_many_rows_fail(tmp_path):
    """Rows 2-9 name files that exist, rows 10 and 11 files that do not: the refusal names row 10 (not row 11, which
    sorts first by path), says two rows fail and names the second."""
    _good_folder(tmp_path, count=9)
    rows = [f"img{i}.png" for i in range(1, 9)] + ["img9.png", "img10.png"]
    (tmp_path / "metadata.csv").write_text("path\n" + "\n".join(rows) + "\n")
    with pytest.raises(SourceError) as caught:
        ingest(tmp_path, CONFIG)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'metadata.csv'} row 10, column 'path': 'img9.png' does not exist"), message
    assert "2 rows of" in message and "row 11, column 'path': 'img10.png'" in message and "add the file" in message


def test_a_first_row_with_windows_separators_is_named_with_the_fix(tmp_path):
    _good_folder(tmp_path / "sub")
    (tmp_path / "metadata.csv").write_text("path\nsub\\img3.png\nsub/img0.png\nsub\\img1.png\n")
    with pytest.raises(SourceError) as caught:
        ingest(tmp_path, CONFIG)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'metadata.csv'} row 2, column 'path': 'sub\\\\img3.png' does not exist"), (
        message
    )
    assert "write it with '/', as 'sub/img3.png'" in message and "2 rows of" in message


def test_several_bad_paths_are_counted_and_the_first_few_named(tmp_path):
    _good_folder(tmp_path)
    bad = [f"../out{i}.png" for i in range(8)]
    (tmp_path / "metadata.csv").write_text("path\nimg0.png\n" + "\n".join(bad) + "\n")
    with pytest.raises(SourceError) as caught:
        ingest(tmp_path, CONFIG)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'metadata.csv'} row 3, column 'path': '../out0.png' contains '..'"), message
    assert "8 rows of" in message and "row 7," in message and "row 8," not in message and message.endswith("; ...")


# What each refusal of BAD_CASES ends with: what to do about it.
UNDECODABLE_FIX = (
    "Replace or remove these files, or raise IngestConfig.max_bad_fraction to quarantine them (skipped and reported)"
)
FIXES = {
    "truncated_png": UNDECODABLE_FIX,
    "truncated_jpeg": UNDECODABLE_FIX,
    "zero_byte_file": UNDECODABLE_FIX,
    "text_named_png": UNDECODABLE_FIX,
    "html_named_jpg": UNDECODABLE_FIX,
    "decompression_bomb": UNDECODABLE_FIX,
    "metadata_dotdot": "write the path relative to the source root, or copy the file into it",
    "metadata_absolute": "write the path relative to the source root (e.g. 'site-a/scan1.png')",
    "metadata_symlink_out": "copy the file into the folder",
    "symlink_out_without_metadata": "copy the file into the folder",
    "metadata_missing_file": "add the file, or correct or remove the row",
    "metadata_without_path_column": (
        "name the column of paths relative to the source root 'path', as in the header row path,case_id,site,label"
    ),
    "metadata_not_csv": "save it as UTF-8 CSV text with a header row such as path,case_id,site,label",
    "metadata_not_text": "save it as UTF-8 CSV text with a header row such as path,case_id,site,label",
    "metadata_listed_twice": "remove one of the rows",
    "empty_folder": "point the source at the folder or prefix that holds the images, or list them in metadata.csv",
    "metadata_without_rows": (
        "point the source at the folder or prefix that holds the images, or list them in metadata.csv"
    ),
}


@pytest.mark.parametrize("build", [case[0] for case in BAD_CASES], ids=[case[0].__name__ for case in BAD_CASES])
def test_every_ingest_refusal_ends_with_what_to_do(tmp_path, build):
    root = tmp_path / "scans"
    build(root)
    with pytest.raises(SourceError) as caught:
        ingest(root, CONFIG)
    assert str(caught.value).endswith(FIXES[build.__name__]), str(caught.value)


ESCAPE = "\x1b[2J\x1b]0;pwned\x07"  # clear the screen, retitle the terminal


def test_names_with_control_characters_are_printed_escaped(tmp_path, capsys):
    root = tmp_path / f"scans{ESCAPE}"
    _with_metadata(root, f"path\nimg0.png\nmissing{ESCAPE}.png\n")
    with pytest.raises(SourceError) as caught:
        ingest(root, CONFIG)
    message = str(caught.value)
    assert "\x1b" not in message and "\x07" not in message, message
    assert "scans\\x1b[2J\\x1b]0;pwned\\x07" in message  # the folder's name, escaped: still readable
    (root / "metadata.csv").unlink()
    (root / f"bad{ESCAPE}.png").write_bytes(b"not a png")
    with pytest.raises(UndecodableImageError) as caught:
        ingest(root, CONFIG)
    assert "\x1b" not in str(caught.value) and "bad\\x1b[2J" in str(caught.value)
    from workflows.refusals import print_refusal_or_traceback

    print_refusal_or_traceback(caught.value, 1)
    printed = capsys.readouterr().err
    assert "\x1b" not in printed and "\x07" not in printed and "bad\\x1b[2J" in printed
