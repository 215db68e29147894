"""Imaging: what the DICOMweb face serves, in domain terms.

Owns QIDO-RS searches on the index (:mod:`.query`, with the bounded integers of
:mod:`.integers`), what a retrieve returns (:mod:`.retrieval`), instance metadata in the DICOM
JSON model (:mod:`.metadata`), frames and bulk data (:mod:`.pixels`), the Image Pixel module
checks and the error naming what makes pixel data unreadable (:mod:`.pixel_description`),
transcoding
(:mod:`.transcode`), rendering (:mod:`.rendering`), the URLs published in manifests
(:mod:`.locations`, R3) and a study written as DICOM media with its DICOMDIR (:mod:`.media`).

May import: the index and the file store, the domain. Never a face (:mod:`dicomweb`, the CLI).
"""
