"""DICOMweb viewer routes (issue #3); filled in by the viewer work."""

from fastapi import APIRouter

router = APIRouter()
