"""The host stats a node sends with its heartbeats: sampled at most every few seconds, sent
as four numbers, kept by the registry, optional for older nodes."""

from __future__ import annotations

from pathlib import Path

import msgspec

from corral import wire
from corral.core.registry import Registry
from corral.node.stats import HostStats


def test_a_sample_is_taken_at_most_every_interval(tmp_path: Path) -> None:
    now = [100.0]
    host = HostStats(tmp_path, every=5.0, clock=lambda: now[0])
    first = host.current()
    assert first is not None
    assert 0 <= first.cpu_percent <= 100 and 0 < first.mem_percent <= 100
    assert 0 < first.disk_percent <= 100 and first.load1 >= 0
    now[0] += 4.9
    assert host.current() is first  # not sampled again yet
    now[0] += 0.1
    assert host.current() is not first


def test_a_missing_data_directory_reports_its_disk(tmp_path: Path) -> None:
    sample = HostStats(tmp_path / "not" / "yet").sample()
    assert sample is not None and sample.disk_percent > 0


def test_stats_travel_as_four_numbers_and_older_heartbeats_have_none() -> None:
    beat = wire.Heartbeat(instance="i", stats=wire.NodeStats(12.5, 40.0, 70.1, 0.5))
    raw = msgspec.msgpack.decode(wire.encode(beat))
    assert raw["stats"] == [12.5, 40.0, 70.1, 0.5]
    old = msgspec.msgpack.encode({"type": "Heartbeat", "instance": "i", "last_serial": 3})
    assert wire.decode(old, wire.Heartbeat, wire.HEADERS).stats is None


def test_the_registry_keeps_the_last_stats_a_node_sent() -> None:
    reg = Registry(down_after=3.0)
    reg.join("a", wire.Join(instance="i1"), now=0.0)
    stats = {"cpu_percent": 1.0, "mem_percent": 2.0, "disk_percent": 3.0, "load1": 0.1}
    reg.heartbeat("a", "i1", 0, now=1.0, stats=stats)
    assert reg.nodes["a"].stats == stats
    reg.heartbeat("a", "i1", 0, now=2.0)  # a beat without stats keeps the last
    assert reg.nodes["a"].stats == stats


def test_the_nodes_of_one_process_share_a_sampler_per_filesystem(tmp_path: Path) -> None:
    one = HostStats.shared(tmp_path / "node-a" / "work")  # not created yet: its parent counts
    two = HostStats.shared(tmp_path / "node-b")
    assert one is two
    assert HostStats.shared(tmp_path) is one
