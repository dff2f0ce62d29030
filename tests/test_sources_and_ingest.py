import hashlib
import io
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from botocore.exceptions import ClientError
from ingested import image_keys, ingest, labels
from PIL import Image

from ssl_models.proxy_cases import PROXY_PREFIX, pixel_neighbour_proxy_cases
from sslflow.config import IngestConfig
from sslflow.data import fingerprint
from sslflow.data.chunks import _cut, plan_chunks
from sslflow.data.manifest import split_of_case
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.sources import fingerprint_source, open_source, source_name
from sslflow.data.sources import s3 as s3_source
from sslflow.data.sources.builtin import optdigits_to_mnist_format
from sslflow.data.types import SourceError, UndecodableImageError


def _write_folder(root, count=12, cases=4):
    rows = []
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
        rows.append(
            {"path": f"img{i}.png", "case_id": f"patient{i % cases}", "site": f"site{i % 2}", "label": str(i % 3)}
        )
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)


def test_folder_ingest_normalises_images_and_groups_splits_by_case(tmp_path):
    _write_folder(tmp_path)
    manifest, pixels, summary = ingest(tmp_path, IngestConfig(image_size=16, train_fraction=0.5, val_fraction=0.25))
    assert pixels.shape == (12, 1, 16, 16) and pixels.dtype == np.uint8
    assert len(manifest) == len(pixels) == 12
    assert (manifest.groupby("case_id")["split"].nunique() == 1).all()
    assert set(manifest["site"]) == {"site0", "site1"} and summary["cases"] == 4
    assert not manifest["case_id_is_proxy"].any()


def test_duplicates_are_kept_once_and_reported(tmp_path):
    _write_folder(tmp_path, count=3)
    Image.open(tmp_path / "img1.png").save(tmp_path / "copy.png")
    metadata = pd.read_csv(tmp_path / "metadata.csv", dtype=str)
    metadata.loc[len(metadata)] = {"path": "copy.png", "case_id": "patient9", "site": "site0", "label": "1"}
    metadata.to_csv(tmp_path / "metadata.csv", index=False)
    manifest, _, summary = ingest(tmp_path, IngestConfig(image_size=16))
    assert (
        len(manifest) == 3
        and summary["duplicates_dropped"] == 1
        and summary["duplicate_examples"] == [Pseudonyms().pseudonym("file", "copy.png")]
    )


def test_bad_metadata_paths_are_refused_with_the_row(tmp_path):
    _write_folder(tmp_path, count=2)
    pd.DataFrame({"path": ["img0.png", "../escape.png"]}).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(SourceError, match=r"row 3, column 'path'.*must stay inside the source root"):
        ingest(tmp_path, IngestConfig(image_size=16))
    pd.DataFrame({"file": ["img0.png"]}).to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(SourceError, match="missing required column 'path'"):
        ingest(tmp_path, IngestConfig(image_size=16))


def test_undecodable_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(UndecodableImageError, match=r"broken.png: not a PNG, JPEG, TIFF, BMP image"):
        ingest(tmp_path, IngestConfig(image_size=16))


def test_fingerprint_follows_content_not_path(tmp_path):
    _write_folder(tmp_path, count=2)
    before = fingerprint_source(str(tmp_path))
    assert fingerprint_source(str(tmp_path)) == before
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "img1.png")
    assert fingerprint_source(str(tmp_path)) != before


def test_split_is_deterministic_and_respects_fractions():
    splits = [split_of_case(f"case{i}", seed=0, train_fraction=0.7, val_fraction=0.1) for i in range(4000)]
    assert splits == [split_of_case(f"case{i}", 0, 0.7, 0.1) for i in range(4000)]
    assert abs(splits.count("train") / 4000 - 0.7) < 0.03 and abs(splits.count("val") / 4000 - 0.1) < 0.02


def test_optdigits_transform_to_mnist_format():
    images = np.zeros((2, 8, 8))
    images[:, 3:5, 3:5] = 16
    converted = optdigits_to_mnist_format(images)
    assert converted.shape == (2, 28, 28) and converted.dtype == np.uint8
    assert converted.max() == 255 and converted[:, :4].max() == 0 and converted[:, -4:].max() == 0  # 4 px frame


def test_builtin_sources_read_real_data():
    mnist, pixels, _ = ingest("mnist-5k", IngestConfig())
    assert (
        pixels.shape == (len(mnist), 1, 28, 28)
        and len(mnist) > 4900
        and sorted(set(mnist["label"])) == [str(d) for d in range(10)]
    )
    optdigits, pixels, _ = ingest("optdigits", IngestConfig())
    assert pixels.shape == (len(optdigits), 1, 28, 28) and len(optdigits) > 1700


