"""DICOMweb qido routes (issue #3); filled in by the qido work."""

from fastapi import APIRouter

router = APIRouter()
