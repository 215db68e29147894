"""The names of an XDM archive (ITI TF-2b 3.32.4.1.3; the ANS/PoC sample
``xdm/drimbox-poc/KA202401``).

::

    README.TXT                  who sent it, with what, the tree
    INDEX.HTM                   an XHTML page linking README.TXT and the documents
    IHE_XDM/SUBSET01/
        METADATA.XML            lcm:SubmitObjectsRequest (the XDS-I.b metadata)
        KOS_1.DCM               the KOS (DocumentKOS)
        CR_1.XML                the CDA report, when the study has one (DocumentCR)
        SIGN_1.XML              Signature01 (IHE DSG, XAdES)
    DICOMDIR, PT000000/...      the images as DICOM media, with --with-images

Each document's ``URI`` slot is its file name relative to the submission set's folder (the
PoC writes ``SS000001/KOS_1_1.DCM``, relative to ``IHE_XDM/``: the reader accepts both).
"""

from __future__ import annotations

XDM_DIR = "IHE_XDM"
SUBSET = "SUBSET01"
METADATA = "METADATA.XML"
README = "README.TXT"
INDEX = "INDEX.HTM"
KOS_FILE = "KOS_1.DCM"
CR_FILE = "CR_1.XML"
SIGN_FILE = "SIGN_1.XML"
CR_ID = "DocumentCR"


def subset_member(name: str, subset: str = SUBSET) -> str:
    return f"{XDM_DIR}/{subset}/{name}"
