"""Read the entries of a (verified) ANS whitelist into :class:`gateway.consumer.trust.Whitelist`.

Format (``ansforge/DRIM-M_DATA``, "Liste blanche TEST"; ``versionFormat="1.0.0"``)::

    <ListeBlancheDRIM-M xmlns="https://github.com/ansforge/DRIM-M_DATA" versionFormat="1.0.0">
      <DateDeGeneration>2026-06-19T18:06:52Z</DateDeGeneration>
      <ListeDomaines>
        <Domaine>
          <Identifiant>3</Identifiant>  <db>db3.test.mesimagesmedicales.fr</db>
          <vi>vi3.test.mesimagesmedicales.fr</vi>  <Denomination>ANS</Denomination>
          <DNCertificatOperateur>CN=db3…,OU=…,O=…,ST=…,C=FR</DNCertificatOperateur>
          <SupportContact>…</SupportContact>  <DateMAJ>2024-12-10T11:27:12Z</DateMAJ>
        </Domaine> …

The older informative list uses the namespace ``https://listeblanche.mesimagesmedicales.fr/schema``
and an extra ``ResponsableContact``; both are read. Any other root or namespace is refused.
"""

from __future__ import annotations

import datetime as dt
import re

from lxml import etree

from adapters.whitelist.verify import WhitelistRefused
from gateway.consumer.trust import TrustedSource, Whitelist, normalise_host

NAMESPACES = (
    "https://github.com/ansforge/DRIM-M_DATA",
    "https://listeblanche.mesimagesmedicales.fr/schema",
)
ROOT = "ListeBlancheDRIM-M"
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}"
                   r"[a-z0-9])?)*$")


def parse_whitelist(root: etree._Element, *, signer: str = "", signed_at: str = "") -> Whitelist:
    """The list's entries; :class:`WhitelistRefused` when it is not a DRIM-M whitelist."""
    qname = etree.QName(root)
    if qname.localname != ROOT or qname.namespace not in NAMESPACES:
        raise WhitelistRefused(f"not a DRIM-M whitelist: root element {root.tag!r} (expected "
                               f"{ROOT} in {' or '.join(NAMESPACES)})")
    ns = qname.namespace

    def text(parent: etree._Element, name: str) -> str:
        node = parent.find(f"{{{ns}}}{name}")
        return (node.text or "").strip() if node is not None else ""

    generated = text(root, "DateDeGeneration")
    if not generated:
        raise WhitelistRefused("the list has no DateDeGeneration")
    try:
        if dt.datetime.fromisoformat(generated).tzinfo is None:
            raise ValueError("no time zone")
    except ValueError as exc:
        raise WhitelistRefused(f"DateDeGeneration {generated!r} is not a UTC date: {exc}") from None
    domains = root.findall(f"{{{ns}}}ListeDomaines/{{{ns}}}Domaine")
    if not domains:
        raise WhitelistRefused("the list has no Domaine entry")
    sources = []
    for position, domain in enumerate(domains, 1):
        db = normalise_host(text(domain, "db"))
        vi = normalise_host(text(domain, "vi"))
        for role, host in (("db", db), ("vi", vi)):
            if (host or role == "db") and not _HOST.match(host):
                raise WhitelistRefused(f"Domaine #{position}: {role} {host!r} is not a host name")
        sources.append(TrustedSource(
            identifier=text(domain, "Identifiant") or str(position),
            drimbox_host=db,
            viewer_host=vi,
            name=text(domain, "Denomination"),
            certificate_dn=text(domain, "DNCertificatOperateur"),
            support_contact=text(domain, "SupportContact"),
            updated=text(domain, "DateMAJ"),
        ))
    return Whitelist(generated_at=generated, sources=tuple(sources),
                     format_version=root.get("versionFormat", ""), signer=signer,
                     signed_at=signed_at)
