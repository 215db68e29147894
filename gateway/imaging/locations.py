"""Where a study can be retrieved from: the URLs this DRIMbox publishes in its manifests and
answers (RetrieveURL, BulkDataURI).

The DICOMweb face serves exactly these paths (``dicomweb/``); both sides build them here. Every
path segment is a validated UID.
"""

from __future__ import annotations

from gateway.ingest.uids import is_safe_uid

DICOMWEB_PREFIX = "/dicom-web"


def _uid(uid: str) -> str:
    if not is_safe_uid(uid):
        raise ValueError(f"{uid!r} is not a UID")
    return uid


def study_url(public_url: str, study: str) -> str:
    return f"{public_url.rstrip('/')}{DICOMWEB_PREFIX}/studies/{_uid(study)}"


def series_url(public_url: str, study: str, series: str) -> str:
    """The RetrieveURL (0008,1190) of a series in our KOS (R3)."""
    return f"{study_url(public_url, study)}/series/{_uid(series)}"


class DicomWebURLs:
    """URL builder rooted at ``<public_url>/dicom-web``."""

    def __init__(self, public_url: str) -> None:
        self.public_url = public_url
        self.base = public_url.rstrip("/") + DICOMWEB_PREFIX

    def study(self, study: str) -> str:
        return study_url(self.public_url, study)

    def series(self, study: str, series: str) -> str:
        return series_url(self.public_url, study, series)

    def instance(self, study: str, series: str, instance: str) -> str:
        return f"{self.series(study, series)}/instances/{_uid(instance)}"
