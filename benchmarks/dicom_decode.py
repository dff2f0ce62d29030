"""DICOM decode speed: images/s on one core for a 512 x 512 CT slice, uncompressed and JPEG 2000.

The slice is pydicom's bundled ``693_J2KI.dcm`` (a real 512 x 512 CT in JPEG 2000, 16-bit signed, with
rescale and window), and the same slice written uncompressed (Explicit VR Little Endian). Each is run
through sslflow's whole DICOM decode (sslflow/data/dicom.py: parse, decode, modality LUT, window, resize
to image_size, pseudonymise) in this one process, so the rate is per core; pydicom's bare ``pixel_array``
(parse + decode only) is timed for reference. No network, no files written but the result.

    python benchmarks/dicom_decode.py            # 200 decodes each, image_size 224
    python benchmarks/dicom_decode.py --quick    # 40 decodes each
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from benchmarks.common import parse_arguments, write_result
from sslflow.config import IngestConfig
from sslflow.data.dicom import decode_dicom
from sslflow.data.pseudonyms import Pseudonyms

IMAGE_SIZE = 224


def slices() -> dict[str, bytes]:
    """{"ct_512_uncompressed": bytes, "ct_512_jpeg2000": bytes} of the same CT slice."""
    compressed = Path(get_testdata_file("693_J2KI.dcm")).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(compressed))
    ds.decompress()
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and (ds.Rows, ds.Columns) == (512, 512)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return {"ct_512_uncompressed": buffer.getvalue(), "ct_512_jpeg2000": compressed}


def rate(function, repeats: int) -> float:
    """Calls per second of ``function`` over ``repeats`` calls, after one warm-up call."""
    function()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return repeats / (time.perf_counter() - started)


def main() -> None:
    arguments = parse_arguments(__doc__)
    repeats = 40 if arguments.quick else 200
    config, pseudonyms = IngestConfig(image_size=IMAGE_SIZE, channels=1), Pseudonyms("benchmark-key-0123456789abcdef")
    results = {}
    for name, data in slices().items():
        results[name] = {
            "bytes": len(data),
            "sslflow_images_per_s": round(
                rate(lambda data=data, name=name: decode_dicom(data, name, config, pseudonyms), repeats), 1
            ),
            "pydicom_pixel_array_per_s": round(
                rate(lambda data=data: pydicom.dcmread(io.BytesIO(data)).pixel_array, repeats), 1
            ),
        }
        print(name, results[name])
    payload = {
        "benchmark": "dicom_decode",
        "image_size": IMAGE_SIZE,
        "repeats": repeats,
        "processes": 1,
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "results": results,
        "note": "one process, one image at a time: images/s per core; "
        "sslflow = parse + decode + modality LUT + window + resize + pseudonym",
    }
    print(write_result("dicom_decode" + ("-quick" if arguments.quick else ""), payload, arguments.out))


if __name__ == "__main__":
    main()
