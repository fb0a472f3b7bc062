"""API tokens as users give them: a token or a file, from every source (issue #12, 9).

The sources docs/configuration.md names: ``token=`` of ``Controller``/``AsyncController``,
``CORRAL_API_TOKEN``, ``api_token`` and the CLI's ``--token``. Each takes the token itself or
the path of a file holding it; a malformed one is refused, saying what is wrong, before any
request (the URLs below point at a port nobody listens on to prove it).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from conftest import child_env, corral_argv, free_port, scaled
from corral import AsyncController, Controller
from corral.config import Config
from corral.controller import Controller as ControllerService
from corral.errors import AuthenticationFailed
from corral.tokens import Role, load_token, read_token, token_problem
from tasks_fixtures import token_for

GOOD = "crl_0123456789ab_" + "A-_z" * 10 + "xyz"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "it is empty"),
        ("Bearer " + GOOD, "it does not start with 'crl_'"),
        ("crl_0123456789ab_abc", "it is too short: 20 characters, a token has 60"),
        (GOOD[:30] + "\n" + GOOD[30:], r"illegal character '\n' at position 31"),
        (GOOD[:20] + "é" + GOOD[21:], "illegal character 'é' at position 21"),
        ("crl_x_y", "the id after 'crl_' is not 12 hex digits followed by '_'"),
        (
            "crl_0123456789abcdef" + "s" * 43,
            "the id after 'crl_' is not 12 hex digits followed by '_'",
        ),
    ],
)
def test_token_problem_says_what_is_wrong(text: str, problem: str) -> None:
    assert token_problem(GOOD) is None
    assert token_problem(text) == problem


def test_load_token_strips_a_file_and_names_it_when_bad(tmp_path: Path) -> None:
    good = tmp_path / "ops.token"
    good.write_text(f"  {GOOD}\n")
    assert load_token(str(good)) == GOOD
    assert load_token(f"{GOOD}\n") == GOOD  # what $(cat file) can leave
    bad = tmp_path / "bad.token"
    bad.write_text("crl_0123456789ab_short\n")
    with pytest.raises(AuthenticationFailed, match=rf"in the file {bad} .*too short"):
        load_token(str(bad), "CORRAL_API_TOKEN")
    missing = tmp_path / "nope.token"
    with pytest.raises(AuthenticationFailed, match="nor the path of a file that exists"):
        load_token(str(missing))


def test_a_mistyped_secret_is_not_echoed() -> None:
    with pytest.raises(AuthenticationFailed) as info:
        load_token("sk-this-is-my-secret")
    assert "sk-this-is-my-secret" not in str(info.value)


def test_read_token_takes_a_file_from_api_token(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text(GOOD + "\n")
    assert read_token(Config(data_dir=str(tmp_path), api_token=str(path))) == GOOD
    assert read_token(Config(data_dir=str(tmp_path)), explicit=str(path)) == GOOD


def test_malformed_token_is_refused_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(AuthenticationFailed, match=r"illegal character '\\n' at position 31"):
        AsyncController(nowhere, GOOD[:30] + "\n" + GOOD[30:])
    monkeypatch.setenv("CORRAL_API_TOKEN", "crl_0123456789ab_abc")
    with pytest.raises(AuthenticationFailed, match="in CORRAL_API_TOKEN: it is too short"):
        AsyncController(nowhere, config=Config(data_dir=str(tmp_path)))


@pytest.fixture
async def token_file(controller: ControllerService, tmp_path: Path) -> Path:
    """A real read token in a file, with the newline `corral token create > f` leaves."""
    path = tmp_path / "read.token"
    path.write_text(await token_for(controller, Role.READ) + "\n")
    path.chmod(0o600)
    return path


async def test_token_file_as_token_argument_async_and_sync(
    controller: ControllerService, token_file: Path
) -> None:
    assert controller.api is not None
    url = controller.api.url
    async with AsyncController(url, str(token_file), timeout=scaled(20)) as client:
        assert (await client.node_list()).total == 0

    def blocking() -> int:
        with Controller(url, token=str(token_file), timeout=scaled(20)) as sync_client:
            return int(sync_client.node_list().total)

    assert await asyncio.to_thread(blocking) == 0


async def test_token_file_in_corral_api_token(
    controller: ControllerService, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert controller.api is not None
    monkeypatch.setenv("CORRAL_API_TOKEN", str(token_file))
    async with AsyncController(controller.api.url, timeout=scaled(20)) as client:
        assert (await client.node_list()).total == 0
    # A token with the newline of $(cat file) works as well.
    monkeypatch.setenv("CORRAL_API_TOKEN", token_file.read_text())
    async with AsyncController(controller.api.url, timeout=scaled(20)) as client:
        assert (await client.node_list()).total == 0


async def _cli(config: Config, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        corral_argv(config, *args),
        env={**child_env(config), **env},
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


async def test_cli_token_file_from_flag_and_environment(
    controller: ControllerService, config: Config, token_file: Path, tmp_path: Path
) -> None:
    assert controller.api is not None
    api = controller.api.url
    by_flag = await _cli(config, "tasks", "--json", "--api", api, "--token", str(token_file))
    assert by_flag.returncode == 0, by_flag.stderr
    by_env = await _cli(config, "tasks", "--json", "--api", api, CORRAL_API_TOKEN=str(token_file))
    assert by_env.returncode == 0, by_env.stderr

    broken = tmp_path / "broken.token"
    text = token_file.read_text()
    broken.write_text(text[:16] + " " + text[17:])  # crl_<id> <secret>
    refused = await _cli(config, "tasks", "--api", api, "--token", str(broken))
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 1 and "Traceback" not in said
    assert f"malformed API token in the file {broken}" in said
    assert "illegal character ' ' at position 17" in said
