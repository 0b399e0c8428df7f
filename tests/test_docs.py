"""The README and docs/ stay true: every relative link reaches a file (and a heading, where it names one), and the
command-line page names every option `python run.py run --help` lists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCED_CODE = re.compile(r"^```.*?^```", re.S | re.M)
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.M)
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {github_anchor(heading) for heading in HEADING.findall(FENCED_CODE.sub("", page.read_text()))}


def relative_links(page: Path) -> list[str]:
    text = FENCED_CODE.sub("", page.read_text())
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_the_heading_anchors_follow_github():
    assert github_anchor("Reports: `run.py report`") == "reports-runpy-report"
    assert github_anchor("Lottery tickets for your own model: `find_ticket`") == \
        "lottery-tickets-for-your-own-model-find_ticket"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading #{anchor} in {destination.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_docs_are_linked_from_the_readme():
    linked = {(REPO / target.partition("#")[0]).resolve() for target in relative_links(REPO / "README.md")}
    assert set(PAGES[1:]) <= linked, "a page under docs/ that the README does not link to"


def test_the_cli_page_names_every_run_option():
    help_text = subprocess.run([sys.executable, "run.py", "run", "--help"], capture_output=True, text=True,
                               cwd=REPO, check=True, timeout=120).stdout
    options = set(OPTION.findall(help_text))
    assert len(options) > 30, help_text
    assert not sorted(options - set(OPTION.findall((REPO / "docs" / "cli.md").read_text())))
