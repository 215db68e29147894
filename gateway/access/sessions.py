"""Server-side viewer sessions (R15): who a browser is, kept in the index.

A session is opened by a Pro Santé Connect login (``practitioner``) or by a share link whose
birth-date check passed (``share``, limited to one study). The browser holds only a random
id in an HttpOnly cookie; the row is keyed by the id's SHA-256, so the table alone never
yields a usable cookie. A session ends at ``expires_at`` (``viewer_session_hours`` after its
creation), after ``viewer_session_idle_minutes`` unused, at logout, or, for a share session,
when its link is revoked (rows deleted by :mod:`gateway.access.share_links`).

A PSC login under way is a :class:`PendingLogin`: state, nonce and PKCE verifier stay here,
bound to the browser by a short-lived cookie, and are used once.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import delete

from gateway.index.models import PendingLogin as PendingLoginRow
from gateway.index.models import ViewerSession
from gateway.index.store import InstanceIndex

PENDING_LOGIN_SECONDS = 600
#: ``last_seen_at`` is written at most this often (every DICOMweb call reads the session).
_TOUCH_EVERY = timedelta(seconds=60)


def digest(secret: str) -> str:
    """The SHA-256 (hex) under which a random cookie value or token is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _token_cipher(raw: str) -> Fernet:
    """R17: the key that seals a session's PSC access token, derived from the cookie's random
    value (which the index never holds: it keys rows by :func:`digest`, another derivation)."""
    key = hashlib.sha256(f"drimbox-psc-access-token\0{raw}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def aware(value: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes for ``DateTime(timezone=True)``: they are UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True, slots=True)
class Activity:
    """One activity a practitioner may act under (``SubjectRefPro.exercices[].activities[]``).

    The fields after ``label`` are what a VIHF of this practitioner acting for this structure
    needs (R16, SPEC 3.4): kept with the session because userinfo is read only at login."""

    id: str
    label: str
    structure_id: str = ""
    """``Identifiant_Structure``: ``ancienIdentifiantDeLaStructure`` (else the technical id)."""
    sector: str = ""
    """``Secteur_Activite`` code (TRE_R02), ``codeSecteurDactivite``."""
    profession: str = ""
    """``codeProfession`` (TRE_G15, 1.2.250.1.71.1.2.7)."""
    specialty: str = ""
    """``codeSavoirFaire`` (1.2.250.1.71.4.2.5), for doctors and pharmacists."""
    name: str = ""
    """The practitioner's "Prénom Nom" of exercise."""


@dataclass(frozen=True, slots=True)
class SessionInfo:
    kind: str
    subject: str
    activity: str
    activities: tuple[Activity, ...]
    study_uid: str
    share_link_id: str | None
    id_token: str
    expires_at: datetime

    @property
    def needs_activity(self) -> bool:
        return self.kind == "practitioner" and not self.activity


@dataclass(frozen=True, slots=True)
class PendingLogin:
    state: str
    nonce: str
    code_verifier: str
    return_to: str


def _info(row: ViewerSession) -> SessionInfo:
    fields = {f.name for f in dataclasses.fields(Activity)}
    acts = tuple(Activity(**{k: v for k, v in a.items() if k in fields})
                 for a in json.loads(row.activities or "[]"))
    return SessionInfo(
        kind=row.kind, subject=row.subject, activity=row.activity, activities=acts,
        study_uid=row.study_instance_uid, share_link_id=row.share_link_id,
        id_token=row.id_token, expires_at=aware(row.expires_at),  # type: ignore[arg-type]
    )


class SessionStore:
    """Viewer sessions and pending logins in the index."""

    def __init__(self, index: InstanceIndex, lifetime: timedelta, idle: timedelta,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.index = index
        self.lifetime = lifetime
        self.idle = idle
        self.now = now

    # -- sessions ---------------------------------------------------------------------------

    def create(self, kind: str, subject: str, *, activity: str = "",
               activities: tuple[Activity, ...] = (), study_uid: str = "",
               share_link_id: str | None = None, id_token: str = "",
               lifetime: timedelta | None = None, access_token: str = "") -> str:
        """Open a session; return the random id for the cookie (not stored). PSC's
        ``access_token`` (R17: the consumer presents it to Source DRIMboxes) is kept sealed
        with a key only the cookie's value gives (:meth:`access_token`)."""
        raw = secrets.token_urlsafe(32)
        sealed = (_token_cipher(raw).encrypt(access_token.encode()).decode()
                  if access_token else "")
        now = self.now()
        with self.index.write() as s:
            s.execute(delete(ViewerSession).where(ViewerSession.expires_at < now))
            s.add(ViewerSession(
                id_sha256=digest(raw), kind=kind, subject=subject, activity=activity,
                activities=json.dumps([dataclasses.asdict(a) for a in activities]),
                study_instance_uid=study_uid, share_link_id=share_link_id, id_token=id_token,
                psc_access_token=sealed, created_at=now,
                expires_at=now + (lifetime or self.lifetime), last_seen_at=now,
            ))
        return raw

    def find(self, raw: str) -> SessionInfo | None:
        """The live session of a cookie value, or None (unknown, expired or idle: ended)."""
        if not raw or len(raw) > 256:
            return None
        key = digest(raw)
        now = self.now()
        with self.index.read() as s:
            row = s.get(ViewerSession, key)
            if row is None:
                return None
            info = _info(row)
            last_seen = aware(row.last_seen_at)
        assert last_seen is not None
        if info.expires_at <= now or last_seen + self.idle <= now:
            self._delete(key)
            return None
        if now - last_seen >= _TOUCH_EVERY:
            with self.index.write() as s:
                row = s.get(ViewerSession, key)
                if row is not None:
                    row.last_seen_at = now
        return info

    def access_token(self, raw: str) -> str:
        """The PSC access token of the live session of this cookie value, '' when there is
        none (no session, none kept, or not readable with this value)."""
        if self.find(raw) is None:
            return ""
        with self.index.read() as s:
            row = s.get(ViewerSession, digest(raw))
            sealed = row.psc_access_token if row is not None else ""
        if not sealed:
            return ""
        try:
            return _token_cipher(raw).decrypt(sealed.encode()).decode()
        except InvalidToken:
            return ""

    def choose_activity(self, raw: str, activity_id: str) -> Activity | None:
        """Record the practitioner's choice; None when it is not one of the session's."""
        with self.index.write() as s:
            row = s.get(ViewerSession, digest(raw))
            if row is None:
                return None
            chosen = next((a for a in _info(row).activities if a.id == activity_id), None)
            if chosen is not None:
                row.activity = chosen.id
            return chosen

    def grant_study(self, raw: str, study_uid: str) -> bool:
        """R18: the practitioner opened the viewer link of a study's CR; the session
        may see that study (one at a time: a later link replaces the grant). False when the
        session is gone."""
        with self.index.write() as s:
            row = s.get(ViewerSession, digest(raw))
            if row is None or row.kind != "practitioner":
                return False
            row.study_instance_uid = study_uid
            return True

    def end(self, raw: str) -> SessionInfo | None:
        """Delete the session (logout); return what it was, for the audit and PSC's logout."""
        if not raw:
            return None
        key = digest(raw)
        with self.index.write() as s:
            row = s.get(ViewerSession, key)
            if row is None:
                return None
            info = _info(row)
            s.delete(row)
        return info

    def _delete(self, key: str) -> None:
        with self.index.write() as s:
            s.execute(delete(ViewerSession).where(ViewerSession.id_sha256 == key))

    # -- logins under way -------------------------------------------------------------------

    def start_login(self, state: str, nonce: str, code_verifier: str, return_to: str) -> str:
        raw = secrets.token_urlsafe(32)
        now = self.now()
        with self.index.write() as s:
            s.execute(delete(PendingLoginRow).where(PendingLoginRow.expires_at < now))
            s.add(PendingLoginRow(
                id_sha256=digest(raw), state=state, nonce=nonce, code_verifier=code_verifier,
                return_to=return_to, expires_at=now + timedelta(seconds=PENDING_LOGIN_SECONDS),
            ))
        return raw

    def take_login(self, raw: str) -> PendingLogin | None:
        """The pending login of this browser, removed (a callback is used once)."""
        if not raw or len(raw) > 256:
            return None
        with self.index.write() as s:
            row = s.get(PendingLoginRow, digest(raw))
            if row is None:
                return None
            s.delete(row)
            if aware(row.expires_at) <= self.now():  # type: ignore[operator]
                return None
            return PendingLogin(row.state, row.nonce, row.code_verifier, row.return_to)
