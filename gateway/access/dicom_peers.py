"""Who may query and retrieve over DIMSE (C-FIND, C-MOVE, C-GET; R10, R15), and its audit.

A DICOM peer proves nothing but its calling AE title and its network address, so the rule is
a list: ``query_retrieve_callers`` (default: the AE titles in ``peers``). A caller listed in
``peers`` must also connect from one of the addresses its ``host`` resolves to
(``query_retrieve_check_address``, on by default): another machine reusing the PACS's AE title
is refused. ``*`` in ``query_retrieve_callers`` allows any caller from anywhere: a deliberate
choice for a closed network, never the default. There is no loopback exception: a tool on the
gateway's own machine is a peer like any other (``host = "127.0.0.1"``).

Every request is audited (:func:`audit`), allowed or refused: the calling AE title as the
subject (principal kind ``dicom``), its address, the level, the study when the request names
one, and how many results or sub-operations; never a patient's name or identifier.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass

from gateway.access.audit import AccessRecord, record_access
from gateway.access.principal import Principal
from gateway.config import Settings
from gateway.index.store import InstanceIndex

ANY_CALLER = "*"


@functools.lru_cache(maxsize=256)
def _addresses(host: str) -> frozenset[str]:
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
    except OSError:
        return frozenset({host})


def _same_address(a: str, b: str) -> bool:
    return a.removeprefix("::ffff:") == b.removeprefix("::ffff:")


@dataclass(frozen=True)
class QueryRetrieveAccess:
    callers: frozenset[str] | None  # None: any caller
    peer_hosts: dict[str, tuple[str, ...]]  # AE title -> the hosts it is configured with
    check_address: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryRetrieveAccess:
        hosts: dict[str, list[str]] = {}
        for peer in settings.peers:
            hosts.setdefault(peer.ae_title, []).append(peer.host)
        listed = settings.query_retrieve_callers
        callers = (None if ANY_CALLER in listed
                   else frozenset(listed) if listed else frozenset(hosts))
        return cls(callers, {k: tuple(v) for k, v in hosts.items()},
                   settings.query_retrieve_check_address)

    def decide(self, ae_title: str, address: str) -> tuple[bool, str]:
        """(allowed, reason) for a request from ``ae_title`` connected from ``address``."""
        if self.callers is None:
            return True, "any caller allowed (query_retrieve_callers = *)"
        if ae_title not in self.callers:
            return False, "calling AE title not allowed to query/retrieve"
        hosts = self.peer_hosts.get(ae_title)
        if self.check_address and hosts:
            if not any(_same_address(address, a) for h in hosts for a in _addresses(h)):
                return False, "calling AE title used from an address not configured for it"
        return True, "caller allowed"


def audit(index: InstanceIndex, *, ae_title: str, address: str, action: str, outcome: str,
          reason: str, study_uid: str = "", series_uid: str = "") -> None:
    """One audit row for one C-FIND / C-MOVE / C-GET (``action``: dicom_find, dicom_move,
    dicom_get)."""
    principal = Principal(kind="dicom", subject=ae_title[:64], via="dimse")
    record_access(index, AccessRecord(principal=principal, action=action, outcome=outcome,
                                      reason=reason[:255], study_uid=study_uid,
                                      series_uid=series_uid, client_address=address))
