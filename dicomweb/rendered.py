"""DICOMweb rendered routes (issue #3); filled in by the rendered work."""

from fastapi import APIRouter

router = APIRouter()
