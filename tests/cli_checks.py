"""Checks shared by the command-line tests."""

from __future__ import annotations


def assert_one_paragraph(err: str, *needles: str) -> None:
    """``err`` is one paragraph starting ``error:``, with no traceback, naming every needle."""
    assert err.startswith("error: "), err
    assert "Traceback" not in err and 'File "' not in err, err
    assert "\n\n" not in err.strip(), f"more than one paragraph:\n{err}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
