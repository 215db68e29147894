"""Absolute URLs the server emits (RetrieveURL, BulkDataURI, viewer configuration).

They are built from the configured public base URL, never from the request's Host header
(issue #3 item 5). Every path segment is a validated UID.
"""

from __future__ import annotations

from gateway.uids import is_safe_uid

DICOMWEB_PREFIX = "/dicom-web"


def _check(*uids: str) -> None:
    for uid in uids:
        if not is_safe_uid(uid):
            raise ValueError(f"{uid!r} is not a UID")


class DicomWebURLs:
    """URL builder rooted at ``<public_url>/dicom-web``."""

    def __init__(self, public_url: str) -> None:
        self.base = public_url.rstrip("/") + DICOMWEB_PREFIX

    def study(self, study: str) -> str:
        _check(study)
        return f"{self.base}/studies/{study}"

    def series(self, study: str, series: str) -> str:
        _check(series)
        return f"{self.study(study)}/series/{series}"

    def instance(self, study: str, series: str, instance: str) -> str:
        _check(instance)
        return f"{self.series(study, series)}/instances/{instance}"
