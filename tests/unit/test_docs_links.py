"""Every relative link in the project's Markdown files names a file that exists and, where it names a heading
(`file.md#anchor`), a heading that file has (GitHub's anchors: lower case, punctuation dropped, spaces as hyphens)."""

import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP = {"runs", "build", "node_modules", "bench-results", "exports", "wandb"}


def markdown_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.md")
                  if not any(part.startswith(".") or part in SKIP for part in p.relative_to(ROOT).parts[:-1]))


def prose(md: Path) -> str:
    return re.sub(r"```.*?```", "", md.read_text(), flags=re.DOTALL)  # code blocks: commands and comments


@functools.cache  # a file many links point into is read once
def anchors(md: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", prose(md), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def broken_links(md: Path) -> list[str]:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(md)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    return broken


def test_the_checker_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n```\n# not-a-heading\n```\n## A heading: with `code` (and more)\n"
                                   "[ok](#a-heading-with-code-and-more) [web](https://example.org) [x](nosuch.md) "
                                   "[y](a.md#nosuch) [w](#not-a-heading)\n```\n[z](inside-a-code-block.md)\n```\n")
    assert broken_links(tmp_path / "a.md") == ["nosuch.md (no such file)", "a.md#nosuch (no such heading)",
                                                "#not-a-heading (no such heading)"]


def test_every_relative_link_in_the_docs_resolves():
    files = markdown_files()
    assert ROOT / "README.md" in files and len(files) > 5
    broken = {str(md.relative_to(ROOT)): links for md in files if (links := broken_links(md))}
    assert not broken, broken
