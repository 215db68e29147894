"""The CDA R2 IMG-CR-IMG header (R1, R2, R18; SPEC.md section 2.5), read from the
official samples. Every expected value was read by eye from the sample file named."""

from __future__ import annotations

import base64
import re

import pytest
from hl7_support import CDA_G1_MAJ, CDA_POC_2023, POC_CDA, POC_ORU

from gateway.manifest.xds_metadata import Code
from gateway.reports.cda import CdaError, read_cda


def test_update_report_of_exam_g() -> None:
    """cda/referencement/Examen_G/CR_G1_MAJ.abridged.xml (level 1, PDF body elided)."""
    h = read_cda(CDA_G1_MAJ.read_bytes())
    assert str(h.document_id) == "1.2.250.1.213.4.5.4.4072"
    assert h.set_id == "D52DE737-001D-4031-B571-0A0ED7C42300" and h.version_number == 2
    assert h.replaces == "1.2.250.1.213.4.5.4.407"
    assert h.patient.ins.matricule == "279035121518989"
    assert h.patient.ins.oid == "1.2.250.1.213.1.4.10"
    assert (h.patient.ipp, h.patient.ipp_issuer) == ("IPP101", "1.2.250.1.213.4.5.2.4")
    assert h.study_instance_uids == ("1.2.250.1.213.4.5.2.1.108",)
    assert (h.placer_order.root, h.placer_order.extension) == ("1.2.250.1.748.12345678.12", "OPN108")
    assert (h.accession_number.root, h.accession_number.extension) == ("1.2.250.1.925.994044.27",
                                                                        "ACN108")
    assert [c.code for c in h.modality_codes] == ["XA"]
    assert [(c.code, c.scheme) for c in h.region_codes] == [("113257007", "2.16.840.1.113883.6.96")]
    assert [(c.code, c.scheme) for c in h.act_codes] == [("37174-0", "2.16.840.1.113883.6.1"),
                                                         ("DDQH006", "1.2.250.1.213.2.5")]
    assert (h.service_start, h.service_stop) == ("20210108102500+0100", "20210108111700+0100")
    assert (h.author.id, h.author.family, h.author.given) == ("801234560801", "BIDEAULT", "Jacques")
    assert h.author.organization_id == "1750803447"
    assert h.legal_authenticator.id == "801234560801"
    assert h.legal_authenticator.time == "20210108111700+0100"
    assert h.healthcare_facility_type == Code("SA08", "1.2.250.1.71.4.2.4", "Cabinet de groupe")
    assert h.practice_setting.code == "AMBULATOIRE"
    assert h.practice_setting.scheme == "1.2.250.1.213.1.1.4.9"
    assert h.confidentiality.code == "N" and h.confidentiality.scheme == "2.16.840.1.113883.5.25"
    assert h.document_code.code == "18748-4"
    assert h.title == "CR d’imagerie médicale" and h.effective_time == "20210108111700+0100"
    assert h.body == "pdf"


def test_poc_2023_report_documents_three_studies() -> None:
    """cda/drimbox-poc/IMG_CR_IMG_2023.11_CDA-R2-Niveau-1.xml: three CT service events, one
    screening service event with no id (not a study)."""
    h = read_cda(CDA_POC_2023.read_bytes())
    assert str(h.document_id) == "1.2.250.1.213.1.1.1.45.2"
    assert h.study_instance_uids == ("1.2.250.1.3.152.235.2.12.187636474",
                                     "1.2.250.1.3.152.235.2.12.187636475",
                                     "1.2.250.1.3.152.235.2.12.187636476")
    assert h.accession_number.extension == "105234751"
    assert h.placer_order.extension == "984375862"
    assert [c.code for c in h.modality_codes] == ["CT"]
    assert {c.code for c in h.region_codes} == {"774007", "67734004"}
    assert {"ACQH004", "LCQH001", "ZBQH001"} <= {c.code for c in h.act_codes}
    assert h.replaces == "90E1C8EC-F951-4B26-A305-A34848818DD6"
    assert h.patient.ins.matricule == "279035121518989"
    assert h.title.startswith("CR d’imagerie médicale - Scanner")
    assert h.body == "pdf"


@pytest.mark.parametrize("source", ["DOC00002.xml", "patient1.hl7 OBX-5"])
def test_poc_unit_test_report(source: str) -> None:
    """drimbox-poc-test-resources: DOC00002.xml is the CDA patient1.hl7 carries in OBX-5."""
    if source == "DOC00002.xml":
        data = POC_CDA.read_bytes()
    else:
        obx = next(line for line in re.split(rb"\r\n|\r|\n", POC_ORU.read_bytes())
                   if line.startswith(b"OBX|1|ED"))
        data = base64.b64decode(obx.split(b"|")[5])
    h = read_cda(data)
    assert str(h.document_id) == "2.25.308558515749272265601084678280819623195.3.2.1.261020211239"
    assert h.patient.ins.matricule == "248039263001064"
    assert h.patient.ipp == "2963001"
    assert h.study_instance_uids == ("2.16.840.1.113669.632.20.1211.10000231621",)
    assert h.accession_number.extension == "0901160050"
    assert h.healthcare_facility_type.code == "SA07"
    assert h.practice_setting.code == "ETABLISSEMENT"
    assert h.author.id == "899700367909"
    assert h.title == ("DEPISTAGE DU CANCER DU SEIN - FICHE D INTERPRETATION DU BILAN DE "
                       "DIAGNOSTIC DIFFERE")


def _g(transform) -> bytes:  # noqa: ANN001
    return transform(CDA_G1_MAJ.read_text("utf-8")).encode()


@pytest.mark.parametrize(("data", "xpath"), [
    (b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id", "/"),
    (b"<?xml version='1.0'?><foo/>", "/cda:ClinicalDocument"),
    (_g(lambda t: t.replace('<id extension="279035121518989" root="1.2.250.1.213.1.4.10"/>', "")),
     "/ClinicalDocument/recordTarget/patientRole/id"),
    (_g(lambda t: t.replace('<id root="1.2.250.1.213.4.5.2.1.108"/>', '<id root="1.2.x"/>')),
     "/ClinicalDocument/documentationOf[1]/serviceEvent/id/@root"),
    (_g(lambda t: t.replace('<id root="1.2.250.1.213.4.5.2.1.108"/>', "")),
     "/ClinicalDocument/documentationOf/serviceEvent/id"),
    (_g(lambda t: re.sub(r"<confidentialityCode[^>]*/>", "", t)),
     "/ClinicalDocument/confidentialityCode/@code"),
    (_g(lambda t: t.replace('<versionNumber value="2"/>', '<versionNumber value="two"/>')),
     "/ClinicalDocument/versionNumber/@value"),
    (_g(lambda t: re.sub(r"<component>\s*<nonXMLBody>.*</nonXMLBody>\s*</component>", "", t,
                         flags=re.S)), "/ClinicalDocument/component"),
])
def test_problems_name_their_xpath(data: bytes, xpath: str) -> None:
    with pytest.raises(CdaError) as err:
        read_cda(data)
    assert err.value.xpath == xpath


def test_entities_are_not_expanded() -> None:
    data = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            + CDA_G1_MAJ.read_bytes().split(b"?>", 1)[1].replace(b"<title>", b"<title>&x;", 1))
    h = read_cda(data)
    assert "root:" not in h.title
