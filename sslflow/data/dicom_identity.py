"""Who and where a DICOM image is from, as pseudonyms, and the de-identification profile this applies.

- **Case** (IngestConfig.dicom_case_level, "patient" by default): ``patient-`` + HMAC of (IssuerOfPatientID,
  or InstitutionName when it is absent, NUL, PatientID): one PatientID at two issuers is two people. A file
  without PatientID falls back to ``study-`` + HMAC(StudyInstanceUID), then ``series-`` +
  HMAC(SeriesInstanceUID): weaker, since one patient's studies may land in different splits (the level
  used is returned and counted in the ingest summary).
- **Site** (dicom_site): InstitutionName or Manufacturer + ManufacturerModelName, ``site-`` + HMAC of it
  unless IngestConfig.dicom_site_names (readable names, an explicit opt-in).
No other header value leaves sslflow.data.dicom. DEIDENTIFICATION is what the dataset's summary records
(as DICOM's De-identification Method / Code Sequence would).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sslflow.config import IngestConfig
from sslflow.data.pseudonyms import Pseudonyms

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

CASE_KEYWORDS = {"patient": "PatientID", "study": "StudyInstanceUID", "series": "SeriesInstanceUID"}
CASE_LEVELS = tuple(CASE_KEYWORDS)
WEAKER_CASE_LEVELS = ("study", "series")
DEIDENTIFICATION = {
    "method": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile (DCM 113100)",
    "options_applied": [],
    "options_not_applied": [
        "Clean Pixel Data (DCM 113101): images with BurnedInAnnotation YES are held back; text burned in without that "
        "attribute is NOT detected",
        "Retain Longitudinal Temporal Information (DCM 113106/113107): no date or time is kept",
        "Retain Patient Characteristics (DCM 113108): none kept",
        "Retain Device Identity (DCM 113109): scanner sites are pseudonymised",
        "Retain UIDs (DCM 113110): UIDs are replaced by keyed pseudonyms",
        "Retain Safe Private (DCM 113111): no private tag is kept",
    ],
    "kept": [
        "Modality",
        "pixel data (resized, 8-bit)",
        "pseudonyms: patient/study/series (case), site, SOPInstanceUID, file path",
    ],
    "pseudonyms": "HMAC-SHA256 with the project key (sslflow/data/pseudonyms.py), 80 bits shown",
}


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip() if value is not None else ""


def case_identity(ds: Dataset, level: str, pseudonyms: Pseudonyms) -> tuple[str | None, str]:
    """(case pseudonym or None, the level it came from: "patient", "study", "series" or "" for none)."""
    for candidate in CASE_LEVELS[CASE_LEVELS.index(level) :]:
        value = _text(ds, CASE_KEYWORDS[candidate])
        if value and candidate == "patient":
            issuer = _text(ds, "IssuerOfPatientID") or _text(ds, "InstitutionName")
            return pseudonyms.pseudonym("patient", f"{issuer}\0{value}"), candidate
        if value:
            return pseudonyms.pseudonym(candidate, value), candidate
    return None, ""


def site_identity(ds: Dataset, config: IngestConfig, pseudonyms: Pseudonyms) -> str:
    """The site: by config.dicom_site (the other as fallback, then "default"), pseudonymised unless dicom_site_names."""
    institution = _text(ds, "InstitutionName")
    scanner = " ".join(part for part in (_text(ds, "Manufacturer"), _text(ds, "ManufacturerModelName")) if part)
    first, second = (institution, scanner) if config.dicom_site == "institution" else (scanner, institution)
    site = first or second
    if not site:
        return "default"
    return site if config.dicom_site_names else pseudonyms.pseudonym("site", site)


def deidentification(config: IngestConfig) -> dict:
    """DEIDENTIFICATION as this config applies it (the opt-ins that keep more are named)."""
    opted_in = [
        *(
            ["InstitutionName / scanner kept as the site (IngestConfig.dicom_site_names)"]
            if config.dicom_site_names
            else []
        ),
        *(
            ["images with BurnedInAnnotation YES included (IngestConfig.dicom_burned_in)"]
            if config.dicom_burned_in
            else []
        ),
    ]
    return {**DEIDENTIFICATION, "opted_in_beyond_the_profile": opted_in}
