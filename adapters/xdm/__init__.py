"""IHE XDM (ITI-32, R23): a study's manifest on portable media or in a mail attachment.

* :mod:`.layout` — the archive's fixed names (``IHE_XDM/SUBSET01/METADATA.XML``, ...);
* :mod:`.archive` — the export: the same XDS-I.b metadata, KOS and Signature01 as the DMP
  publication (:mod:`adapters.dmp.ebrim`, :mod:`adapters.dmp.dsg`), the CR when there is one,
  ``INDEX.HTM``/``README.TXT`` and, on request, the images as DICOM media
  (:mod:`gateway.imaging.media`); :func:`.archive.build_xdm_archive` is the entry point;
* :mod:`.reader` — the import's checks: zip, METADATA.XML, each document's size and SHA-1,
  the signature (XMLDSig + XAdES, signer issued by a trusted CA, manifest digests); every
  refusal says precisely why (:class:`.reader.XdmRefused`).
"""
