"""Configuration: one TOML file, then ``CORRAL_*`` environment variables, then flags.

Each later source overrides the earlier ones. The file is ``--config PATH``, else
``$CORRAL_CONFIG``, else ``<data_dir>/corral.toml`` if it exists. ``corral config show`` prints
the effective values and where each one came from.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from corral.errors import ConfigError

__all__ = ["EMBEDDED_PORT", "Config", "default_data_dir", "load_config"]

#: Default port of the embedded nats-server (not 4222, which a system NATS may hold).
EMBEDDED_PORT = 4333


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/corral``, or ``~/.local/share/corral``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "corral"


class Config(msgspec.Struct, kw_only=True):
    """Every setting, with its default. Field docs are shown by ``corral config show``."""

    #: where keys, credentials, the SQLite store and the embedded server's files live
    data_dir: str = ""
    #: URL of an external NATS; empty means the embedded server on nats_host:nats_port
    nats_url: str = ""
    #: address the embedded nats-server listens on
    nats_host: str = "127.0.0.1"
    #: port the embedded nats-server listens on
    nats_port: int = EMBEDDED_PORT
    #: NATS credentials file; empty means the one for this role in <data_dir>/auth
    creds: str = ""
    #: CA certificate to verify the NATS server; empty means <data_dir>/pki/ca.pem if present
    ca: str = ""
    #: use TLS on bus links when a CA is available
    tls: bool = True
    #: store URL or DSN; empty means the SQLite file <data_dir>/corral.db
    store: str = ""
    #: SQLite store: most seconds between a commit and its fsync. A write is answered once
    #: the OS has it (it survives kill -9 of any process) and is on disk within this; a
    #: power loss may lose the last ones. 0: fsync every commit before answering (slower)
    store_fsync_interval: float = 0.1
    #: seconds between node heartbeats
    heartbeat_interval: float = 1.0
    #: seconds of silence after which the controller marks a node DOWN
    down_after: float = 3.0
    #: seconds between controller announcements
    announce_interval: float = 1.0
    #: seconds the leading controller's lease lasts (renewed every third of it); a standby
    #: takes over once it expired (docs/operations.md, "Several controllers")
    lease: float = 5.0
    #: the API's address other controllers send clients to when this one leads; empty means
    #: the address it listens on
    advertise_url: str = ""
    #: largest control message the controller accepts, in bytes
    max_message_bytes: int = 64 * 1024
    #: largest command (with its payload: PUT file, EXECUTE script) accepted, in bytes
    max_command_bytes: int = 1024 * 1024
    #: default seconds after which a command a node has not received is expired for it
    retire_after: float = 120.0
    #: seconds between report updates pushed to sinks and watchers (SEER doUpdates)
    report_interval: float = 1.0
    #: most characters of a command's stdout (and stderr) kept per node
    output_limit: int = 65_536
    #: most characters of a task instance's stdout, stderr and ctx.log lines kept
    task_log_limit: int = 65_536
    #: seconds an idempotency key of a submission is remembered (its first answer returned)
    idempotency_window: float = 86_400.0
    #: log format: auto (text on a TTY, JSON otherwise), text or json
    log_format: str = "auto"
    #: log level: debug, info, warning, error
    log_level: str = "info"
    #: also write this process's log to this file (rotated); empty means stderr only
    log_file: str = ""
    #: size in bytes at which a log file corral writes is rotated; 0 never rotates
    log_max_bytes: int = 10 * 1024 * 1024
    #: rotated log files kept beside the current one (NAME.1 is the newest)
    log_backups: int = 5
    #: address the controller's HTTP API listens on (loopback unless told otherwise)
    api_host: str = "127.0.0.1"
    #: port of the controller's HTTP API; 0 picks a free one, -1 turns the API off
    api_port: int = 4334
    #: copies a JetStream cluster keeps of the streams and buckets corral creates (3 on a
    #: three-server NATS cluster survives losing one; 1 on a single server)
    jetstream_replicas: int = 1
    #: the controllers' API URLs for the CLI and Python clients, comma-separated; calls go
    #: to whichever leads (empty means api_host:api_port)
    api_urls: str = ""
    #: API token for the CLI and Python client; empty means <data_dir>/auth/api-admin.token
    api_token: str = ""
    #: most task instances a node holds per worker slot (1 = only those it runs); each task
    #: key gets what about 5 ms of its measured run time fills, 1 for long or new keys
    task_prefetch: int = 16
    #: leases a task instance may lose (its node died) before it fails
    task_max_attempts: int = 3
    #: seconds a forced cancel waits for the task to stop before killing its worker
    cancel_grace: float = 5.0
    #: largest HTTP request body the API and dashboard accept, in bytes; 0 means
    #: max_command_bytes
    max_request_bytes: int = 0
    #: API calls one token may have in flight at once
    api_max_in_flight: int = 200
    #: API calls per second one token may make, on average
    api_rate: float = 1000.0
    #: API calls one token may make in a burst above api_rate
    api_burst: int = 2000
    #: seconds after which a node that left on purpose (LEFT) is forgotten; 0 = never
    left_expiry: float = 86_400.0
    #: serve /metrics without a token to anyone (False: a read token, except from loopback)
    metrics_public: bool = False

    @property
    def data_path(self) -> Path:
        """The data directory as a path (the default when unset)."""
        return Path(self.data_dir).expanduser() if self.data_dir else default_data_dir()

    @property
    def embedded(self) -> bool:
        """True when corral runs its own nats-server (no external URL given)."""
        return not self.nats_url

    @property
    def bus_url(self) -> str:
        """The URL processes connect to."""
        if self.nats_url:
            return self.nats_url
        scheme = "tls" if self.tls and self.ca_path() else "nats"
        # A server listening on every address is reached here through loopback (which its
        # certificate names); other machines use the host's own name.
        host = "127.0.0.1" if self.nats_host in ("0.0.0.0", "::", "") else self.nats_host
        return f"{scheme}://{host}:{self.nats_port}"

    @property
    def store_url(self) -> str:
        """The store URL (the SQLite default spelled out)."""
        return self.store or str(self.data_path / "corral.db")

    def ca_path(self) -> Path | None:
        """The CA file to trust, or None when TLS is off or no CA exists."""
        if not self.tls:
            return None
        if self.ca:
            return Path(self.ca).expanduser()
        default = self.data_path / "pki" / "ca.pem"
        return default if default.exists() else None

    @property
    def request_limit(self) -> int:
        """The HTTP body limit in bytes (``max_request_bytes``, else ``max_command_bytes``)."""
        return self.max_request_bytes or self.max_command_bytes

    @property
    def api_url(self) -> str:
        """Where the controller's HTTP API is reached (loopback for a wildcard address)."""
        host = "127.0.0.1" if self.api_host in ("0.0.0.0", "::", "") else self.api_host
        return f"http://{host}:{self.api_port}"

    def creds_path(self, role: str) -> Path:
        """The credentials file for ``role`` (``controller``, ``admin`` or ``node-<name>``)."""
        if self.creds:
            return Path(self.creds).expanduser()
        return self.data_path / "auth" / f"{role}.creds"


