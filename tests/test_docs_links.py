"""The documents: README.md is the entrance, docs/ holds the rest, and every link between them resolves.

- every relative markdown link `[text](path)` / `[text](path#anchor)` in README.md and docs/*.md names a file
  that exists, and an anchor names a heading of that file (GitHub's heading ids);
- nothing in README.md or docs/ points outside the repository, except the read-only data folders
  `../shared/data` and `../shared/metrics_reference` that the guides document as data locations;
- README.md stays an entrance: at most 160 lines, opening with `make demo` and `make test`;
- the design document the code cites is the repository's own `docs/design.md`, and its list of deliberate
  deviations (§8) has a bullet for every `# fix:` comment of `pirl_pipeline/`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

#: `[text](target)` or `![alt](target)`; the target ends at the first space or `)` (no titles are used here)
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(?P<title>.+?)\s*#*\s*$")
FENCE = re.compile(r"^ *(```|~~~)")
#: the one way the code and the documents may name the design document
DESIGN_NAME = "DESIGN" + ".md"  # spelled in two parts so that this file does not match its own rule
#: where the repository's own text may refer to the folder beside it
SHARED_DATA = re.compile(r"\.\./shared/(?!data\b|metrics_reference\b)")
SKIP_DIRS = {".git", ".venv", "pirl_data", "node_modules", "__pycache__"}


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `[x](y)` inside code is not a link); fenced lines read as empty."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        lines.append("" if fenced else line)
    return lines


def without_code_spans(line: str) -> str:
    return re.sub(r"`[^`]*`", "", line)


def links(text: str) -> list[tuple[int, str]]:
    return [(number, m.group("target")) for number, line in enumerate(prose_lines(text), 1)
            for m in LINK.finditer(without_code_spans(line))]


def slug(title: str) -> str:
    """GitHub's heading id: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())  # \w keeps letters and digits of any script, and `_`
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading id of a markdown text; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for line in prose_lines(text):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group("title"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def broken_links(path: Path, text: str | None = None) -> list[str]:
    """What is wrong with the links of `path` (its `text` when given), one line each."""
    text = path.read_text(encoding="utf-8") if text is None else text
    problems = []
    for number, target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        resolved = (path.parent / file_part).resolve() if file_part else path
        if ROOT != resolved and ROOT not in resolved.parents:
            problems.append(f"{where}: outside the repository")
            continue
        if file_part and not resolved.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor and resolved.suffix == ".md":
            target_text = text if resolved == path else resolved.read_text(encoding="utf-8")
            if anchor not in anchors(target_text):
                problems.append(f"{where}: no heading with id #{anchor} in {resolved.relative_to(ROOT)}")
    return problems


def test_slug_follows_github():
    assert slug("Raw data and plans") == "raw-data-and-plans"
    assert slug("Resuming (`--c`)") == "resuming---c"
    assert slug("PET/CT on different grids") == "petct-on-different-grids"
    assert slug("The representation X_h': health and variants") == "the-representation-x_h-health-and-variants"
    assert slug("Segmentation (Table 8 layout): BraTS-2018") == "segmentation-table-8-layout-brats-2018"


def test_link_checker_finds_broken_links():
    """The checker itself: a missing file, a missing heading and a path out of the repository are reported."""
    text = ("# Title\n[ok](#title) [web](https://example.org/x.md) [mail](mailto:a@b.c) [readme](../README.md)\n"
            "[design](design.md#1-the-idea-in-one-paragraph)\n"
            "[gone](no_such_page.md) [bad anchor](#no-such-heading) [outside](../../outside.md)\n"
            "```\n[in code](not_a_link.md)\n```\n`[in a span](not_a_link_either.md)`\n")
    problems = broken_links(ROOT / "docs" / "a_page.md", text)
    assert len(problems) == 3, problems
    assert "no_such_page.md: no such file" in problems[0]
    assert "no heading with id #no-such-heading" in problems[1]
    assert "outside the repository" in problems[2]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_docs_exist_and_readme_links_each():
    names = {p.name for p in DOCS}
    assert {"design.md", "dataset_format.md", "training.md", "prediction_and_evaluation.md",
            "sharing_models.md", "reliability.md", "measurements_history.md"} <= names
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in links(README.read_text(encoding="utf-8"))}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    assert DESIGN_NAME not in text
    assert [line for line in text.splitlines() if SHARED_DATA.search(line)] == []


def test_readme_is_the_entrance():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160
    head = "\n".join(lines[:6])
    assert "make demo" in head and "make test" in head


def test_design_document_is_the_repositorys_own():
    """No .py or .md file names the design document otherwise than as docs/design.md."""
    offenders = []
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and here / d != ROOT / "experiments" / "work"]
        for name in files:
            if not name.endswith((".py", ".md")):
                continue
            path = here / name
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if DESIGN_NAME in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_design_lists_every_fix():
    """docs/design.md §8 names each file with `# fix:` comments at least as often as the file has them."""
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = design[design.index("## 8. Deliberate deviations"):]
    bullets = re.findall(r"^- `([\w/]+\.py)`", section, re.MULTILINE)
    missing = []
    for path in sorted((ROOT / "pirl_pipeline").rglob("*.py")):
        relative = path.relative_to(ROOT / "pirl_pipeline").as_posix()
        comments = path.read_text(encoding="utf-8").count("# fix:")
        if comments > bullets.count(relative):
            missing.append(f"{relative}: {comments} `# fix:` comments, {bullets.count(relative)} bullets")
    assert missing == []
