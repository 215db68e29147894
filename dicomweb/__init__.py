"""The gateway's HTTP face: health, metrics and (coming) the DICOMweb API (PS3.18)."""
