"""DICOMweb wado routes (issue #3); filled in by the wado work."""

from fastapi import APIRouter

router = APIRouter()
