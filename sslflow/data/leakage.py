"""The leakage guard: where each image's case id came from, and the warnings validation repeats.

A split is drawn per case (sslflow/data/manifest.py): images without a case id are split one by one, so two
images of one patient can land in train and test. Sources of a case id, strongest first: the metadata's
``case_id`` column, the DICOM patient (IssuerOfPatientID or InstitutionName + PatientID), then the weaker
DICOM study or series (one patient's studies may still be split apart); "proxy" is pixel-neighbour groups
(IngestConfig.proxy_cases); "unknown" is an in-memory or built-in set, whose items are not patients.
"""

from __future__ import annotations

from collections.abc import Mapping

WEAKER_SOURCES = ("study", "series")
HOW_TO_GIVE_CASE_IDS = (
    "give case ids: a case_id column in metadata.csv or the parquet image list (e.g. the patient), DICOM files with "
    "PatientID and IngestConfig.dicom_case_level='patient' (the default), or IngestConfig.proxy_cases=True for "
    "pixel-neighbour groups"
)


def case_id_sources(images_per_source: Mapping[str, int]) -> dict:
    """{"from": images per source of their case id (``images_per_source``), "weaker": images grouped by study or
    series, "none": without one}."""
    counts = {str(source): int(count) for source, count in sorted(images_per_source.items())}
    return {
        "from": counts,
        "weaker": sum(counts.get(source, 0) for source in WEAKER_SOURCES),
        "none": counts.get("none", 0),
    }


def leakage_warnings(sources: dict, images: int) -> list[str]:
    """One sentence per way the split can leak one patient into two splits (empty when none)."""
    warnings = []
    if sources["none"]:
        warnings.append(
            f"{sources['none']} of {images} images have no case id: each is split on its own, so images of one patient "
            f"can land in different splits (leakage between train and test); {HOW_TO_GIVE_CASE_IDS}"
        )
    if sources["weaker"]:
        warnings.append(
            f"{sources['weaker']} of {images} DICOM images are grouped by study or series, not by patient (no "
            "PatientID, or "
            "IngestConfig.dicom_case_level='study'/'series'): one patient's studies can land in different splits; "
            "use dicom_case_level='patient' where PatientID is present, or a case_id column in metadata.csv"
        )
    return warnings
