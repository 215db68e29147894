"""Copy the official DRIM-M sample files the tests read into tests/data/drim-m-samples/.

The samples are collected in the project's shared folder (``../shared/drim-m-samples`` next to
the repository); an outsider's clone has no such folder, so the few files the tests read are
kept here, with the same relative layout, and PROVENANCE.md says where each one comes from
(taken from the collection's README.md). Run after the shared collection changes:

    python tests/data/refresh_samples.py [SOURCE_DIR]      # or: make samples
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEST = HERE / "drim-m-samples"
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "drim-m-samples"

#: What the tests read: whole folders where a test globs them (every HL7 v2 message for the INS
#: codec round trips, every WADO-RS request text for the ANS validator cases, the XDM sample
#: archive's tree for the R23 import), single files else.
GLOBS = ["hl7v2/**/*.hl7", "wado-rs/**/*.txt", "xdm/**/*"]
FILES = [
    "cda/drimbox-poc/IMG_CR_IMG_2023.11_CDA-R2-Niveau-1.xml",
    "cda/referencement/Examen_G/CR_G1_MAJ.abridged.xml",
    "drimbox-poc-test-resources/DOC00002.xml",
    "drimbox-poc-test-resources/patient1.hl7",
    "kos/informatif-KIN/Manifest_KOS.xml",
    "xds/drimbox-poc/response.xml",
    "xds/validateur-xds/XDS.xml",
]
LICENCES = {
    "ansforge/DRIM-M_DATA": "none stated (no LICENSE file, no terms in its README): public test "
                            "data published by ANS for DRIMbox editors, fictitious patients",
    "ansforge/DRIM-M_DRIMbox": "MIT License, Copyright (c) 2022 b<>com",
}


def selected(source: Path) -> list[str]:
    rels = set(FILES)
    for pattern in GLOBS:
        rels.update(str(p.relative_to(source)) for p in source.glob(pattern) if p.is_file())
    return sorted(rels)


def readme_rows(source: Path) -> dict[str, list[str]]:
    """The collection README's file table: local path -> its cells."""
    rows = {}
    for line in (source / "README.md").read_text("utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


def provenance(rels: list[str], rows: dict[str, list[str]]) -> str:
    out = [
        "# Provenance of the DRIM-M sample files kept for the tests",
        "",
        "Copied byte for byte, same relative paths, from the project's collection of official",
        "DRIM-M samples (`../shared/drim-m-samples`, whose README.md tells how each file was read",
        "and what `ABRIDGED` means). Refresh with `make samples`",
        "(`python tests/data/refresh_samples.py`), which rewrites this file.",
        "",
        "**Licence caution:** `ansforge/DRIM-M_DATA` states no licence. Its files are public test",
        "data published by ANS for DRIMbox editors (fictitious patients); check the terms with ANS",
        "before redistributing them outside the project.",
        "",
        "| file | source repository | original path @ commit | status | licence |",
        "|---|---|---|---|---|",
    ]
    for rel in rels:
        cells = rows.get(rel)
        if cells is None:
            raise SystemExit(f"{rel} has no row in the collection's README.md")
        repo = cells[1]
        out.append(f"| `{rel}` | {repo} | {cells[2]} | {cells[3]} | {LICENCES[repo]} |")
    return "\n".join(out) + "\n"


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    if not (source / "README.md").is_file():
        raise SystemExit(f"no DRIM-M sample collection at {source}")
    rels = selected(source)
    text = provenance(rels, readme_rows(source))
    if DEST.exists():
        shutil.rmtree(DEST)
    for rel in rels:
        target = DEST / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target)
    (DEST / "PROVENANCE.md").write_text(text, "utf-8")
    print(f"{len(rels)} files from {source} into {DEST}")


if __name__ == "__main__":
    main()
