"""Small helpers for the CSV input files users bring (measured profiles, sites files)."""

from __future__ import annotations

from pathlib import Path


def leading_comment_lines(path: Path) -> int:
    """How many lines starting with ``#`` (after blanks) come before the header line of
    the CSV file ``path`` (read as UTF-8): what ``pandas.read_csv`` must skip, and the
    offset of its row numbers from the file's lines."""
    lead = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.lstrip().startswith("#"):
                break
            lead += 1
    return lead
