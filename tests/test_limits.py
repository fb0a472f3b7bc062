"""The entry limits' core without I/O: the per-token limiter on a fake clock, JSON depth."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.config import Config, load_config
from corral.core.limits import CallLimiter, json_depth, json_depth_error, retry_after_header
from corral.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_admitted_then_the_rate_with_the_wait_until_the_next_call() -> None:
    clock = FakeClock()
    limiter = CallLimiter(rate=2.0, burst=3, max_in_flight=100, clock=clock)
    for _ in range(3):
        assert limiter.admit("a") is None
        limiter.release("a")
    assert limiter.admit("a") == (0.5, "rate")  # one call every half second
    assert limiter.admit("b") is None  # another token has its own bucket
    clock.now += 0.5
    assert limiter.admit("a") is None
    assert limiter.admit("a") == (0.5, "rate")
    clock.now += 10.0  # refilled, but never above the burst
    assert [limiter.admit("a") for _ in range(4)][-1] == (0.5, "rate")
    assert limiter.refused == {"rate": 3, "in_flight": 0}
    assert retry_after_header(0.5) == "1" and retry_after_header(2.2) == "3"


def test_calls_in_flight_are_bounded_until_one_ends() -> None:
    limiter = CallLimiter(rate=1000.0, burst=1000, max_in_flight=2, clock=FakeClock())
    assert limiter.admit("a") is None and limiter.admit("a") is None
    assert limiter.admit("a") == (1.0, "in_flight") and limiter.in_flight("a") == 2
    limiter.release("a")
    assert limiter.admit("a") is None
    limiter.release("nobody")  # an unknown key changes nothing
    limiter.release("a")
    limiter.release("a")
    limiter.release("a")  # never below zero
    assert limiter.in_flight("a") == 0


def test_idle_callers_are_forgotten_when_the_table_grows() -> None:
    clock = FakeClock()
    limiter = CallLimiter(rate=1.0, burst=1, max_in_flight=5, clock=clock)
    assert limiter.admit("busy") is None  # stays in flight: kept
    for n in range(10_000):
        limiter.admit(f"k{n}")
        limiter.release(f"k{n}")
    clock.now += 2.0
    assert limiter.admit("new") is None
    assert len(limiter._buckets) == 2 and limiter.in_flight("busy") == 1


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    assert json_depth(b"3") == 0
    assert json_depth(b'{"a": [1, {"b": []}]}') == 4
    assert json_depth(b'["[[[[", "\\"[[[", {"]": "}}}"}]') == 2
    assert json_depth(b"[" * 5000) == 5000  # unclosed counts too
    assert json_depth_error(b"[" * 64 + b"]" * 64) is None
    error = json_depth_error(b"[" * 5000 + b"]" * 5000)
    assert error is not None and "5000 levels" in error and "limit is 64" in error
    assert json_depth_error(b'["' + b"[" * 5000 + b'"]') is None  # all inside a string


nested = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=30,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(nested)
def test_json_depth_matches_the_decoded_structure(value: object) -> None:
    assert json_depth(json.dumps(value).encode()) == _depth(value)


def test_the_limit_settings_come_from_the_environment_and_are_checked() -> None:
    config, sources = load_config(
        env={"CORRAL_MAX_REQUEST_BYTES": "4096", "CORRAL_API_RATE": "5", "CORRAL_API_BURST": "9"}
    )
    assert (config.request_limit, config.api_rate, config.api_burst) == (4096, 5.0, 9)
    assert sources["max_request_bytes"] == "env:CORRAL_MAX_REQUEST_BYTES"
    assert load_config(env={})[0].request_limit == Config().max_command_bytes
    with pytest.raises(ConfigError, match="api_max_in_flight must be more than 0"):
        load_config(env={"CORRAL_API_MAX_IN_FLIGHT": "0"})
    with pytest.raises(ConfigError, match="max_request_bytes must be at least 0"):
        load_config(env={"CORRAL_MAX_REQUEST_BYTES": "-1"})
