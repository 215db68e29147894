"""The documentation stays usable: a short README, links and anchors that resolve, test
references that name real tests, every setting documented, and no issue-tracker numbers
(the requirement numbers R1-R23 or plain words say why). Reads files only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_BYTES = 12 * 1024

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
_TEST_REF = re.compile(r"\b(tests/[\w/]+\.py)::(\w+)")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans (links there are not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, punctuation other
    than ``-`` and ``_`` removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for match in _HEADING.finditer(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = github_slug(match.group(2))
        n = seen.get(slug, 0)
        out.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return out


def test_readme_is_short() -> None:
    size = README.stat().st_size
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; the limit is {README_MAX_BYTES}"


def test_docs_exist_and_the_readme_links_them() -> None:
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert "requirements.md" in pages and "configuration.md" in pages
    linked = {Path(target.split("#")[0]).name
              for target in _LINK.findall(prose(README.read_text(encoding="utf-8")))}
    assert not set(pages) - linked, f"docs pages the README does not link: {set(pages) - linked}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    broken = []
    for target in _LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{path.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_issue_numbers(path: Path) -> None:
    hits = [f"line {n}: {line.strip()}"
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"issue\s*#", line, re.I)]
    assert not hits, (f"{path.relative_to(REPO)} names issue numbers (say the requirement, "
                      f"R1-R23, or plain words): {hits}")


def test_test_references_name_real_tests() -> None:
    missing = []
    for path in markdown_files():
        for file_name, test in _TEST_REF.findall(path.read_text(encoding="utf-8")):
            source = REPO / file_name
            defined = source.exists() and re.search(
                rf"^(?:async\s+)?def {re.escape(test)}\(", source.read_text(encoding="utf-8"),
                re.M)
            if not defined:
                missing.append(f"{path.relative_to(REPO)}: {file_name}::{test}")
    assert not missing, f"references to tests that do not exist: {missing}"


_CODE_PATH = re.compile(r"`((?:gateway|dicomweb|adapters|tests|bench|docker)/[\w./-]*)`")


def test_code_paths_named_in_the_docs_exist() -> None:
    """A newcomer finds a behaviour from the docs in one hop: every file or folder the README
    and docs/ name in code spans (`gateway/ingest/dimse.py`, `adapters/dmp/`) exists."""
    missing = []
    for path in markdown_files():
        for named in _CODE_PATH.findall(path.read_text(encoding="utf-8")):
            if "*" in named or "<" in named:
                continue
            if not (REPO / named.split("::")[0]).exists():
                missing.append(f"{path.relative_to(REPO)}: {named}")
    assert not missing, f"paths the docs name that do not exist: {missing}"


def _settings_fields() -> list[str]:
    tree = ast.parse((REPO / "gateway" / "config.py").read_text(encoding="utf-8"))
    (settings,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    return [n.target.id for n in settings.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            and n.target.id != "model_config"]


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    fields = _settings_fields()
    assert "data_dir" in fields and len(fields) > 50
    undocumented = [name for name in fields if f"`{name}`" not in text]
    assert not undocumented, f"settings missing from docs/configuration.md: {undocumented}"
