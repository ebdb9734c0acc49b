"""``Outage``: one line when store errors begin, one a minute while they last
(with counts), one when they end; every attempt at DEBUG."""

from __future__ import annotations

import logging

import pytest

from orchestrator.store.retry import Outage


def test_an_outage_is_a_line_at_start_a_line_a_minute_and_a_line_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    outage = Outage(every_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="orchestrator"):
        outage.succeeded("write")  # nothing failed: nothing to say
        for t in range(0, 150, 5):  # 150 s of failures, an attempt every 5 s
            now[0] = float(t)
            outage.failed("write", f"boom at {t}")
            if t % 10 == 0:
                outage.failed("lease renewal", "no lease", "retried next heartbeat")
        outage.succeeded("read-back")  # not a kind that failed: the outage goes on
        now[0] = 151.0
        outage.succeeded("write")
        outage.succeeded("write")  # over already: no second line
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4, warnings
    assert (
        warnings[0].startswith("store errors: a write failed and is retried")
        and "boom at 0" in warnings[0]
    )
    assert warnings[1].startswith(
        "store still failing after 60 s (6 lease renewal attempt(s), 13 write"
    )
    assert warnings[2].startswith("store still failing after 120 s")
    assert warnings[3] == (
        "store working again after 151 s (15 lease renewal attempt(s), 30 write attempt(s) "
        "failed and were retried)"
    )
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 45
    outage.failed("write", "again")  # a new outage starts a new story
    assert outage.counts == {"write": 1}