FIELDS: dict[str, msgspec.structs.FieldInfo] = {f.name: f for f in msgspec.structs.fields(Config)}


def _coerce(name: str, raw: Any, source: str) -> Any:
    kind = FIELDS[name].type
    try:
        if isinstance(raw, str) and kind is not str:
            raw = msgspec.json.decode(raw.lower() if kind is bool else raw)
        return msgspec.convert(raw, kind)
    except (msgspec.ValidationError, msgspec.DecodeError):
        raise ConfigError(
            f"{source}: {name} must be a {getattr(kind, '__name__', kind)}, got {raw!r}"
        ) from None


def load_config(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> tuple[Config, dict[str, str]]:
    """Build the effective configuration.

    Args:
        flags: values given on the command line (``None`` values are ignored).
        env: the environment (defaults to ``os.environ``).
        config_file: an explicit TOML file (``--config``).

    Returns:
        The configuration and, for each field set by something other than its default, the
        source that set it (``file:<path>``, ``env:CORRAL_X`` or ``flag``).

    Raises:
        ConfigError: an unreadable file, an unknown key, or a value of the wrong type.
    """
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def env_name(field: str) -> str:
        return "CORRAL_" + field.upper()

    # The data directory decides where the default file is, so resolve it first.
    data_dir = flags.get("data_dir") or env.get(env_name("data_dir")) or ""
    path_str = config_file or env.get("CORRAL_CONFIG")
    path = Path(path_str) if path_str else None
    if path is None:
        candidate = (Path(data_dir).expanduser() if data_dir else default_data_dir()) / (
            "corral.toml"
        )
        path = candidate if candidate.exists() else None
    if path is not None:
        try:
            table = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        for key, raw in table.items():
            name = key.replace("-", "_")
            if name not in FIELDS:
                known = ", ".join(sorted(FIELDS))
                raise ConfigError(f"{path}: unknown setting {key!r}; known settings: {known}")
            values[name] = _coerce(name, raw, str(path))
            sources[name] = f"file:{path}"
    for name in FIELDS:
        if (raw := env.get(env_name(name))) is not None:
            values[name] = _coerce(name, raw, env_name(name))
            sources[name] = f"env:{env_name(name)}"
    for name, raw in flags.items():
        if name in FIELDS:
            values[name] = _coerce(name, raw, f"--{name.replace('_', '-')}")
            sources[name] = "flag"
    config = Config(**values)
    _check(config, sources)
    return config, sources


def _check(config: Config, sources: dict[str, str]) -> None:
    """Refuse settings that cannot work, naming the setting and where it came from."""
    if config.down_after <= config.heartbeat_interval:
        raise ConfigError(
            f"down_after ({config.down_after}s) must exceed heartbeat_interval "
            f"({config.heartbeat_interval}s), or every node flaps DOWN between heartbeats"
        )
    if not 1 <= config.jetstream_replicas <= 5:
        raise ConfigError(
            f"jetstream_replicas must be 1 to 5 (JetStream's limit), got "
            f"{config.jetstream_replicas} (from {sources.get('jetstream_replicas', 'default')})"
        )
    for name, low, strict in (
        ("retire_after", 0, False),
        ("report_interval", 0, True),
        ("max_command_bytes", 0, True),
        ("output_limit", 0, False),
        ("log_max_bytes", 0, False),
        ("log_backups", 0, False),
        ("max_request_bytes", 0, False),
        ("api_max_in_flight", 0, True),
        ("api_rate", 0, True),
        ("api_burst", 0, True),
        ("idempotency_window", 0, True),
        ("left_expiry", 0, False),
        ("lease", 0, True),
        ("store_fsync_interval", 0, False),
    ):
        value = getattr(config, name)
        if value < low or (strict and value == low):
            bound = "more than" if strict else "at least"
            raise ConfigError(
                f"{name} must be {bound} {low}, got {value} (from {sources.get(name, 'default')})"
            )
