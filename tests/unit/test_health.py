"""The probes' decisions: stuck, ready, and each reason."""

from __future__ import annotations

from spanmetrics.fleet.health import STUCK_AFTER_S, HealthState, liveness, readiness

S = 1_000_000_000


def test_a_consumer_is_stuck_only_with_records_waiting() -> None:
    idle = HealthState(owns_partitions=True, last_record_ns=1 * S, started_ns=0)
    now = int((STUCK_AFTER_S + 2) * S)
    assert liveness(idle, now)[0]  # nothing to read: idle, not stuck
    idle.lag = 10
    ok, checks = liveness(idle, now)
    assert not ok and checks["consumer"] == "stuck"
    idle.last_record_ns = now - S
    assert liveness(idle, now)[0]


def test_readiness_names_what_fails() -> None:
    state = HealthState(joined=True, owns_shards=True, started_ns=0)
    ok, checks = readiness(state, 5 * S, 30.0, redis_ok=True)
    assert ok and checks["checkpoint"] == "starting"  # a grace period after start
    ok, checks = readiness(state, 100 * S, 30.0, redis_ok=True)
    assert not ok and checks["checkpoint"] == "none yet"
    state.last_checkpoint_ns = state.last_broker_ok_ns = 95 * S
    assert readiness(state, 100 * S, 30.0, redis_ok=True)[0]
    ok, checks = readiness(state, 100 * S, 30.0, redis_ok=False)
    assert not ok and checks["state"] == "unreachable"
    ok, checks = readiness(state, 200 * S, 30.0, redis_ok=True)
    assert not ok and checks["checkpoint"] == "last 105s ago"
    assert checks["broker"] == "no acknowledgement for 105s"
    assert not readiness(HealthState(), 0, 30.0, True)[0]  # not joined