def test_proxy_cases_pair_look_alike_images():
    base = np.random.default_rng(0).integers(0, 256, (50, 28, 28)).astype(np.uint8)
    near_copies = np.clip(base.astype(int) + 3, 0, 255).astype(np.uint8)
    case_ids = pixel_neighbour_proxy_cases(np.concatenate([base, near_copies]))
    assert all(case.startswith(PROXY_PREFIX) for case in case_ids)
    assert all(case_ids[i] == case_ids[i + 50] for i in range(50))


def test_parquet_image_list_names_images_relative_to_its_folder(tmp_path):
    _write_folder(tmp_path, count=6, cases=3)
    (tmp_path / "metadata.csv").unlink()
    (tmp_path / "lists").mkdir()
    table = pd.DataFrame(
        {"path": [f"img{i}.png" for i in range(6)], "case_id": [i % 3 for i in range(6)], "label": [None, "a", "b"] * 2}
    )
    table.to_parquet(tmp_path / "cohort.parquet")
    manifest, _, _ = ingest(tmp_path / "cohort.parquet", IngestConfig(image_size=16))
    assert manifest["image_key"].tolist() == image_keys([f"img{i}.png" for i in range(6)])
    assert manifest["case_id"].tolist() == ["0", "1", "2"] * 2 and labels(manifest) == [None, "a", "b"] * 2
    assert manifest["site"].tolist() == ["default"] * 6
    before = fingerprint_source(str(tmp_path / "cohort.parquet"))
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "img5.png")
    assert fingerprint_source(str(tmp_path / "cohort.parquet")) != before
    pd.DataFrame({"path": ["img0.png", "../elsewhere/img1.png"]}).to_parquet(tmp_path / "lists" / "escape.parquet")
    with pytest.raises(
        SourceError, match=r"escape.parquet row 1, column 'path': '../elsewhere/img1.png' contains '..'"
    ):
        ingest(tmp_path / "lists" / "escape.parquet", IngestConfig(image_size=16))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SourceError, match=r"broken.parquet: not a readable parquet file"):
        ingest(tmp_path / "broken.parquet", IngestConfig(image_size=16))


def test_metadata_header_with_spaces_and_blank_cells(tmp_path):
    _write_folder(tmp_path, count=3)
    (tmp_path / "metadata.csv").write_text(
        "path, case_id, site, label\nimg0.png, p1, a, x\nimg1.png, , , \nimg2.png, p1, b, y\n"
    )
    manifest, _, _ = ingest(tmp_path, IngestConfig(image_size=16))
    cases = manifest["case_id"].tolist()
    assert cases[0] == cases[2] == "p1" and cases[1].startswith("image-")
    assert manifest["site"].tolist() == ["a", "default", "b"] and labels(manifest) == ["x", None, "y"]


def test_without_metadata_every_image_is_its_own_case_and_other_files_are_ignored(tmp_path):
    _write_folder(tmp_path, count=3)
    (tmp_path / "metadata.csv").unlink()
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.full((9, 9), 7, dtype=np.uint8)).save(tmp_path / "sub" / "deep.TIF")
    manifest, _, summary = ingest(tmp_path, IngestConfig(image_size=16))
    assert manifest["image_key"].tolist() == image_keys(["img0.png", "img1.png", "img2.png", "sub/deep.TIF"])
    assert summary["case_ids"]["none"] == 4  # no case ids in the source
    assert manifest["case_id"].nunique() == 4 and summary["cases"] == 4
    assert summary["skipped_non_image"] == {"not DICOM (no image suffix)": 1} and summary["quarantined"] == []


def test_a_file_without_an_image_suffix_over_max_file_bytes_is_skipped_unread(tmp_path):
    _write_folder(tmp_path, count=2)
    (tmp_path / "metadata.csv").unlink()
    (tmp_path / "archive").write_bytes(bytes(128) + b"DICM" + bytes(200_000))  # would be DICOM, but too big to read
    (tmp_path / "empty").write_bytes(b"")
    manifest, _, summary = ingest(tmp_path, IngestConfig(image_size=16, max_file_bytes=100_000))
    assert manifest["image_key"].tolist() == image_keys(["img0.png", "img1.png"]) and summary["quarantined"] == []
    assert summary["skipped_non_image"] == {
        "not DICOM (no image suffix)": 1,
        "not read (no image suffix, over max_file_bytes)": 1,
    }
    assert summary["read"]["files_read"] == 2  # the two images: neither candidate is opened


