"""What the patient takes home instead of a CD: the share link's URL, its QR code and a
printable handout.

QR codes are made with ``segno`` (pure Python, no dependency, ISO/IEC 18004 conformant, writes
SVG and PNG itself). The handout names the centre, the study date and description, and how to
open the link; it shows no patient identity (the patient is asked for their birth date when
opening it, and already knows their name).
"""

from __future__ import annotations

import html
import io
from pathlib import Path

import segno

from gateway.access.share_links import StudySummary


def share_url(public_url: str, token: str) -> str:
    return f"{public_url}/share/{token}"


def qr(url: str) -> segno.QRCode:
    # Error correction M: survives a crease or a stain on paper; the URL fits in version ~6.
    return segno.make_qr(url, error="m")


def qr_svg(url: str) -> str:
    out = io.BytesIO()
    qr(url).save(out, kind="svg", scale=4, border=4, xmldecl=False, svgns=True,
                 title="QR code du lien de partage")
    return out.getvalue().decode()


def write_qr_files(url: str, stem: Path) -> tuple[Path, Path]:
    """``stem.png`` and ``stem.svg``."""
    code = qr(url)
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    code.save(png, scale=8, border=4)
    code.save(svg, scale=4, border=4)
    return png, svg


def _date(da: str) -> str:
    if len(da) == 8 and da.isdigit():
        return f"{da[6:8]}/{da[4:6]}/{da[0:4]}"
    return da or "non précisée"


def handout_html(centre: str, summary: StudySummary, url: str, expires: str,
                 max_attempts: int = 5, lock_minutes: float = 15) -> str:
    e = html.escape
    return (
        "<!doctype html><html lang=fr><head><meta charset=utf-8>"
        "<title>Vos images médicales</title>"
        "<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}"
        ".qr svg{width:14em;height:14em}code{word-break:break-all}"
        "@media print{a{color:black}}</style></head><body>"
        f"<h1 id=centre>{e(centre or 'Centre d’imagerie')}</h1>"
        "<h2>Vos images médicales en ligne</h2>"
        f"<p id=study>Examen du {e(_date(summary.study_date))}"
        f"{' : ' + e(summary.description) if summary.description else ''}</p>"
        f"<div class=qr>{qr_svg(url)}</div>"
        f"<p>Ou saisissez l’adresse : <code id=url>{e(url)}</code></p>"
        "<ol><li>Scannez le QR code avec votre téléphone ou saisissez l’adresse.</li>"
        "<li>Indiquez votre date de naissance : elle vous sera demandée pour ouvrir vos "
        f"images. Après {max_attempts} erreurs, l’accès est bloqué {lock_minutes:g} minutes.</li>"
        "<li>Vous pouvez montrer vos images à votre médecin depuis ce lien.</li></ol>"
        f"<p>Ce lien est valable jusqu’au {e(expires)}. Gardez ce document pour vous : "
        "toute personne qui l’a et connaît votre date de naissance peut voir vos images. "
        "En cas de perte, demandez au centre de désactiver le lien.</p>"
        "</body></html>"
    )
