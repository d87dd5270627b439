"""The README's map of the code names every module, and nothing that is gone (issue 8's docs acceptance).

A newcomer finds a module's purpose from the map, so a module added without a line there, or a
line left behind by a move, fails here rather than in a reader's first hour.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "calliope_hub"


def code_map() -> list[str]:
    """The README's code map: the fenced block under "## How the code is cut"."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## How the code is cut", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None, "the code map's fenced block is missing"
    return block.group(1).splitlines()


def mapped_paths(lines: list[str]) -> set[str]:
    """Each entry's full path, from its indentation (two spaces a level) under the directories above it."""
    parents: list[str] = []
    paths: set[str] = set()
    for line in lines:
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        parents = parents[:depth]
        path = "/".join([*parents, name])
        if name.endswith("/"):
            parents.append(name.rstrip("/"))
        paths.add(path.rstrip("/"))
    return paths


def test_code_map_parses_nested_entries() -> None:
    lines = ["pkg/", "  a.py   one", "  sub/   two", "    b.py  three", "  c.py   four", "top.py  five"]
    assert mapped_paths(lines) == {"pkg", "pkg/a.py", "pkg/sub", "pkg/sub/b.py", "pkg/c.py", "top.py"}


def test_readme_code_map_names_every_module_and_only_real_ones() -> None:
    mapped = mapped_paths(code_map())
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / PACKAGE).rglob("*.py")}
    missing = sorted(modules - mapped)
    assert not missing, f"README.md's code map leaves out: {missing}"
    gone = sorted(p for p in mapped if not any(ROOT.glob(p)))
    assert not gone, f"README.md's code map names what does not exist: {gone}"
