"""What the server judges of a socket beyond RFC 6455 pings: a stuck send, no subscribe."""

from __future__ import annotations

from control_plane.core.heartbeat import Heartbeat, HeartbeatLimits, Verdict

LIMITS = HeartbeatLimits(max_lag=10.0, subscribe_deadline=60.0)


def test_a_socket_that_reads_and_subscribed_is_ok_however_long_it_is_quiet() -> None:
    beat = Heartbeat(now=0.0)
    beat.subscribed = True
    assert beat.verdict(10_000.0, LIMITS) is Verdict.OK


def test_a_send_blocked_past_max_lag_makes_the_client_slow() -> None:
    beat = Heartbeat(now=0.0)
    beat.subscribed = True
    beat.sending(100.0)
    assert beat.verdict(109.0, LIMITS) is Verdict.OK
    assert beat.blocked_for(109.0) == 9.0
    assert beat.verdict(110.5, LIMITS) is Verdict.SLOW


def test_a_send_that_completes_clears_the_lag() -> None:
    beat = Heartbeat(now=0.0)
    beat.subscribed = True
    beat.sending(100.0)
    beat.sent()
    assert beat.verdict(1000.0, LIMITS) is Verdict.OK
    assert beat.blocked_for(1000.0) == 0.0


def test_a_socket_that_never_subscribes_is_closed_after_the_deadline() -> None:
    beat = Heartbeat(now=0.0)
    assert beat.verdict(59.0, LIMITS) is Verdict.OK
    assert beat.verdict(61.0, LIMITS) is Verdict.NO_SUBSCRIBE
    beat.subscribed = True
    assert beat.verdict(61.0, LIMITS) is Verdict.OK


def test_a_stuck_send_is_judged_before_the_subscribe_deadline() -> None:
    beat = Heartbeat(now=0.0)
    beat.sending(0.0)
    assert beat.verdict(100.0, LIMITS) is Verdict.SLOW
