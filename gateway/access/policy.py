"""The access policy of the Source (R10): who may see which instances.

Pure domain: given a :class:`~gateway.access.principal.Principal`, what it asks
(:class:`AccessRequest`: the action, the study / series / instance UIDs of the request and the
``KOS-SOPInstanceUID`` header, SPEC section 1.3 step 6) and the manifest that header names
(:class:`~gateway.index.manifests.ManifestScope`, looked up by the caller), :func:`decide`
answers a :class:`Decision`: allowed or denied, a stable reason code for the audit trail,
and what is visible (:class:`Visibility`). The HTTP face turns a denial into its status and
filters what it sends by the visibility; nothing here reads the index or the request.

The rules, in order:

1. **Anonymous** (``dicomweb_auth = none``, loopback development only): everything, STOW
   included; no admin endpoint.
2. **Admin endpoints** (``admin``): the ``admin`` role only.
3. **STOW** (``stow``): staff principals or the ``admin`` role (a consumer DRIMbox never
   writes into a Source).
4. **Study-limited principal** (a share link, the R18 viewer link: ``study_uid`` set): that
   study only; another study is 403.
5. **Centre staff** (kind ``staff``) and principals with the ``viewer`` role: every study.
6. **Any other practitioner** (a consumer DRIMbox with a PSC bearer token): R10. The request
   must carry ``KOS-SOPInstanceUID`` naming a manifest this DRIMbox published for *that*
   study and has not withdrawn (403 otherwise); only the instances it references are visible:
   a series or an instance outside it is 404, as if it did not exist (its existence is not
   revealed), and searches and study-level answers are cut down to the referenced set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.access.principal import Principal
from gateway.index.manifests import ManifestScope

Action = Literal["qido", "wado", "metadata", "rendered", "download", "stow", "admin"]
READ_ACTIONS = frozenset({"qido", "wado", "metadata", "rendered", "download"})

ROLE_VIEWER = "viewer"
"""May see every study of this centre (in the viewer, and over DICOMweb)."""
ROLE_ADMIN = "admin"
"""May use the admin endpoints: audit export, share links, publication outbox."""

KOS_HEADER = "KOS-SOPInstanceUID"
"""The request header naming the manifest a consumer read from the DMP (SPEC 1.3 step 6)."""


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """What one request asks for; UIDs absent from the request are None."""

    action: Action
    study_uid: str | None = None
    series_uid: str | None = None
    instance_uid: str | None = None
    kos_uid: str | None = None


@dataclass(frozen=True, slots=True)
class Visibility:
    """What an allowed principal may see; None at a level means "no limit at that level"."""

    study_uids: frozenset[str] | None = None
    series_uids: frozenset[str] | None = None
    sop_instance_uids: frozenset[str] | None = None

    @property
    def unlimited(self) -> bool:
        return self.study_uids is None and self.series_uids is None \
            and self.sop_instance_uids is None

    def shows_study(self, study_uid: str) -> bool:
        return self.study_uids is None or study_uid in self.study_uids

    def shows_series(self, series_uid: str) -> bool:
        return self.series_uids is None or series_uid in self.series_uids

    def shows_instance(self, sop_instance_uid: str) -> bool:
        return self.sop_instance_uids is None or sop_instance_uid in self.sop_instance_uids


EVERYTHING = Visibility()
NOTHING = Visibility(frozenset(), frozenset(), frozenset())


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    """A stable code for the audit trail (see the module docstring and README)."""
    visible: Visibility = field(default=NOTHING)
    not_found: bool = False
    """Denied as if the resource did not exist (404), not as forbidden (403)."""
    kos_uid: str = ""
    """The manifest the decision rests on, when it does."""


def _allow(reason: str, visible: Visibility = EVERYTHING, kos_uid: str = "") -> Decision:
    return Decision(True, reason, visible, kos_uid=kos_uid)


def _deny(reason: str, *, not_found: bool = False, kos_uid: str = "") -> Decision:
    return Decision(False, reason, NOTHING, not_found, kos_uid)


def decide(principal: Principal, request: AccessRequest,
           manifest: ManifestScope | None = None) -> Decision:
    """The decision for ``principal`` asking ``request``; ``manifest`` is the manifest named
    by ``request.kos_uid`` (None when there is no header or we never built that KOS)."""
    if request.action == "admin":
        if ROLE_ADMIN in principal.roles:
            return _allow("admin_role")
        return _deny("admin_role_required")
    if principal.is_anonymous:
        return _allow("anonymous_dev")
    if request.action == "stow":
        if principal.kind == "staff" or ROLE_ADMIN in principal.roles:
            return _allow("staff_store")
        return _deny("store_not_permitted")
    if principal.study_uid is not None:
        return _study_limited(principal.study_uid, request,
                              "share_study" if principal.kind == "share" else "study_link")
    if principal.kind == "staff":
        return _allow("centre_staff")
    if ROLE_VIEWER in principal.roles:
        return _allow("viewer_role")
    if principal.kind == "share":  # a share without its study: opens nothing
        return _deny("share_without_study")
    return _kos_scoped(request, manifest)


def _study_limited(study_uid: str, request: AccessRequest, reason: str) -> Decision:
    if request.study_uid is not None and request.study_uid != study_uid:
        return _deny("study_not_shared")
    return _allow(reason, Visibility(study_uids=frozenset({study_uid})))


def _kos_scoped(request: AccessRequest, manifest: ManifestScope | None) -> Decision:
    """R10: a consumer sees what the KOS it names references, nothing else."""
    kos_uid = request.kos_uid or ""
    if not kos_uid:
        return _deny("kos_header_missing")
    if manifest is None or manifest.kos_uid != kos_uid:
        return _deny("kos_unknown", kos_uid=kos_uid)
    if not manifest.is_current:
        return _deny("kos_withdrawn" if manifest.withdrawn else "kos_not_published",
                     kos_uid=kos_uid)
    if request.study_uid is not None and request.study_uid != manifest.study_instance_uid:
        return _deny("kos_other_study", kos_uid=kos_uid)
    if request.series_uid is not None and request.series_uid not in manifest.series_instance_uids:
        return _deny("series_outside_kos", not_found=True, kos_uid=kos_uid)
    if request.instance_uid is not None and (request.series_uid, request.instance_uid) not in \
            manifest.instances:
        return _deny("instance_outside_kos", not_found=True, kos_uid=kos_uid)
    visible = Visibility(frozenset({manifest.study_instance_uid}), manifest.series_instance_uids,
                         manifest.sop_instance_uids)
    return _allow("kos_scope", visible, kos_uid)
