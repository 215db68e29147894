"""DICOMweb metadata routes (issue #3); filled in by the metadata work."""

from fastapi import APIRouter

router = APIRouter()