def test_source_names_are_safe_file_names():
    assert source_name("s3://bucket/some/prefix/") == "bucket-some-prefix"
    assert source_name("/data/cohort 2/list.parquet") == "list"
    assert source_name("mnist-5k") == "mnist-5k"


def test_open_source_dispatches_every_kind_and_refuses_what_is_no_source(tmp_path):
    (tmp_path / "scans").mkdir()
    uris = {
        "mnist-5k": "builtin",
        "s3://bucket/some/prefix": "s3",
        str(tmp_path / "cohort.parquet"): "parquet",
        str(tmp_path / "scans"): "folder",
        "dicomweb+https://pacs.example.org/dicom-web?ModalitiesInStudy=CT": "dicomweb",
    }
    assert {uri: open_source(uri).kind for uri in uris} == uris  # nothing is read when a source is opened
    for uri in (
        str(tmp_path / "no-such-folder"),
        "gs://bucket/prefix",
        "https://example.org/scans",
        str(tmp_path / "scans" / "x.png"),
    ):
        with pytest.raises(
            SourceError,
            match=(
                r"is neither a built-in source .*, an s3://bucket/prefix, "
                r"a dicomweb\+https://host/dicom-web\?query archive, a .parquet image list nor"
            ),
        ):
            open_source(uri)


def test_the_plan_yields_a_chunk_before_it_has_listed_the_whole_folder(tmp_path, monkeypatch):
    """plan_chunks cuts while the folder is walked: the first chunk comes after a batch of files is hashed, not all."""
    for i in range(400):
        (tmp_path / f"img{i:04d}.png").write_bytes(b"not decoded by the plan %d" % i)
    hashed = []
    records = fingerprint.FileDigests.records
    monkeypatch.setattr(
        fingerprint.FileDigests, "records", lambda digests, files: hashed.extend(files) or records(digests, files)
    )
    monkeypatch.setattr(fingerprint, "HASH_BATCH", 2)  # hashed 32 files at a time
    chunks = iter(plan_chunks(str(tmp_path), IngestConfig(chunk_images=4)))
    first = next(chunks)
    assert 0 < len(first["records"]) <= 16 and len(hashed) < 100
    assert sum(len(chunk["records"]) for chunk in chunks) + len(first["records"]) == 400 and len(hashed) == 400


class _PagedBucket:
    """An S3 client's two calls the plan makes, over ``pages`` listing pages of 1,000 keys served one at a time."""

    def __init__(self, pages: int):
        self.pages, self.served = pages, 0

    def get_paginator(self, operation: str):
        assert operation == "list_objects_v2"
        return self

    def paginate(self, Bucket: str, Prefix: str):
        for page in range(self.pages):
            self.served += 1
            yield {
                "Contents": [
                    {"Key": f"{Prefix}img{page:02d}{i:03d}.png", "ETag": f'"{page}-{i}"', "Size": 100}
                    for i in range(1000)
                ]
            }

    def get_object(self, Bucket: str, Key: str):
        raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "no metadata.csv"}}, "GetObject")


def test_the_plan_of_an_s3_prefix_yields_a_chunk_from_the_first_listing_page(monkeypatch):
    bucket = _PagedBucket(pages=5)
    monkeypatch.setattr(s3_source, "s3_client", lambda: bucket)
    chunks = plan_chunks("s3://scans/site-a", IngestConfig(chunk_images=16))
    first = next(chunks)
    assert first["records"][0][1]["source_path"] == "img00000.png" and bucket.served == 1
    assert sum(len(chunk["records"]) for chunk in chunks) + len(first["records"]) == 5000 and bucket.served == 5


