"""The suite's own layout: test modules have unique basenames. The test folders are not
packages pytest imports by path (rootdir-relative basenames), so two ``test_x.py`` in
two folders break the collection of the whole suite ("import file mismatch"), as it did
twice while helpers added tests in parallel."""

from __future__ import annotations

from collections import Counter

from tests.conftest import REPO


def test_test_module_basenames_are_unique():
    names = Counter(p.name for p in (REPO / "tests").rglob("test_*.py"))
    assert len(names) > 50  # the scan sees the suite
    twice = sorted(n for n, c in names.items() if c > 1)
    assert not twice, f"test modules with the same basename in two folders: {twice}"
