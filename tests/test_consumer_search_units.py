"""The pieces of the consumer's DMP search (R16) without processes: the filters of the page,
the VIHF of a PSC practitioner's activity (SPEC 3.4), what a DocumentEntry shows, and the
order of the calls (no DMP call without consent; no search without TD0.2's access)."""

from __future__ import annotations

import datetime as dt

import pytest

from adapters.dmp.consumer import ConsumerDmp, Lps, vihf_context
from adapters.dmp.errors import DmpRefusedError, DmpTransientError, XdsError
from adapters.dmp.patients import OPEN, REFUSED, DmpAccess
from adapters.psc.login import activities_of
from adapters.psc.practitioners import userinfo_claims
from gateway.access.sessions import Activity
from gateway.consumer import search as srch
from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import Code, PublishedEntry

INS = Ins("279035121518989", "1.2.250.1.213.1.4.10")
LPS = Lps("LPS-TEST", "DRIMbox", "0.1.0", "HOMOL-TEST")


def test_filters_are_checked_by_name() -> None:
    f = srch.parse_filters({"modality": "mr", "region": "72696002", "from": "2024-01-01",
                            "to": "2024-12-31", "accession": "ACN108",
                            "accession_issuer": "1.2.250.1.213.4.5.2.5", "other": "x"})
    assert (f.modality, f.date_from, f.date_to) == ("MR", dt.date(2024, 1, 1),
                                                      dt.date(2024, 12, 31))
    assert f.summary() == "modality=MR,region=72696002,from=2024-01-01,to=2024-12-31,accession=yes"
    assert srch.parse_filters({}).empty
    with pytest.raises(srch.FilterError) as exc:
        srch.parse_filters({"modality": "ZZ", "region": "genou", "from": "2024-02-30",
                            "accession_issuer": "not-an-oid"})
    assert set(exc.value.problems) == {"modality", "region", "from", "accession",
                                       "accession_issuer"}
    with pytest.raises(srch.FilterError) as exc:
        srch.parse_filters({"from": "2024-05-01", "to": "2024-04-01"})
    assert set(exc.value.problems) == {"to"}


def test_the_vihf_of_a_practitioners_activity() -> None:
    """Structure, sector, profession and savoir-faire come from the activity chosen in the
    userinfo's SubjectRefPro; the resource is the context's INS."""
    cabinet, hospital = activities_of(userinfo_claims("899999000001"))
    assert (hospital.structure_id, hospital.sector, hospital.profession, hospital.specialty,
            hospital.name) == ("499999000000202", "SA01", "10", "SM44", "CLAIRE MARTIN")
    v = vihf_context("899999000001", hospital, INS, LPS)
    assert (v.subject_id, v.subject_name, v.structure_id, v.activity_sector) == (
        "899999000001", "CLAIRE MARTIN", "499999000000202", "SA01")
    assert [(r.code, r.system) for r in v.roles] == [("10", "1.2.250.1.71.1.2.7"),
                                                     ("SM44", "1.2.250.1.71.4.2.5")]
    assert v.patient_id == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
    nurse = vihf_context("1", Activity("R1", "x", "1", "SA07", "60", "XX", "A B"),
                              INS, LPS)
    assert [r.code for r in nurse.roles] == ["60"]  # savoir-faire for doctors/pharmacists only
    with pytest.raises(ValueError, match="structure"):
        vihf_context("1", Activity("R1", "old session"), INS, LPS)


class FakeDmp:
    def __init__(self, access: DmpAccess | Exception, entries=()) -> None:  # noqa: ANN001
        self.access, self.entries, self.calls = access, list(entries), []

    def check_access(self, patient, vihf):  # noqa: ANN001, ANN201
        self.calls.append("td02")
        if isinstance(self.access, Exception):
            raise self.access
        return self.access

    def find_documents(self, patient, vihf, **kw):  # noqa: ANN001, ANN003, ANN201
        self.calls.append(("iti18", kw))
        return self.entries


def entry(uid: str, start: str, *, mime: str = "application/dicom", status: str = "Approved",
          refs: tuple[str, ...] = ()) -> PublishedEntry:
    return PublishedEntry(
        entry_uuid=f"urn:uuid:{uid}", unique_id=uid, patient_id="p", status=status,
        mime_type=mime, creation_time=start, service_start=start, title="Reference",
        class_code=Code("31", "1.2.250.1.213.1.1.4.1", ""),
        type_code=Code("IMG-KOS", "1.2.250.1.213.1.1.4.12", ""), reference_ids=refs,
        event_codes=(Code("CT", srch.SCHEME_MODALITY, "CT"),
                     Code("ZCQK002", "1.2.250.1.213.2.5", "Scanner du thorax")),
        author_institutions=("CENTRE X^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1",),
        legal_authenticator="801^DUPONT^Anne^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS")


def test_search_order_of_calls_and_result() -> None:
    vihf = vihf_context("899999000001", activities_of(userinfo_claims("899999000001"))[1],
                             INS, LPS)
    dmp = FakeDmp(DmpAccess(OPEN))
    assert srch.search(ConsumerDmp(dmp, vihf), INS, False, srch.Filters()).problem == "no_consent"
    assert dmp.calls == []  # no consent: not even TD0.2
    dmp = FakeDmp(DmpAccess(REFUSED, "R"), [entry("1", "2024")])
    assert srch.search(ConsumerDmp(dmp, vihf), INS, True, srch.Filters()).problem == "access_refused"
    assert dmp.calls == ["td02"]
    acn = "ACN1^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession"
    dmp = FakeDmp(DmpAccess(OPEN), [entry("1", "20240101"), entry("2", "20250101", refs=(acn,)),
                                    entry("3", "20260101", mime="text/xml"),
                                    entry("4", "20270101", status="Deprecated")])
    out = srch.search(ConsumerDmp(dmp, vihf), INS, True, srch.Filters(modality="CT"))
    assert [p.document_unique_id for p in out.priors] == ["2", "1"] and out.total == 2
    first = out.priors[0]
    assert (first.description, first.author, first.centre, first.date_label) == (
        "Scanner du thorax", "Anne DUPONT", "CENTRE X", "01/01/2025")
    (_, kw), = [c for c in dmp.calls if c != "td02"]
    assert kw["event_codes"] == ((Code("CT", srch.SCHEME_MODALITY, ""),),)
    out = srch.search(ConsumerDmp(dmp, vihf), INS, True, srch.Filters(accession="ACN1"))
    assert [p.document_unique_id for p in out.priors] == ["2"]
    out = srch.search(ConsumerDmp(dmp, vihf), INS, True, srch.Filters(accession="ACN1",
                                                          accession_issuer="1.2.3"))
    assert dmp.calls[-1][1]["reference_ids"] == [acn]
    assert srch.search(ConsumerDmp(FakeDmp(DmpTransientError("down")), vihf), INS, True,
                       srch.Filters()).problem == "dmp_unreachable"
    refused = srch.search(ConsumerDmp(FakeDmp(DmpRefusedError([XdsError("XDSRegistryError",
                                                                      "x")])), vihf),
                          INS, True, srch.Filters())
    assert (refused.problem, refused.detail) == ("dmp_refused", "XDSRegistryError")
