"""A guardian's own credential: its subjects and its bucket key, nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import nats
import pytest

from conftest import scaled
from corral import bus, subjects
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.guardian import Guardian, GuardianClient
from corral.security import Authority, credential_name, guardian_inbox, write_secret

SYSTEM = "from corral.guardian import GuardState\nclass DOWN(GuardState):\n    goto = True\n"


def enroll(config: Config, name: str, tmp: Path) -> Path:
    path = tmp / f"{name}.creds"
    write_secret(path, Authority.load(config.data_path).enroll_guardian(name))
    return path


def test_init_writes_the_local_guardian_credential(config: Config) -> None:
    path = config.data_path / "auth" / "guardian.creds"
    assert credential_name(path.read_text()) == "guardian:*"
    assert path.stat().st_mode & 0o077 == 0


async def test_a_guardian_runs_with_its_own_credential_and_cannot_touch_another(
    broker: EmbeddedBroker, config: Config, tmp_path: Path
) -> None:
    (tmp_path / "sys.py").write_text(SYSTEM)
    own = msgspec.structs.replace(config, creds=str(enroll(config, "SUS1", tmp_path)))
    g = Guardian(tmp_path / "sys.py", "SUS1", config=own)
    await g.start()
    errors: list[Exception] = []
    two = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        errors.append(exc)
        if len(errors) >= 2:
            two.set()

    nc = await nats.connect(
        config.bus_url,
        user_credentials=str(enroll(config, "MALLORY", tmp_path)),
        error_cb=on_error,
        tls=bus.pki.client_context(config.data_path / "pki" / "ca.pem"),
        inbox_prefix=guardian_inbox("MALLORY"),
    )
    try:
        await nc.subscribe(subjects.guardian("SUS1", "request"))  # another's requests
        await nc.publish(subjects.guardian_kv("SUS1"), b"forged view")  # another's key
        await nc.flush()
        await asyncio.wait_for(two.wait(), scaled(5))
        text = " ".join(str(e) for e in errors).lower()
        assert "publish" in text and "subscription" in text
        async with await GuardianClient.connect(config) as client:
            views = await client.list()
        assert [(v.name, v.state) for v in views] == [("SUS1", "DOWN")]  # not forged
    finally:
        await nc.close()
        await g.stop()


async def test_a_guardian_credential_cannot_command_nodes(
    broker: EmbeddedBroker, config: Config
) -> None:
    errors: list[Exception] = []
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        errors.append(exc)
        refused.set()

    nc = await nats.connect(
        config.bus_url,
        user_credentials=str(config.data_path / "auth" / "guardian.creds"),
        error_cb=on_error,
        tls=bus.pki.client_context(config.data_path / "pki" / "ca.pem"),
    )
    try:
        await nc.publish(subjects.ctl("nodes"), b"x")
        await nc.flush()
        await asyncio.wait_for(refused.wait(), scaled(5))
        assert "publish" in str(errors[0]).lower()
    finally:
        await nc.close()


@pytest.mark.parametrize("name", ["bad.name", "*"])
def test_enrolling_a_bad_guardian_name_is_refused(config: Config, name: str) -> None:
    from corral.errors import InvalidName

    with pytest.raises(InvalidName, match="invalid guardian name"):
        Authority.load(config.data_path).enroll_guardian(name)


def test_an_old_admin_credential_gains_guardian_access(config: Config) -> None:
    from corral.security import ADMIN_PERMISSIONS, _allows_publish

    authority = Authority.load(config.data_path)
    admin = config.data_path / "auth" / "admin.creds"
    write_secret(admin, authority.user_creds("admin", ADMIN_PERMISSIONS))  # before guardians
    assert not _allows_publish(admin.read_text(), "corral.guardian.*.>")
    authority.ensure_role_credentials()  # what `corral init` / `corral up` run on old dirs
    assert _allows_publish(admin.read_text(), "corral.guardian.*.>")
    assert credential_name(admin.read_text()) == "admin"


async def test_another_guardians_credential_is_refused_clearly(
    broker: EmbeddedBroker, config: Config, tmp_path: Path
) -> None:
    from corral.errors import ConfigError

    (tmp_path / "sys.py").write_text(SYSTEM)
    other = msgspec.structs.replace(config, creds=str(enroll(config, "SUS2", tmp_path)))
    g = Guardian(tmp_path / "sys.py", "SUS1", config=other)
    with pytest.raises(ConfigError, match="is for 'guardian:SUS2', not guardian 'SUS1'"):
        await g.start()
    await g.stop()  # harmless: it never started
