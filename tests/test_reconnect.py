"""How long the connector waits before redialing, by what went wrong (no sockets)."""

from __future__ import annotations

import random

import pytest

from connector import (
    AuthenticationFailed,
    Config,
    ConnectionLost,
    ProtocolMismatch,
    RateLimited,
    Superseded,
)
from connector.daemon.supervisor import ReconnectPolicy

KEY = "sk_test_reconnect_0000"


def policy(**settings: object) -> ReconnectPolicy:
    return ReconnectPolicy(Config(api_key=KEY, reconnect_jitter=0.0, **settings))  # type: ignore[arg-type]


def test_transient_failures_follow_the_schedule_then_stay_at_its_slowest_step() -> None:
    p = policy()
    delays = [p.delay_after(ConnectionLost("refused")) for _ in range(8)]
    assert delays == [0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 30.0, 30.0]


def test_the_schedule_restarts_only_after_a_connection_stayed_ready() -> None:
    p = policy(stable_after=10.0)
    for _ in range(4):
        p.delay_after(ConnectionLost("refused"))
    # Ready, but dropped at once: a flapping server must not reset the schedule.
    assert p.delay_after(ConnectionLost("closed", ready_for=0.5)) == 10.0
    # Ready for longer than stable_after: the next drop redials at once.
    assert p.delay_after(ConnectionLost("closed", ready_for=10.0)) == 0.0
    assert p.delay_after(ConnectionLost("refused")) == 1.0


def test_rate_limits_honour_retry_after_within_bounds() -> None:
    p = policy(max_retry_after=60.0)
    assert p.delay_after(RateLimited(429, None, "slow down", retry_after=7.0)) == 7.0
    assert p.delay_after(RateLimited(429, None, "slow down", retry_after=0.0)) == 1.0
    assert p.delay_after(RateLimited(429, None, "slow down", retry_after=3600.0)) == 60.0
    assert p.delay_after(RateLimited(429, None, "slow down", retry_after=None)) == 30.0


@pytest.mark.parametrize(
    "failure",
    [
        AuthenticationFailed(401, "source_connector_unauthenticated", "refused"),
        ProtocolMismatch("version 2"),
    ],
)
def test_problems_retrying_cannot_fix_wait_the_slowest_step(failure: Exception) -> None:
    p = policy(reconnect_schedule=(0.0, 3.0, 45.0))
    assert p.delay_after(failure) == 45.0
    assert p.delay_after(failure) == 45.0
    assert p.delay_after(ConnectionLost("refused")) == 0.0, "they do not advance the schedule"


def test_superseded_stands_down_and_then_starts_the_schedule_afresh() -> None:
    p = policy(superseded_backoff=120.0)
    for _ in range(3):
        p.delay_after(ConnectionLost("refused"))
    assert p.delay_after(Superseded("newer connector")) == 120.0
    assert p.delay_after(ConnectionLost("refused")) == 0.0
    assert policy(superseded_backoff=0.0).delay_after(Superseded("x")) is None  # until stopped


def test_jitter_spreads_delays_within_its_fraction() -> None:
    config = Config(api_key=KEY, reconnect_jitter=0.1, reconnect_schedule=(10.0,))
    p = ReconnectPolicy(config, rng=random.Random(7))
    delays = [p.delay_after(ConnectionLost("refused")) for _ in range(200)]
    assert all(d is not None and 9.0 <= d <= 11.0 for d in delays)
    assert len({round(d or 0, 3) for d in delays}) > 50, "spread, not one value"
