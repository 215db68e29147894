"""Patient share links: the CD replacement (R15 for the sessions they open).

A link opens one study to whoever holds it *and* knows the patient's birth date (compared
with PatientBirthDate in the index). Design:

* The token is 32 random bytes (``secrets.token_urlsafe``); the index keeps only its SHA-256.
  Chosen over an HMAC-signed link: a lookup in the index is needed anyway (revocation, the
  attempt counter), so a signature would add a server secret to keep, rotate and protect
  without removing that lookup; and a copy of the index yields no usable link.
* ``id`` is a short random public name (lists, revocation, audit); it opens nothing.
* Expiry (``expires_at``) and revocation (``revoked_at``) are checked on every use, and
  revoking deletes the link's viewer sessions in the same transaction: it takes effect at once.
* ``share_max_attempts`` wrong birth dates lock the link for ``share_lock_minutes``; the
  counter and the lock live in the row, updated under a row lock, so they hold across worker
  processes and restarts. While locked even the right date is refused.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import delete, select

from gateway.access.sessions import aware, digest
from gateway.index.models import Patient, ShareLink, Study, ViewerSession
from gateway.index.store import InstanceIndex


class ShareLinkDenied(Exception):
    """A share link may not be used. ``reason``: unknown, expired, revoked, locked,
    wrong_birth_date, bad_birth_date (not a date), no_birth_date (the index has none)."""

    def __init__(self, reason: str, link_id: str = "", study_uid: str = "",
                 retry_after: int = 0, attempts_left: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.link_id = link_id
        self.study_uid = study_uid
        self.retry_after = retry_after
        self.attempts_left = attempts_left


class CannotShare(Exception):
    """A link cannot be made for this study (unknown study, no birth date to check)."""


@dataclass(frozen=True, slots=True)
class ShareLinkInfo:
    id: str
    study_uid: str
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    failed_attempts: int
    locked_until: datetime | None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        if self.locked_until is not None and self.locked_until > now:
            return "locked"
        return "active"


@dataclass(frozen=True, slots=True)
class NewShareLink:
    link: ShareLinkInfo
    token: str
    """Given once to the patient (URL, QR code); never stored."""


@dataclass(frozen=True, slots=True)
class StudySummary:
    """What a handout may show: nothing the patient does not already know."""

    study_date: str
    description: str


def _info(row: ShareLink) -> ShareLinkInfo:
    return ShareLinkInfo(
        id=row.id, study_uid=row.study_instance_uid, created_at=aware(row.created_at),
        created_by=row.created_by, expires_at=aware(row.expires_at),
        revoked_at=aware(row.revoked_at), failed_attempts=row.failed_attempts,
        locked_until=aware(row.locked_until),
    )  # type: ignore[arg-type]


def parse_birth_date(text: str) -> date:
    """A birth date as a patient types it: ``YYYY-MM-DD`` (HTML date input), ``DD/MM/YYYY``
    (French) or ``YYYYMMDD`` (DICOM DA). Raises ``ValueError``."""
    text = text.strip()
    for pattern, order in ((r"(\d{4})-(\d{2})-(\d{2})", "ymd"), (r"(\d{2})/(\d{2})/(\d{4})", "dmy"),
                           (r"(\d{4})(\d{2})(\d{2})", "ymd")):
        m = re.fullmatch(pattern, text)
        if m:
            parts = dict(zip(order, (int(g) for g in m.groups()), strict=True))
            return date(parts["y"], parts["m"], parts["d"])
    raise ValueError(f"{text!r} is not a date")


class ShareLinks:
    def __init__(self, index: InstanceIndex, max_attempts: int = 5,
                 lock: timedelta = timedelta(minutes=15), max_days: int = 365,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.index = index
        self.max_attempts = max_attempts
        self.lock = lock
        self.max_days = max_days
        self.now = now

    def _birth_date(self, s, study_uid: str) -> str | None:  # noqa: ANN001 - Session
        return s.execute(
            select(Patient.patient_birth_date).join(Study, Study.patient_pk == Patient.id)
            .where(Study.study_instance_uid == study_uid)
        ).scalar_one_or_none()

    def create(self, study_uid: str, days: int, created_by: str) -> NewShareLink:
        if not 1 <= days <= self.max_days:
            raise CannotShare(f"--days must be between 1 and {self.max_days}")
        token = secrets.token_urlsafe(32)
        now = self.now()
        with self.index.write() as s:
            birth = self._birth_date(s, study_uid)
            if birth is None:
                raise CannotShare(f"no study {study_uid} in the index")
            try:
                parse_birth_date(birth)
            except ValueError:
                raise CannotShare(
                    "the study has no valid PatientBirthDate: the patient could not prove "
                    "who they are when opening the link") from None
            row = ShareLink(
                id=secrets.token_hex(6), study_instance_uid=study_uid,
                token_sha256=digest(token), created_at=now, created_by=created_by,
                expires_at=now + timedelta(days=days), revoked_at=None, failed_attempts=0,
                locked_until=None,
            )
            s.add(row)
            s.flush()
            info = _info(row)
        return NewShareLink(info, token)

    def list(self, study_uid: str | None = None) -> list[ShareLinkInfo]:
        with self.index.read() as s:
            q = select(ShareLink).order_by(ShareLink.created_at.desc())
            if study_uid:
                q = q.where(ShareLink.study_instance_uid == study_uid)
            return [_info(r) for r in s.execute(q).scalars()]

    def get(self, link_id: str) -> ShareLinkInfo | None:
        with self.index.read() as s:
            row = s.get(ShareLink, link_id)
            return _info(row) if row else None

    def revoke(self, link_id: str) -> ShareLinkInfo | None:
        """Revoke a link and end its sessions at once; None when there is no such link."""
        with self.index.write() as s:
            row = s.get(ShareLink, link_id, with_for_update=True)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = self.now()
            s.execute(delete(ViewerSession).where(ViewerSession.share_link_id == link_id))
            s.flush()
            return _info(row)

    def _usable(self, row: ShareLink | None, now: datetime) -> ShareLink:
        if row is None:
            raise ShareLinkDenied("unknown")
        info = _info(row)
        status = info.status(now)
        if status in ("revoked", "expired"):
            raise ShareLinkDenied(status, row.id, row.study_instance_uid)
        if status == "locked":
            assert info.locked_until is not None
            raise ShareLinkDenied("locked", row.id, row.study_instance_uid,
                                  retry_after=int((info.locked_until - now).total_seconds()) + 1)
        return row

    def lookup(self, token: str) -> ShareLinkInfo:
        """The link a token names, if it may be used now; else :class:`ShareLinkDenied`."""
        with self.index.read() as s:
            row = s.execute(select(ShareLink).where(ShareLink.token_sha256 == digest(token))
                            ).scalar_one_or_none()
            return _info(self._usable(row, self.now()))

    def check_birth_date(self, token: str, typed: str) -> ShareLinkInfo:
        """The link, when ``typed`` is the patient's birth date; a wrong date counts towards
        the lock. Raises :class:`ShareLinkDenied`."""
        now = self.now()
        denied: ShareLinkDenied | None = None
        with self.index.write() as s:
            row = s.execute(select(ShareLink).where(ShareLink.token_sha256 == digest(token))
                            .with_for_update()).scalar_one_or_none()
            row = self._usable(row, now)
            try:
                given = parse_birth_date(typed)
            except ValueError:
                raise ShareLinkDenied("bad_birth_date", row.id, row.study_instance_uid,
                                      attempts_left=self.max_attempts - row.failed_attempts
                                      ) from None
            stored = self._birth_date(s, row.study_instance_uid) or ""
            try:
                expected: date | None = parse_birth_date(stored)
            except ValueError:
                expected = None
            if expected is None:
                denied = ShareLinkDenied("no_birth_date", row.id, row.study_instance_uid)
            elif given != expected:
                row.failed_attempts += 1
                left = self.max_attempts - row.failed_attempts
                if left <= 0:
                    row.locked_until = now + self.lock
                    row.failed_attempts = 0
                    denied = ShareLinkDenied("locked", row.id, row.study_instance_uid,
                                             retry_after=int(self.lock.total_seconds()))
                else:
                    denied = ShareLinkDenied("wrong_birth_date", row.id,
                                             row.study_instance_uid, attempts_left=left)
            else:
                row.failed_attempts = 0
                row.locked_until = None
            s.flush()
            info = _info(row)
        if denied is not None:  # raised after the commit: the counter must be kept
            raise denied
        return info

    def is_usable(self, link_id: str) -> bool:
        """Whether a link still opens its study (checked on every request of its sessions)."""
        with self.index.read() as s:
            row = s.get(ShareLink, link_id)
            if row is None:
                return False
            return _info(row).status(self.now()) in ("active", "locked")

    def summary(self, study_uid: str) -> StudySummary:
        with self.index.read() as s:
            row = s.execute(select(Study.study_date, Study.study_description)
                            .where(Study.study_instance_uid == study_uid)).one_or_none()
        if row is None:
            return StudySummary("", "")
        return StudySummary(row.study_date, row.study_description)
