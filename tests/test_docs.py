"""The documentation stays a landing page plus one page per package, for users on ordinary machines.

Fast, no Ray: the README fits on a screen and starts with the two set-up commands; every relative link in the
README and docs/ points at an existing file (and heading, for ``#anchors``); development-machine facts
(``unshare``) live only in docs/development.md; no doc holds an absolute path of one particular machine; every
``finsent`` command is documented in docs/cli.md; docs/results.md keeps the markers bench/quality.py rewrites.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
#: the two set-up commands of a fresh machine; .ci/run runs the second one exactly
SETUP_COMMANDS = ("bash scripts/dev.sh demo", "bash scripts/dev.sh test")
MAX_README_LINES = 200
#: the only page that may speak of the development machines' network namespaces
DEVELOPMENT_PAGE = DOCS / "development.md"
#: absolute paths of one particular machine (a user's or this project's machines)
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|tmp|root|home)/")

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def linked_files() -> list[Path]:
    """Every Markdown page whose links are checked: the docs plus the READMEs of bench/ and cluster/."""
    return [*doc_files(), REPO / "bench" / "README.md", REPO / "cluster" / "README.md"]


def _rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


def _prose(text: str) -> str:
    """The text outside fenced code blocks (links inside code are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return "\n".join(out)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*", "", heading.strip().lower())
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if not m:
            continue
        a = _anchor(m.group(1))
        n = seen.get(a, 0)
        seen[a] = n + 1
        out.add(a if n == 0 else f"{a}-{n}")
    return out


# ------------------------------------------------------------------------------------------------ README
def test_readme_is_a_landing_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move details into a docs/ page and link it")


def test_readme_starts_with_the_two_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert first_block is not None, "README.md has no code block: its first one must hold the set-up commands"
    assert text.index(first_block.group(0)) < text.index("\n## "), "the set-up commands must come before any section"
    commands = [line.split("#", 1)[0].strip() for line in first_block.group(1).splitlines()]
    assert [c for c in commands if c] == list(SETUP_COMMANDS)


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    ci_commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert SETUP_COMMANDS[1] in ci_commands


def test_readme_has_the_results_markers_in_order() -> None:
    text = README.read_text(encoding="utf-8")
    begin, end = text.find("<!-- results:begin -->"), text.find("<!-- results:end -->")
    assert 0 <= begin < end, "README.md needs <!-- results:begin --> ... <!-- results:end --> around its results table"


def test_results_page_has_one_generated_section() -> None:
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    assert text.count("<!-- quality:begin -->") == 1 and text.count("<!-- quality:end -->") == 1, (
        "docs/results.md must hold exactly one quality:begin/end pair (bench/quality.py replaces what is between)")
    assert text.index("<!-- quality:begin -->") < text.index("<!-- quality:end -->")


def test_readme_links_every_docs_page() -> None:
    linked = {m.group(1).split("#", 1)[0] for m in LINK.finditer(_prose(README.read_text(encoding="utf-8")))}
    missing = [_rel(p) for p in sorted(DOCS.glob("*.md")) if _rel(p) not in linked]
    assert not missing, f"README.md does not link {missing}: add them to its documentation table"


# ------------------------------------------------------------------------------------------------ links
@pytest.mark.parametrize("doc", linked_files(), ids=_rel)
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for m in LINK.finditer(_prose(doc.read_text(encoding="utf-8"))):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor} in {_rel(dest)})")
    assert not broken, f"{_rel(doc)}: broken links: {broken}"


def test_anchor_rule() -> None:
    assert _anchor("Quick start (one machine, embedded broker)") == "quick-start-one-machine-embedded-broker"
    assert _anchor("Post-processing: `calibration.json` and `companion/`") == \
        "post-processing-calibrationjson-and-companion"
    assert _anchor("How to scale: partitions ↔ consumers ↔ replicas") == "how-to-scale-partitions--consumers--replicas"


# ------------------------------------------------------------------------------------------------ content
def test_development_machine_facts_stay_in_development_md() -> None:
    offenders = [f"{_rel(p)}:{i}" for p in doc_files() if p != DEVELOPMENT_PAGE
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "unshare" in line]
    assert not offenders, f"`unshare` outside docs/development.md: {offenders} (move it there)"


def test_no_absolute_machine_paths() -> None:
    offenders = [f"{_rel(p)}:{i}: {line.strip()[:80]}" for p in doc_files()
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if MACHINE_PATH.search(line)]
    assert not offenders, ("absolute paths of one machine in the docs (use ../shared, $FINSENT_SHARED, runs/..., "
                           f"or `mktemp -d`): {offenders}")


def test_machine_path_rule() -> None:
    assert MACHINE_PATH.search("see /work/main/runs") and MACHINE_PATH.search("TMPDIR=/tmp/x")
    assert MACHINE_PATH.search("(/root/.cache)") and MACHINE_PATH.search("`/home/ann/data`")
    assert not MACHINE_PATH.search("../shared/data and /mnt/finsent/runs and ~/.cache/finsent and runs/tmp/x")


def test_every_command_is_in_the_cli_page() -> None:
    from finsent.cli import COMMANDS

    cli = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = [name for name in COMMANDS if f"`{name}`" not in cli and f"finsent {name}" not in cli]
    assert not missing, f"docs/cli.md does not mention {missing}: add a row to its command table"
