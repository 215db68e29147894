"""DICOMweb stow routes (issue #3); filled in by the stow work."""

from fastapi import APIRouter

router = APIRouter()
