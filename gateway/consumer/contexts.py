"""Where patient contexts are kept (R13): server-side, in the index, never in a URL.

An appel contextuel arrives as a cross-site POST, which carries none of our SameSite=Lax
cookies: it cannot know the practitioner's session. So :meth:`ContextStore.put_pending`
keeps the context under the SHA-256 of a new random value the HTTP face sets as a short-lived
cookie; the consumer page, reached by the browser's 303 (a same-site GET, session cookie
present, after the PSC login when there was none), :meth:`~ContextStore.claim`\\ s it for the
session. A session's current context is its latest claimed one; the others are deleted at the
claim. Contexts end with ``expires_at`` (pending: :data:`PENDING_CONTEXT_SECONDS`; claimed: the
session's own end), and claimed rows whose session is gone are swept at the next put.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from gateway.access.sessions import aware, digest
from gateway.consumer.context import PatientContext
from gateway.index.models import ConsumerContext, ViewerSession
from gateway.index.store import InstanceIndex

#: A context not claimed within this time (the PSC login included) is dropped.
PENDING_CONTEXT_SECONDS = 900

SOURCE_APPEL = "appel-contextuel"
SOURCE_FORM = "search-form"


@dataclass(frozen=True, slots=True)
class CurrentContext:
    """A claimed context: its id (what later steps hang off) and the patient."""

    id: int
    patient: PatientContext
    source: str
    created_at: datetime


class ContextStore:
    def __init__(self, index: InstanceIndex,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.index = index
        self.now = now

    def put_pending(self, patient: PatientContext, source: str) -> str:
        """Keep a context for the browser; return the random value for its cookie."""
        raw = secrets.token_urlsafe(32)
        now = self.now()
        with self.index.write() as s:
            s.execute(delete(ConsumerContext).where(ConsumerContext.expires_at < now))
            s.execute(delete(ConsumerContext).where(
                ConsumerContext.session_sha256.is_not(None),
                ConsumerContext.session_sha256.not_in(select(ViewerSession.id_sha256))))
            s.add(ConsumerContext(
                pending_sha256=digest(raw), session_sha256=None, ins_matricule=patient.ins,
                traits=patient.to_json(), situation=patient.situation, source=source,
                created_at=now, expires_at=now + timedelta(seconds=PENDING_CONTEXT_SECONDS)))
        return raw

    def pending(self, raw: str) -> PatientContext | None:
        """The live pending context of a cookie value, without claiming it."""
        if not raw or len(raw) > 256:
            return None
        with self.index.read() as s:
            row = s.scalar(select(ConsumerContext)
                           .where(ConsumerContext.pending_sha256 == digest(raw)))
            if row is None or aware(row.expires_at) <= self.now():  # type: ignore[operator]
                return None
            return PatientContext.from_json(row.traits)

    def claim(self, raw: str, session_raw: str, session_expires_at: datetime
              ) -> CurrentContext | None:
        """Make the pending context of ``raw`` the session's current one (its earlier contexts
        are deleted); None when there is none (unknown, expired or already claimed)."""
        if not raw or len(raw) > 256 or not session_raw:
            return None
        now = self.now()
        session_key = digest(session_raw)
        with self.index.write() as s:
            row = s.scalar(select(ConsumerContext)
                           .where(ConsumerContext.pending_sha256 == digest(raw)))
            if row is None or aware(row.expires_at) <= now:  # type: ignore[operator]
                return None
            s.execute(delete(ConsumerContext).where(
                ConsumerContext.session_sha256 == session_key))
            row.pending_sha256 = None
            row.session_sha256 = session_key
            row.expires_at = session_expires_at
            s.flush()
            return CurrentContext(row.id, PatientContext.from_json(row.traits), row.source,
                                  aware(row.created_at))  # type: ignore[arg-type]

    def current(self, session_raw: str) -> CurrentContext | None:
        """The session's current context, or None."""
        if not session_raw:
            return None
        with self.index.read() as s:
            row = s.scalar(select(ConsumerContext)
                           .where(ConsumerContext.session_sha256 == digest(session_raw))
                           .order_by(ConsumerContext.id.desc()).limit(1))
            if row is None or aware(row.expires_at) <= self.now():  # type: ignore[operator]
                return None
            return CurrentContext(row.id, PatientContext.from_json(row.traits), row.source,
                                  aware(row.created_at))  # type: ignore[arg-type]
