"""Regenerate the tables of docs/conformance-statement.md that list what the DICOM listener
registers: every storage SOP class accepted (Appendix A) and the transfer syntaxes of the
storage presentation contexts, in the order the listener prefers them.

They are read from a :class:`gateway.ingest.dimse.DicomService` built in this process (the
very object ``drimbox serve`` runs), never typed by hand. Each table sits between
``<!-- BEGIN GENERATED name -->`` and ``<!-- END GENERATED name -->``; the rest of the file is
prose and is left alone. ``make conformance`` runs this script; ``--check`` only says whether
the committed file is current (exit 1 if not). tests/test_conformance_statement.py checks the
committed file against the code whatever this script says.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

STATEMENT = Path(__file__).resolve().parent.parent / "conformance-statement.md"
_BLOCK = re.compile(r"(<!-- BEGIN GENERATED (?P<name>[\w-]+)[^>]*-->\n)(?P<body>.*?)"
                    r"(<!-- END GENERATED (?P=name) -->)", re.S)


def _service():  # noqa: ANN202 - the DicomService, imported late (the script must start fast)
    from gateway.config import Settings
    from gateway.ingest.dimse import DicomService
    from gateway.ingest.query_retrieve import QueryRetrieveSCP

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        return DicomService(settings, None, QueryRetrieveSCP(settings, None, None, None))


def storage_sop_classes() -> str:
    import pynetdicom
    from pynetdicom import AllStoragePresentationContexts

    storage = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    contexts = [cx for cx in _service().ae.supported_contexts
                if str(cx.abstract_syntax) in storage]
    lines = [f"{len(contexts)} storage SOP classes: every one of pynetdicom "
             f"{pynetdicom.__version__}'s `AllStoragePresentationContexts`.", "",
             "| # | SOP Class | UID | SCP | SCU |", "|---|---|---|---|---|"]
    for n, cx in enumerate(contexts, 1):
        scp = "Yes" if cx.scp_role in (True, None) else "No"
        scu = "Yes" if cx.scu_role else "No"
        lines.append(f"| {n} | {cx.abstract_syntax.name} | `{cx.abstract_syntax}` | {scp} "
                     f"| {scu} |")
    return "\n".join(lines) + "\n"


def storage_transfer_syntaxes() -> str:
    import pydicom

    from gateway.ingest.dimse import STORAGE_TRANSFER_SYNTAXES

    lines = [f"{len(STORAGE_TRANSFER_SYNTAXES)} transfer syntaxes: every public one pydicom "
             f"{pydicom.__version__} knows, in this order of preference.", "",
             "| preference | Transfer Syntax | UID |", "|---|---|---|"]
    for n, ts in enumerate(STORAGE_TRANSFER_SYNTAXES, 1):
        lines.append(f"| {n} | {ts.name} | `{ts}` |")
    return "\n".join(lines) + "\n"


GENERATORS = {
    "storage-sop-classes": storage_sop_classes,
    "storage-transfer-syntaxes": storage_transfer_syntaxes,
}


def regenerate(text: str) -> str:
    """``text`` with every generated block rewritten; a block named but unknown is an error,
    and so is a generator without its block."""
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in GENERATORS:
            raise SystemExit(f"{STATEMENT.name}: unknown generated block {name!r}")
        seen.add(name)
        return match.group(1) + GENERATORS[name]() + match.group(4)

    out = _BLOCK.sub(replace, text)
    missing = set(GENERATORS) - seen
    if missing:
        raise SystemExit(f"{STATEMENT.name}: no generated block for {sorted(missing)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the committed statement is not current")
    args = parser.parse_args(argv)
    text = STATEMENT.read_text(encoding="utf-8")
    new = regenerate(text)
    if args.check:
        if new != text:
            print(f"{STATEMENT}: generated tables are out of date (make conformance)")
            return 1
        return 0
    if new != text:
        STATEMENT.write_text(new, encoding="utf-8")
        print(f"{STATEMENT}: tables regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
