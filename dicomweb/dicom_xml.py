"""The XML answers of QIDO-RS and WADO-RS metadata: ``multipart/related;
type="application/dicom+xml"``, one Native DICOM Model document (PS3.19 A.1, made by
:mod:`gateway.imaging.native_xml` from the same DICOM JSON objects as the JSON answers) per
part, each part ``Content-Type: application/dicom+xml; charset=utf-8``. Parts are made one at
a time as the body is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fastapi.responses import StreamingResponse

from dicomweb.accept import DICOM_XML
from dicomweb.multipart import Part, content_type, new_boundary, stream
from gateway.imaging.native_xml import document

PART_TYPE = f"{DICOM_XML}; charset=utf-8"


def _parts(datasets: Iterable[Mapping[str, Any]]) -> Iterator[Part]:
    for ds in datasets:
        yield Part(PART_TYPE, [document(ds)])


def response(datasets: Iterable[Mapping[str, Any]], headers: dict[str, str] | None = None,
             ) -> StreamingResponse:
    """The multipart answer holding one XML document per dataset."""
    boundary = new_boundary()
    return StreamingResponse(stream(_parts(datasets), boundary), headers=headers,
                             media_type=content_type(DICOM_XML, boundary))
