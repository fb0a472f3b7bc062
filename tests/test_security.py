"""Authentication and least privilege on a real nats-server in operator mode."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import nats
import pytest

from conftest import scaled
from corral import bus, subjects, wire
from corral.broker import EmbeddedBroker
from corral.cli.admin import _revoke, initialise
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.errors import AuthError, BusUnavailable, ConfigError, InvalidName, UsageError
from corral.node import Node
from corral.security import Authority, credential_name


def enroll(config: Config, name: str) -> Path:
    path = config.data_path / f"{name}.creds"
    path.write_text(Authority.load(config.data_path).enroll(name))
    return path


async def test_a_credential_from_another_authority_is_refused(
    broker: EmbeddedBroker, config: Config, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    initialise(Config(data_dir=str(other)), tls=False)
    stranger = tmp_path / "stranger.creds"
    stranger.write_text(Authority.load(other).enroll("stranger"))
    with pytest.raises(AuthError, match="refused credential"):
        await bus.connect(config, "node-stranger", creds=stranger)


async def test_revocation_closes_the_live_connection_and_refuses_new_ones(
    controller: Controller, config: Config
) -> None:
    creds = enroll(config, "victim")
    node = Node(config, "victim", creds=creds)
    await node.start(wait_for_bus=scaled(5))
    await asyncio.wait_for(node.wait_joined(), scaled(5))
    keys, pushed = await _revoke(config, "victim")
    assert pushed and len(keys) == 1
    # The server closed the node's connection: the node stops with a clear error.
    await asyncio.wait_for(node._done.wait(), scaled(5))
    assert isinstance(node._failure, AuthError) and "revoked" in str(node._failure)
    async with await Client.connect(config) as client:
        await client.wait_for(
            lambda ns: [(n.name, n.status) for n in ns] == [("victim", "REVOKED")], scaled(5)
        )
    with pytest.raises(AuthError):
        await bus.connect(config, "node-victim", creds=creds)
    assert controller.store is not None
    (entry,) = await controller.store.audit_log()
    assert (entry.action, entry.target, entry.detail["keys"]) == ("revoke", "victim", keys)
    await node.stop()


async def test_revocation_survives_a_broker_restart(config: Config) -> None:
    creds = enroll(config, "gone")
    Authority.load(config.data_path).revoke("gone")
    broker = EmbeddedBroker(config, Authority.load(config.data_path))
    await broker.start(timeout=scaled(15))
    try:
        with pytest.raises(AuthError):
            await bus.connect(config, "node-gone", creds=creds)
    finally:
        broker.stop()


async def test_revoking_an_unknown_node_is_a_usage_error(config: Config) -> None:
    with pytest.raises(UsageError, match="was ever enrolled"):
        Authority.load(config.data_path).revoke("nobody")


async def test_a_node_cannot_publish_or_listen_as_another_node(
    broker: EmbeddedBroker, config: Config
) -> None:
    errors: list[Exception] = []
    two_errors = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        errors.append(exc)
        if len(errors) >= 2:
            two_errors.set()

    watcher = await bus.connect(config, "controller")
    seen: list[str] = []
    arrived = asyncio.Event()

    async def record(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.subject)
        if msg.subject == subjects.node_in("mallory", "hb"):
            arrived.set()

    await watcher.subscribe("corral.in.>", cb=record)
    await watcher.flush()
    creds = enroll(config, "mallory")
    nc = await nats.connect(
        config.bus_url,
        user_credentials=str(creds),
        error_cb=on_error,
        tls=bus.pki.client_context(config.data_path / "pki" / "ca.pem"),
        inbox_prefix=subjects.inbox_prefix("mallory"),
    )
    try:
        await nc.subscribe(subjects.node_out("alice", "ctl"))
        await nc.publish(subjects.node_in("alice", "hb"), b"forged")
        await nc.publish(subjects.node_in("mallory", "hb"), b"own")
        await nc.flush()
        # Messages from one publisher arrive in order: once its own arrived, the forged one
        # would have arrived before it.
        await asyncio.wait_for(arrived.wait(), scaled(5))
        assert seen == [subjects.node_in("mallory", "hb")]
        await asyncio.wait_for(two_errors.wait(), scaled(5))
        text = " ".join(str(e) for e in errors)
        assert "publish" in text and "subscription" in text.lower()
    finally:
        await nc.close()
        await watcher.close()


async def test_plain_text_connection_to_a_tls_bus_fails(
    broker: EmbeddedBroker, config: Config
) -> None:
    plain = msgspec.structs.replace(config, tls=False)
    with pytest.raises((BusUnavailable, AuthError)):
        await bus.connect(plain, "controller")


async def test_wrong_ca_is_refused(broker: EmbeddedBroker, config: Config, tmp_path: Path) -> None:
    other = tmp_path / "other"
    initialise(Config(data_dir=str(other)))
    wrong = msgspec.structs.replace(config, ca=str(other / "pki" / "ca.pem"))
    with pytest.raises(BusUnavailable, match="cannot reach"):
        await bus.connect(wrong, "controller")


async def test_missing_credentials_file_names_the_fix(config: Config) -> None:
    with pytest.raises(ConfigError, match="corral enroll"):
        await bus.connect(config, "node-nobody")


def test_authority_files_are_private(config: Config) -> None:
    auth = config.data_path / "auth"
    for name in ("authority.json", "controller.creds", "admin.creds", "system.creds"):
        assert (auth / name).stat().st_mode & 0o077 == 0, name
    assert (config.data_path / "pki" / "ca.key").stat().st_mode & 0o077 == 0


def test_errors_are_wire_codes_and_back() -> None:
    reply = wire.ErrorReply(code="duplicate-name", error="held")
    with pytest.raises(Exception, match="held"):
        wire.raise_for_error(reply)


async def test_a_node_started_with_another_nodes_credential_says_so(config: Config) -> None:
    creds = enroll(config, "alice")
    node = Node(config, "bob", creds=creds)
    with pytest.raises(ConfigError, match="is for 'node:alice', not node 'bob'"):
        await node.start()


async def test_a_batch_enrolment_gives_each_node_its_own_key_and_subjects(
    broker: EmbeddedBroker, config: Config
) -> None:
    creds = Authority.load(config.data_path).enroll_many(["b1", "b2", "b3"])
    assert list(creds) == ["b1", "b2", "b3"]
    assert [credential_name(text) for text in creds.values()] == ["node:b1", "node:b2", "node:b3"]
    register = Authority.load(config.data_path).enrolled()  # as written to disk
    keys = {register[name][-1].public_key for name in creds}
    assert len(keys) == 3 and all(len(register[name]) == 1 for name in creds)
    seeds = {text.split("-----BEGIN USER NKEY SEED-----\n")[1][:58] for text in creds.values()}
    assert len(seeds) == 3
    # b1's credential connects, and may publish as b1 only (not as b2, batch-mate or not).
    path = config.data_path / "b1.creds"
    path.write_text(creds["b1"])
    violations: list[Exception] = []
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        violations.append(exc)
        refused.set()

    nc = await nats.connect(
        config.bus_url,
        user_credentials=str(path),
        error_cb=on_error,
        tls=bus.pki.client_context(config.data_path / "pki" / "ca.pem"),
    )
    try:
        await nc.publish(subjects.node_in("b1", "hb"), b"own")
        await nc.publish(subjects.node_in("b2", "hb"), b"forged")
        await nc.flush()
        await asyncio.wait_for(refused.wait(), scaled(5))
        assert "publish" in str(violations[0]).lower() and "corral.in.b2" in str(violations[0])
    finally:
        await nc.close()


def test_a_batch_with_a_bad_or_repeated_name_issues_nothing(config: Config) -> None:
    authority = Authority.load(config.data_path)
    with pytest.raises(InvalidName, match="'bad name'"):
        authority.enroll_many(["ok1", "bad name"])
    with pytest.raises(UsageError, match="'twice' given more than once"):
        authority.enroll_many(["twice", "ok2", "twice"])
    again = Authority.load(config.data_path)
    assert not any(again.is_enrolled(name) for name in ("ok1", "ok2", "twice"))


def test_a_batch_enrolment_is_linear_in_the_fleet(config: Config) -> None:
    """One read and one write of the register for the whole batch: enrolling one by one
    rewrote it each time (3,000 nodes: ~15 s; 10,000: minutes)."""
    names = [f"f{i:05d}" for i in range(3000)]
    started = time.monotonic()
    creds = Authority.load(config.data_path).enroll_many(names)
    assert time.monotonic() - started < scaled(5)
    assert len(creds) == 3000 and len(set(creds.values())) == 3000
    assert set(names) <= set(Authority.load(config.data_path).enrolled())
