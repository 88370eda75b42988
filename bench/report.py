"""Writing one benchmark's figures into docs/BENCHMARKS.md without touching the others'."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, key: str, body: str) -> None:
    """Replace (or append) the section between `<!-- key -->` and `<!-- /key -->`."""
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    section = f"{begin}\n{body.rstrip()}\n{end}\n"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + section + (f"\n{tail}" if tail else "")
    else:
        new = current.rstrip("\n") + "\n\n" + section
    path.write_text(new)
