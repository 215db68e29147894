"""The whitelist a running gateway trusts: the last good list, kept across refused refreshes
and restarts, and the daily refresher (R11).

A refresh fetches, verifies and parses the list. Only a list that passes every check replaces
the current one; it is then written (the bytes as received, so that it can be verified again)
to ``<data_dir>/whitelist/last-good.xml``. A refused or unreachable list changes nothing but
``last_error``. At start-up the saved copy is verified again before it is trusted (its signer
certificate may have expired, or the anchors changed, in the meantime). A list generated
before the current one is refused too (an old list replayed would resurrect removed hosts).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from adapters.whitelist.parse import parse_whitelist
from adapters.whitelist.source import WhitelistUnavailable, fetch, fetch_crls
from adapters.whitelist.verify import DS, WhitelistRefused, WhitelistVerifier, xml_parser
from gateway.consumer.trust import Decision, Whitelist

log = logging.getLogger(__name__)

LAST_GOOD = "last-good.xml"


@dataclass(frozen=True, slots=True)
class RefreshResult:
    accepted: bool
    reason: str
    whitelist: Whitelist | None = None
    """The list now trusted (the new one, or the last good one after a refusal)."""


def _generated(whitelist: Whitelist) -> dt.datetime:
    return dt.datetime.fromisoformat(whitelist.generated_at)


class WhitelistKeeper:
    """Holds the trusted list. Thread-safe; :meth:`is_trusted` never does I/O."""

    def __init__(self, source: str | None, verifier: WhitelistVerifier | None, state_dir: Path,
                 *, allow_unsigned: bool = False, ca_bundle: Path | None = None,
                 timeout: float = 30.0, crls: list[str] | None = None) -> None:
        self.source = source
        self.verifier = verifier
        self.state_dir = Path(state_dir)
        self.allow_unsigned = allow_unsigned
        self.ca_bundle = ca_bundle
        self.timeout = timeout
        self.crls = list(crls or [])
        """CRL locations (paths, http(s) URLs) fetched at each check; empty: revocation is
        not checked."""
        self.on_refresh: Callable[[RefreshResult], None] | None = None
        """Told of each refresh's result (the gateway audits it, R11)."""
        self._lock = threading.Lock()
        self._current: Whitelist | None = None
        self.last_error: str | None = None
        self.last_attempt: dt.datetime | None = None
        self.last_success: dt.datetime | None = None

    @classmethod
    def from_settings(cls, settings) -> WhitelistKeeper:  # noqa: ANN001 - gateway.config.Settings
        """Raises ``ValueError`` when the trust anchors cannot be read."""
        verifier = None
        if settings.whitelist_trust_anchors is not None:
            verifier = WhitelistVerifier(settings.whitelist_trust_anchors,
                                         signer_cn=settings.whitelist_signer_cn,
                                         signer_ou=settings.whitelist_signer_ou)
        return cls(settings.whitelist_source, verifier, settings.data_dir / "whitelist",
                   allow_unsigned=settings.whitelist_insecure_allow_unsigned,
                   ca_bundle=settings.whitelist_tls_ca_bundle,
                   timeout=settings.whitelist_timeout, crls=settings.whitelist_crls)

    @property
    def current(self) -> Whitelist | None:
        with self._lock:
            return self._current

    def is_trusted(self, retrieve_url: str) -> Decision:
        current = self.current
        if current is None:
            why = f" (last error: {self.last_error})" if self.last_error else ""
            return Decision(False, f"no verified whitelist yet{why}")
        return current.is_trusted(retrieve_url)

    def is_trusted_certificate(self, subject_dn: str) -> Decision:
        """Whether a peer's TLS certificate subject is an operator DN of the list (R11)."""
        current = self.current
        if current is None:
            return Decision(False, "no verified whitelist yet")
        return current.is_trusted_certificate(subject_dn)

    # -- checking one document ------------------------------------------------------------
    def check(self, data: bytes, *, crl_required: bool = True) -> Whitelist:
        """Verify and parse one document; :class:`WhitelistRefused` says why not. When the
        CRLs cannot be fetched the list is refused, unless ``crl_required`` is false (the
        saved list at start-up, checked when it was saved): then revocation is skipped."""
        if self.allow_unsigned and not _is_signed(data):
            log.warning("whitelist: accepting an UNSIGNED list (whitelist_insecure_allow_unsigned"
                        " is on: development only, never in production)")
            try:
                root = etree.fromstring(data, parser=xml_parser())
            except etree.XMLSyntaxError as exc:
                raise WhitelistRefused(f"not well-formed XML: {exc}") from None
            return parse_whitelist(root)
        if self.verifier is None:
            raise WhitelistRefused("no trust anchors configured (whitelist_trust_anchors): a "
                                   "signed list cannot be verified")
        crls = None
        if self.crls:
            try:
                crls = fetch_crls(self.crls, ca_bundle=self.ca_bundle, timeout=self.timeout)
            except WhitelistUnavailable as exc:
                if crl_required:
                    raise WhitelistRefused(f"revocation status unknown: {exc}") from None
                log.warning("whitelist: revocation not checked now (%s)", exc)
        verified = self.verifier.verify(data, crls)
        return parse_whitelist(verified.root, signer=verified.signer,
                               signed_at=verified.signing_time)

    # -- the last good list ---------------------------------------------------------------
    def load_persisted(self) -> Whitelist | None:
        """Trust the saved last good list again, if it still verifies."""
        path = self.state_dir / LAST_GOOD
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("whitelist: cannot read the saved list %s: %s", path, exc)
            return None
        try:
            whitelist = self.check(data, crl_required=False)
        except WhitelistRefused as exc:
            self.last_error = f"saved list {path} refused: {exc}"
            log.error("whitelist: %s", self.last_error)
            return None
        with self._lock:
            self._current = whitelist
        log.info("whitelist: saved list of %s loaded (%d DRIMbox)", whitelist.generated_at,
                 len(whitelist.sources))
        return whitelist

    def _persist(self, data: bytes) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / (LAST_GOOD + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_dir / LAST_GOOD)
        try:
            fd = os.open(self.state_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    # -- refreshing -----------------------------------------------------------------------
    def refresh(self, source: str | None = None) -> RefreshResult:
        """Fetch, verify and, when it passes, adopt the list. Never raises for a bad list."""
        source = source or self.source
        self.last_attempt = dt.datetime.now(dt.UTC)
        if not source:
            return self._refused("no whitelist source configured (whitelist_source)")
        try:
            data = fetch(source, ca_bundle=self.ca_bundle, timeout=self.timeout)
        except WhitelistUnavailable as exc:
            return self._refused(f"cannot fetch the list: {exc}")
        try:
            whitelist = self.check(data)
        except WhitelistRefused as exc:
            return self._refused(f"list from {source} refused: {exc}")
        previous = self.current
        if previous is not None and _generated(whitelist) < _generated(previous):
            return self._refused(
                f"list from {source} refused: generated {whitelist.generated_at}, before the "
                f"list already trusted ({previous.generated_at}); an old list is not accepted")
        try:
            self._persist(data)
        except OSError as exc:  # keep it in memory anyway: it is verified
            log.error("whitelist: cannot save the list under %s: %s", self.state_dir, exc)
        with self._lock:
            self._current = whitelist
        self.last_error = None
        self.last_success = self.last_attempt
        reason = (f"list of {whitelist.generated_at} accepted: {len(whitelist.sources)} DRIMbox, "
                  f"signed by {whitelist.signer or 'nobody (UNSIGNED, development mode)'}")
        log.info("whitelist: %s", reason)
        return self._told(RefreshResult(True, reason, whitelist))

    def _refused(self, reason: str) -> RefreshResult:
        self.last_error = reason
        current = self.current
        kept = (f"; keeping the list of {current.generated_at}" if current is not None
                else "; no list is trusted: every Source is refused")
        log.error("whitelist: %s%s", reason, kept)
        return self._told(RefreshResult(False, reason + kept, current))

    def _told(self, result: RefreshResult) -> RefreshResult:
        if self.on_refresh is not None:
            try:
                self.on_refresh(result)
            except Exception:  # noqa: BLE001 - the list's state must not depend on it
                log.exception("whitelist: recording the refresh failed")
        return result


def _is_signed(data: bytes) -> bool:
    try:
        root = etree.fromstring(data, parser=xml_parser())
    except etree.XMLSyntaxError:
        return True  # let the verifier give the precise reason
    return next(root.iter(f"{{{DS}}}Signature"), None) is not None


class WhitelistRefresher:
    """Refreshes the list every ``interval`` seconds in a daemon thread (first one at once);
    after a failure it tries again sooner (every ``retry`` seconds, at most ``interval``)."""

    def __init__(self, keeper: WhitelistKeeper, interval: float, retry: float = 3600.0) -> None:
        self.keeper = keeper
        self.interval = interval
        self.retry = min(retry, interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="whitelist-refresh", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self.keeper.refresh().accepted
            except Exception:  # noqa: BLE001 - the thread must survive anything
                log.exception("whitelist: refresh failed")
                ok = False
            self._stop.wait(self.interval if ok else self.retry)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