def _chunks_of_single_images(files: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """_cut over (case, path) items of 1000 bytes and one image each, chunk_images 64."""
    size, images = (lambda item: 1000), (lambda item: 1)
    return list(_cut(files, lambda item: item[0], lambda item: item[1], size, images, IngestConfig(chunk_images=64)))


def test_chunks_hold_about_chunk_images_images_whatever_the_images_per_case():
    """4 images per patient, chunk_images 64: chunks average about 64 images and hold at most 2 x 64 (a cut decided per
    case, the old rule, made them about 4 times larger, up to a 4 x chunk_images cap); a file added changes only the
    chunk it falls into."""
    files = [(f"patient{index // 4:05d}", f"patient{index // 4:05d}/image{index % 4}") for index in range(8192)]
    chunks = _chunks_of_single_images(files)
    sizes = [len(chunk) for chunk in chunks]
    assert sum(sizes) == 8192 and max(sizes) <= 2 * 64 and 40 <= np.mean(sizes) <= 100
    assert all(
        len({case for case, _ in chunk} & {case for case, _ in other}) == 0 for chunk, other in zip(chunks, chunks[1:])
    )  # cut between cases
    for name in (f"patient{patient:05d}/image9" for patient in range(2000)):  # a file that does not end its chunk
        if int(hashlib.sha256(name.encode()).hexdigest()[:12], 16) % 64:
            break
    added = sorted([*files, (name.split("/")[0], name)])
    again = _chunks_of_single_images(added)
    changed = [chunk for chunk in again if chunk not in chunks]
    assert len(again) == len(chunks) and len(changed) == 1 and (name.split("/")[0], name) in changed[0]


def test_chunks_hold_at_most_chunk_megabytes_of_files_whatever_their_count(tmp_path):
    """Multi-frame objects (many images in one file, up to max_file_bytes): a chunk is cut by the files' bytes from
    the listing, not only by their number, so a few 300 MB objects do not share one 4 GiB chunk pod; small files
    still fill a chunk by count; a case larger than chunk_megabytes is one chunk of its own."""
    megabyte = 2**20
    files = [(f"patient{index:03d}", f"patient{index:03d}/cine.dcm", 300 * megabyte) for index in range(12)]
    files += [(f"small{index:03d}", f"small{index:03d}/image.dcm", 100_000) for index in range(40)]
    files += [("zz-large-case", f"zz-large-case/cine{index}.dcm", 400 * megabyte) for index in range(4)]
    config = IngestConfig(chunk_images=4096, chunk_megabytes=1024)
    chunks = list(_cut(files, lambda item: item[0], lambda item: item[1], lambda item: item[2], lambda item: 1, config))
    chunk_bytes = [sum(size for _, _, size in chunk) for chunk in chunks]
    assert sum(len(chunk) for chunk in chunks) == len(files)
    assert all(
        size <= 1024 * megabyte for size, chunk in zip(chunk_bytes, chunks) if len({case for case, _, _ in chunk}) > 1
    )
    assert [len(chunk) for chunk in chunks[:3]] == [3, 3, 3]  # 3 x 300 MB, not 12 files in one chunk
    assert chunks[-1] == files[-4:]  # the 1.6 GB case: one chunk, alone
    assert len(chunks[3]) == 3 + 40  # the small files join the last 300 MB ones: by count they fit


class _BucketWithMetadata:
    """An S3 client over ``count`` objects (pages of 1,000 keys) and a metadata.csv naming each of them by path, four
    images per case, listed in reverse order (so the plan must sort the rows by case)."""

    def __init__(self, count: int):
        self.count = count
        rows = "".join(f"img{i:06d}.png,case{i // 4:06d},{i % 3}\n" for i in reversed(range(count)))
        self.metadata_csv = f"path,case_id,label\n{rows}".encode()  # the server's: made before the plan is measured

    def get_paginator(self, operation: str):
        return self

    def paginate(self, Bucket: str, Prefix: str):
        for start in range(0, self.count, 1000):
            yield {
                "Contents": [
                    {"Key": f"{Prefix}img{i:06d}.png", "ETag": f'"{i}"', "Size": 100}
                    for i in range(start, min(self.count, start + 1000))
                ]
            }

    def get_object(self, Bucket: str, Key: str):
        return {"Body": io.BytesIO(self.metadata_csv)}


def _plan_peak_bytes(count: int, monkeypatch) -> tuple[int, int]:
    """(Python's peak traced allocation while the plan of an S3 prefix with a metadata.csv of ``count`` rows streams
    through, number of records planned)."""
    bucket = _BucketWithMetadata(count)
    monkeypatch.setattr(s3_source, "s3_client", lambda: bucket)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        planned = sum(
            len(chunk["records"]) for chunk in plan_chunks("s3://scans/site-a", IngestConfig(chunk_images=64))
        )
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    return peak, planned


def test_the_plan_of_an_s3_prefix_with_metadata_holds_neither_its_rows_nor_its_objects(monkeypatch):
    """metadata.csv naming files by path at an S3 prefix: the plan's memory does not grow with the rows or the objects
    (rows and listing joined in a sqlite file on disk, read ROW_BATCH rows at a time); every row planned in case
    order."""
    from sslflow.data import metadata_catalog

    monkeypatch.setattr(metadata_catalog, "ROW_BATCH", 500)
    monkeypatch.setattr(metadata_catalog, "OBJECT_BATCH", 500)
    small, small_planned = _plan_peak_bytes(2_000, monkeypatch)
    large, large_planned = _plan_peak_bytes(20_000, monkeypatch)
    assert (small_planned, large_planned) == (2_000, 20_000)
    assert large < 2 * small, (small, large)
