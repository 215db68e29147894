"""The access policy (R10), unit by unit: :func:`gateway.access.policy.decide` is
pure, so each rule is checked here on its own; the HTTP enforcement is tested end to end in
``test_dicomweb_access.py``."""

from __future__ import annotations

import pytest

from gateway.access.policy import EVERYTHING, AccessRequest, decide
from gateway.access.principal import ANONYMOUS, Principal
from gateway.index.manifests import ManifestScope

STUDY, OTHER = "1.2.3.1", "1.2.3.2"
SERIES_A, SERIES_B = "1.2.3.1.1", "1.2.3.1.2"
SOP_A1, SOP_A2, SOP_B1 = "1.2.3.1.1.1", "1.2.3.1.1.2", "1.2.3.1.2.1"
KOS = "1.2.3.9"

CONSUMER = Principal(kind="practitioner", subject="899999000001", via="bearer-jwt")
VIEWER = Principal(kind="practitioner", subject="899999000001", roles=frozenset({"viewer"}),
                   via="session")
STAFF = Principal(kind="staff", subject="manip", via="session")
SHARE = Principal(kind="share", subject="share-42", study_uid=STUDY, via="share-link")
ADMIN = Principal(kind="practitioner", subject="899999000002", roles=frozenset({"admin"}),
                  via="bearer-jwt")


def manifest(published: bool = True, withdrawn: bool = False, study: str = STUDY,
             kos: str = KOS) -> ManifestScope:
    # SOP_A2 is in the index but not in the KOS (stored after it was built).
    return ManifestScope(kos, study, published, withdrawn,
                         frozenset({(SERIES_A, SOP_A1), (SERIES_B, SOP_B1)}))


def wado(study=STUDY, series=None, instance=None, kos=KOS) -> AccessRequest:
    return AccessRequest("wado", study, series, instance, kos)


def test_consumer_sees_only_the_kos_instances() -> None:
    d = decide(CONSUMER, wado(), manifest())
    assert d.allowed and d.reason == "kos_scope" and d.kos_uid == KOS
    assert d.visible.study_uids == {STUDY}
    assert d.visible.sop_instance_uids == {SOP_A1, SOP_B1}
    assert d.visible.series_uids == {SERIES_A, SERIES_B}
    assert not d.visible.shows_instance(SOP_A2) and d.visible.shows_instance(SOP_A1)


def test_consumer_search_without_a_study_is_limited_to_the_kos_study() -> None:
    d = decide(CONSUMER, AccessRequest("qido", kos_uid=KOS), manifest())
    assert d.allowed and d.visible.study_uids == {STUDY}
    assert not d.visible.shows_study(OTHER)


@pytest.mark.parametrize(("request_", "scope", "reason", "not_found"), [
    (wado(kos=None), None, "kos_header_missing", False),
    (wado(), None, "kos_unknown", False),
    (wado(), manifest(kos="1.2.3.8"), "kos_unknown", False),
    (wado(), manifest(published=False), "kos_not_published", False),
    (wado(), manifest(withdrawn=True), "kos_withdrawn", False),
    (wado(study=OTHER), manifest(), "kos_other_study", False),
    (wado(study=STUDY), manifest(study=OTHER), "kos_other_study", False),
    (wado(series="1.2.3.1.3"), manifest(), "series_outside_kos", True),
    (wado(series=SERIES_A, instance=SOP_A2), manifest(), "instance_outside_kos", True),
    (wado(series=SERIES_B, instance=SOP_A1), manifest(), "instance_outside_kos", True),
    (AccessRequest("stow", kos_uid=KOS), manifest(), "store_not_permitted", False),
    (AccessRequest("admin"), None, "admin_role_required", False),
])
def test_consumer_refusals(request_, scope, reason, not_found) -> None:
    d = decide(CONSUMER, request_, scope)
    assert not d.allowed and d.reason == reason and d.not_found is not_found
    assert not d.visible.shows_study(STUDY)  # a refusal shows nothing


def test_instance_in_the_kos_is_allowed() -> None:
    d = decide(CONSUMER, wado(series=SERIES_A, instance=SOP_A1), manifest())
    assert d.allowed and d.reason == "kos_scope"


def test_staff_and_viewer_role_see_the_whole_centre() -> None:
    assert decide(STAFF, wado(kos=None)) .visible == EVERYTHING
    d = decide(VIEWER, wado(study=OTHER, kos=None))
    assert d.allowed and d.reason == "viewer_role" and d.visible == EVERYTHING
    assert decide(STAFF, AccessRequest("stow")).reason == "staff_store"
    assert not decide(VIEWER, AccessRequest("stow")).allowed


def test_share_opens_its_study_only() -> None:
    d = decide(SHARE, AccessRequest("qido"))
    assert d.allowed and d.reason == "share_study" and d.visible.study_uids == {STUDY}
    assert decide(SHARE, wado(kos=None)).allowed
    d = decide(SHARE, wado(study=OTHER, kos=None))
    assert not d.allowed and d.reason == "study_not_shared"
    link = Principal(kind="practitioner", subject="899999000001", study_uid=STUDY,
                     roles=frozenset({"viewer"}), via="session")
    assert decide(link, wado(study=OTHER, kos=None)).reason == "study_not_shared"
    assert decide(link, wado(kos=None)).reason == "study_link"
    assert not decide(Principal(kind="share", subject="s"), wado(kos=None)).allowed


def test_anonymous_is_development_only_everything_but_admin() -> None:
    d = decide(ANONYMOUS, wado(kos=None))
    assert d.allowed and d.reason == "anonymous_dev" and d.visible == EVERYTHING
    assert decide(ANONYMOUS, AccessRequest("stow")).allowed
    assert not decide(ANONYMOUS, AccessRequest("admin")).allowed


def test_admin_role_opens_admin_endpoints_and_store() -> None:
    assert decide(ADMIN, AccessRequest("admin")).reason == "admin_role"
    assert decide(ADMIN, AccessRequest("stow")).reason == "staff_store"
    # ...but not patient data beyond what a consumer sees.
    assert decide(ADMIN, wado(kos=None)).reason == "kos_header_missing"
