"""The authority: NATS operator keys, per-node credentials, revocation, and the TLS CA.

Theory of operation: corral runs NATS in *operator mode* (decentralised JWT auth). ``corral
init`` creates an operator, a system account and the ``CORRAL`` account, and signs their JWTs.
Every process then connects with a ``.creds`` file: a user JWT signed by the account's signing
key, holding that user's permissions, plus the user's private nkey seed. The server verifies the
chain of signatures itself, so a credential exists only because this authority signed it (no
trust on first use), and a node's JWT lets it publish only below its own subjects.

Revoking a node adds its user keys to the account JWT's revocation list; pushing the re-signed
account JWT to the server (``$SYS.REQ.CLAIMS.UPDATE``) makes the server close that node's live
connections and refuse new ones, with nothing restarted. An external nats-server trusts the same
authority by including ``<data_dir>/auth/nats-auth.conf`` in its configuration.

All secrets live in ``<data_dir>/auth`` (mode 0700, files 0600); ``authority.json`` holds the
seeds and the register of issued node keys, like Salt's ``pki/master`` directory.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nkeys

from corral import subjects
from corral.errors import ConfigError, NotInitialized, UsageError

__all__ = [
    "Authority",
    "IssuedKey",
    "Permissions",
    "agent_inbox",
    "agent_permissions",
    "credential_name",
    "guardian_permissions",
    "node_permissions",
    "write_secret",
]

_UNLIMITED = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}
_JETSTREAM_UNLIMITED = {
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
    "max_ack_pending": -1,
    "mem_max_stream_bytes": -1,
    "disk_max_stream_bytes": -1,
    "max_bytes_required": False,
}


class Permissions(msgspec.Struct, frozen=True):
    """What a user may publish and subscribe to (NATS subject patterns)."""

    pub: tuple[str, ...] = ()
    sub: tuple[str, ...] = ()
    responses: bool = False
    #: subjects refused even where ``pub`` (or no restriction) would allow them
    deny_pub: tuple[str, ...] = ()

    def claims(self) -> dict[str, Any]:
        """The ``nats`` claim fragment for a user JWT (empty lists mean no restriction)."""
        out: dict[str, Any] = {}
        if self.pub or self.deny_pub:
            out["pub"] = {}
        if self.pub:
            out["pub"]["allow"] = list(self.pub)
        if self.deny_pub:
            out["pub"]["deny"] = list(self.deny_pub)
        if self.sub:
            out["sub"] = {"allow": list(self.sub)}
        if self.responses:
            out["resp"] = {"max": 1, "ttl": 0}
        return out


def node_permissions(name: str) -> Permissions:
    """Least privilege for node ``name``: its own subjects, the announcements, its inbox."""
    return Permissions(
        pub=(subjects.node_in(name, ">"),),
        sub=(
            subjects.node_out(name, ">"),
            subjects.ANNOUNCE,
            subjects.LIVE_COMMANDS,
            subjects.inbox_prefix(name) + ".>",
        ),
        responses=True,
    )


#: The operator's CLI: requests to the controller and to agents, replies to its own inbox.
#: Requests that change state go on ``corral.ctl.<verb>.admin``: only this credential may
#: publish there, so the controller knows who sent them (``subjects.ctl_as``).
ADMIN_PERMISSIONS = Permissions(
    pub=(
        subjects.ctl("*"),
        subjects.ctl_as("*", "admin"),
        subjects.agent(">"),
        subjects.AGENTS_INFO,
        subjects.node_out("*", "stream"),
    ),
    sub=(
        "_INBOX.corral-admin.>",
        subjects.stream_items("*", "*", "*"),
        subjects.ANNOUNCE,
        subjects.node_events(">"),
        subjects.command_events(">"),
        subjects.report_events(">"),
    ),
)


#: An operator without the execute role: everything the admin may do except EXECUTE, and
#: its state-changing requests go on ``corral.ctl.<verb>.operator``.
OPERATOR_PERMISSIONS = Permissions(
    pub=(
        subjects.ctl("*"),
        subjects.ctl_as("*", "operator"),
        *ADMIN_PERMISSIONS.pub[2:],
    ),
    sub=ADMIN_PERMISSIONS.sub,
    deny_pub=(subjects.ctl("execute"), subjects.ctl_as("execute", "*")),
)


def agent_permissions(name: str) -> Permissions:
    """Agent ``name`` (``*``: any agent, the data directory's local credential).

    It may hold only its own inbox (or every inbox, for ``*``), send to any agent, answer the
    listing and the requests it receives.
    """
    return Permissions(
        pub=(subjects.agent(">"), subjects.AGENTS_INFO),
        sub=(subjects.agent(name), subjects.AGENTS_INFO, agent_inbox(name) + ".>"),
        responses=True,
    )


#: Members of process groups (``corral launch``, ``Group.join``): group traffic only.
GROUP_PERMISSIONS = Permissions(
    pub=(subjects.GROUPS,),
    sub=(subjects.GROUPS, "_INBOX.corral-group.>"),
)
GROUP_INBOX = "_INBOX.corral-group"


def agent_inbox(name: str) -> str:
    """Reply-inbox prefix of agent (or sender) ``name``; ``*`` allows every agent's."""
    return f"_INBOX.corral-agent.{name}"


ADMIN_INBOX = "_INBOX.corral-admin"

_KV_STREAM = f"KV_{subjects.GUARDIAN_BUCKET}"
#: Reading and watching the guardian bucket (JetStream API subjects nats-py's KV uses).
GUARDIAN_KV_READ = (
    f"$JS.API.STREAM.INFO.{_KV_STREAM}",
    f"$JS.API.STREAM.MSG.GET.{_KV_STREAM}",
    f"$JS.API.DIRECT.GET.{_KV_STREAM}.>",
    f"$JS.API.CONSUMER.CREATE.{_KV_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{_KV_STREAM}.>",
    f"$JS.API.CONSUMER.DELETE.{_KV_STREAM}.>",
    f"$JS.API.CONSUMER.INFO.{_KV_STREAM}.>",
    f"$JS.FC.{_KV_STREAM}.>",
)


def guardian_inbox(name: str) -> str:
    """Reply-inbox prefix of guardian ``name`` (``*``: every guardian's)."""
    return f"_INBOX.corral-guardian.{name}"


def guardian_permissions(name: str) -> Permissions:
    """Guardian ``name`` (``*``: any, the data directory's local credential).

    It answers requests on its own subjects, writes only its own key of the guardian bucket
    (and may create the bucket), reads and watches every key, and sends requests to other
    guardians (a manager).
    """
    return Permissions(
        pub=(
            subjects.guardian("*", ">"),
            subjects.guardian_kv(name),
            f"$JS.API.STREAM.CREATE.{_KV_STREAM}",
            *GUARDIAN_KV_READ,
        ),
        sub=(subjects.guardian(name, ">"), guardian_inbox(name) + ".>"),
        responses=True,
    )


#: What the operator's CLI needs for guardians (`corral guardian ...`): requests and watching.
ADMIN_GUARDIAN_PUB = (subjects.guardian("*", ">"), *GUARDIAN_KV_READ)


class IssuedKey(msgspec.Struct):
    """One credential issued to a node."""

    public_key: str
    issued_at: float
    revoked_at: float | None = None


class _State(msgspec.Struct):
    operator_seed: str
    system_seed: str
    account_seed: str
    signing_seed: str
    created: float
    nodes: dict[str, list[IssuedKey]] = msgspec.field(default_factory=dict)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _new_seed(prefix: int) -> str:
    seed: bytes = nkeys.encode_seed(os.urandom(32), prefix)
    return seed.decode()


def _kp(seed: str) -> Any:
    return nkeys.from_seed(seed.encode())


def _pub(seed: str) -> str:
    return str(_kp(seed).public_key.decode())


@functools.lru_cache(maxsize=8)
def _own_kp(seed: str) -> Any:
    """A key pair of the authority's own (operator, account, signing key), decoded once per
    process: a batch enrolment signs with the same key thousands of times."""
    return _kp(seed)


def _own_pub(seed: str) -> str:
    return str(_own_kp(seed).public_key.decode())


def _jwt(signer_seed: str, subject: str, name: str, nats: dict[str, Any]) -> str:
    """Sign a NATS v2 JWT (header.claims.signature, ed25519-nkey)."""
    signer = _own_kp(signer_seed)
    claims: dict[str, Any] = {
        "jti": "",
        "iat": int(time.time()),
        "iss": signer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": nats,
    }
    digest = hashlib.sha256(json.dumps(claims, separators=(",", ":")).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = signer.sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64(signature)}"


def _creds(jwt: str, seed: str) -> str:
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
    )


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (never a moment with wider access)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def credential_name(creds: str) -> str:
    """The ``name`` claim of the user JWT in a ``.creds`` text (``node:web1``, ``admin``).

    Raises:
        ConfigError: the text holds no readable user JWT.
    """
    lines = creds.splitlines()
    try:
        jwt = lines[lines.index("-----BEGIN NATS USER JWT-----") + 1]
        body = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return str(claims["name"])
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a NATS credentials file (no user JWT): {exc}") from None


class Authority:
    """The keys and credential register in ``<data_dir>/auth``.

    Use :meth:`create` once (``corral init``), then :meth:`load`.
    """

    def __init__(self, directory: Path, state: _State) -> None:
        self.directory = directory
        self._state = state

    def __repr__(self) -> str:
        live = sum(1 for keys in self._state.nodes.values() if any(not k.revoked_at for k in keys))
        return f"<Authority {str(self.directory)!r} operator={self.operator_key[:8]}… nodes={live}>"

    # --- lifecycle ----------------------------------------------------------------------

    @staticmethod
    def exists(data_dir: Path) -> bool:
        """True if ``corral init`` has run for ``data_dir``."""
        return (data_dir / "auth" / "authority.json").exists()

    @classmethod
    def create(cls, data_dir: Path) -> Authority:
        """Create a new authority and the controller, admin and system credentials.

        Raises:
            UsageError: an authority already exists there (it is never overwritten).
        """
        directory = data_dir / "auth"
        if cls.exists(data_dir):
            raise UsageError(
                f"{directory} already holds an authority; remove it first to start over "
                "(every issued credential then stops working)"
            )
        state = _State(
            operator_seed=_new_seed(nkeys.PREFIX_BYTE_OPERATOR),
            system_seed=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
            account_seed=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
            signing_seed=_new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
            created=time.time(),
        )
        authority = cls(directory, state)
        authority._save()
        authority.write_role_credentials()
        return authority

    def ensure_role_credentials(self) -> None:
        """Write role credentials a data directory made by an older corral lacks."""
        if not (self.directory / "agent.creds").exists():
            write_secret(
                self.directory / "agent.creds", self.user_creds("agent:*", agent_permissions("*"))
            )
        if not (self.directory / "operator.creds").exists():
            write_secret(
                self.directory / "operator.creds",
                self.user_creds("operator", _with_guardians(OPERATOR_PERMISSIONS)),
            )
        if not (self.directory / "group.creds").exists():
            write_secret(
                self.directory / "group.creds", self.user_creds("group", GROUP_PERMISSIONS)
            )
        for role, base in (("admin", ADMIN_PERMISSIONS), ("operator", OPERATOR_PERMISSIONS)):
            path = self.directory / f"{role}.creds"
            if path.exists() and not (
                _allows_publish(path.read_text(), ADMIN_GUARDIAN_PUB[0])
                and _allows_publish(path.read_text(), subjects.ctl_as("*", role))
            ):
                # Written before guardians existed, or before requests named their sender
                # (``corral.ctl.>`` let an operator send as the admin): the same role, anew.
                write_secret(path, self.user_creds(role, _with_guardians(base)))
        if not (self.directory / "guardian.creds").exists():
            write_secret(
                self.directory / "guardian.creds",
                self.user_creds("guardian:*", guardian_permissions("*")),
            )

    @classmethod
    def load(cls, data_dir: Path) -> Authority:
        """Load the authority of ``data_dir``.

        Raises:
            NotInitialized: there is none; run ``corral init``.
        """
        path = data_dir / "auth" / "authority.json"
        try:
            state = msgspec.json.decode(path.read_bytes(), type=_State)
        except FileNotFoundError:
            raise NotInitialized(
                f"no corral authority in {data_dir}: run `corral init --data-dir {data_dir}` "
                "(or `corral up`, which initialises on first use)"
            ) from None
        return cls(data_dir / "auth", state)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write of the register between CLI processes."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                fresh = msgspec.json.decode(
                    (self.directory / "authority.json").read_bytes(), type=_State
                )
                self._state = fresh
            except FileNotFoundError:
                pass
            yield
            self._save()

    def _save(self) -> None:
        write_secret(self.directory / "authority.json", msgspec.json.encode(self._state).decode())

    # --- keys and JWTs ------------------------------------------------------------------

    @property
    def operator_key(self) -> str:
        """The operator's public key."""
        return _own_pub(self._state.operator_seed)

    @property
    def system_account(self) -> str:
        """The system account's public key."""
        return _own_pub(self._state.system_seed)

    @property
    def account(self) -> str:
        """The CORRAL account's public key."""
        return _own_pub(self._state.account_seed)

    def operator_jwt(self) -> str:
        """The operator JWT (trusted by the server)."""
        return _jwt(
            self._state.operator_seed,
            self.operator_key,
            "corral",
            {"type": "operator", "version": 2, "system_account": self.system_account},
        )

    def system_account_jwt(self) -> str:
        """The system account JWT."""
        nats = {"type": "account", "version": 2, "limits": dict(_UNLIMITED)}
        return _jwt(self._state.operator_seed, self.system_account, "SYS", nats)

    def revocations(self) -> dict[str, int]:
        """Every revoked user key with the time of its revocation."""
        return {
            # A revocation covers JWTs issued at or before the time; round up so a credential
            # issued within the same second as its revocation is covered too.
            key.public_key: int(key.revoked_at) + 1
            for keys in self._state.nodes.values()
            for key in keys
            if key.revoked_at
        }

    def account_jwt(self) -> str:
        """The CORRAL account JWT, with JetStream enabled and every revocation."""
        nats: dict[str, Any] = {
            "type": "account",
            "version": 2,
            "limits": {**_UNLIMITED, **_JETSTREAM_UNLIMITED},
            "signing_keys": [_own_pub(self._state.signing_seed)],
        }
        if revoked := self.revocations():
            nats["revocations"] = revoked
        return _jwt(self._state.operator_seed, self.account, "CORRAL", nats)

    def user_creds(self, name: str, permissions: Permissions, *, system: bool = False) -> str:
        """A fresh credential (user JWT + seed) with ``permissions``; not registered."""
        seed = _new_seed(nkeys.PREFIX_BYTE_USER)
        return self._sign_user(name, seed, permissions, system=system)

    def _sign_user(
        self, name: str, seed: str, permissions: Permissions, *, system: bool, key: str = ""
    ) -> str:
        """Sign the credential of user ``seed`` (public ``key`` if known, else derived)."""
        key = key or _pub(seed)
        nats: dict[str, Any] = {"type": "user", "version": 2, "subs": -1, "data": -1}
        nats["payload"] = -1
        nats.update(permissions.claims())
        if system:
            jwt = _jwt(self._state.system_seed, key, name, nats)
        else:
            nats["issuer_account"] = self.account
            jwt = _jwt(self._state.signing_seed, key, name, nats)
        return _creds(jwt, seed)

    def write_role_credentials(self) -> None:
        """(Re)write the controller, admin, system and local agent credentials, and the
        server auth fragment."""
        d = self.directory
        write_secret(d / "agent.creds", self.user_creds("agent:*", agent_permissions("*")))
        write_secret(d / "group.creds", self.user_creds("group", GROUP_PERMISSIONS))
        write_secret(d / "guardian.creds", self.user_creds("guardian:*", guardian_permissions("*")))
        write_secret(d / "controller.creds", self.user_creds("controller", Permissions()))
        write_secret(d / "admin.creds", self.user_creds("admin", _admin_permissions()))
        write_secret(
            d / "operator.creds",
            self.user_creds("operator", _with_guardians(OPERATOR_PERMISSIONS)),
        )
        write_secret(d / "system.creds", self.user_creds("system", Permissions(), system=True))
        self.write_server_fragment()

    def write_server_fragment(self) -> Path:
        """Write ``nats-auth.conf`` for an nats-server (``include`` it in an external one)."""
        (self.directory / "operator.jwt").write_text(self.operator_jwt())
        text = self.server_fragment(self.directory / "jwt")
        path = self.directory / "nats-auth.conf"
        write_secret(path, text)
        return path

    def server_fragment(self, resolver_dir: Path) -> str:
        """nats-server configuration that trusts this authority (operator mode).

        Args:
            resolver_dir: where the server keeps account JWTs pushed to it.
        """
        return (
            # The JWT inline, so the fragment is self-contained wherever it is copied.
            f"operator: {self.operator_jwt()}\n"
            f"system_account: {self.system_account}\n"
            f"resolver: {{ type: full, dir: {json.dumps(str(resolver_dir))}, "
            'allow_delete: false, interval: "2m" }\n'
            "resolver_preload: {\n"
            f"  {self.system_account}: {self.system_account_jwt()}\n"
            f"  {self.account}: {self.account_jwt()}\n"
            "}\n"
        )

    # --- node register ------------------------------------------------------------------

    def _issue(self, key: str, claim: str, permissions: Permissions) -> str:
        """Record a new user key under ``key`` and sign its credential as ``claim``."""
        seed = _new_seed(nkeys.PREFIX_BYTE_USER)
        public = _pub(seed)
        with self._locked():
            self._state.nodes.setdefault(key, []).append(
                IssuedKey(public_key=public, issued_at=time.time())
            )
        return self._sign_user(claim, seed, permissions, system=False, key=public)

    def enroll(self, name: str) -> str:
        """Issue a credential for node ``name`` and record its key (Salt's key accept).

        Returns:
            The ``.creds`` file text to give to that node.

        Raises:
            InvalidName: the name cannot be a subject token.
        """
        subjects.check_name(name)
        return self._issue(name, f"node:{name}", node_permissions(name))

    def enroll_many(self, names: Iterable[str]) -> dict[str, str]:
        """Issue a credential for each node of ``names`` at once: one read and one write of
        the register, however many names (:meth:`enroll` in a loop rewrites the whole register
        each time, quadratic in the fleet: 10,000 nodes took minutes).

        Each node still gets its own fresh key and a credential for its own subjects only,
        exactly as :meth:`enroll` would issue it.

        Returns:
            Each name's ``.creds`` text, in the order given.

        Raises:
            InvalidName: a name cannot be a subject token (nothing is issued then).
            UsageError: a name is given twice (nothing is issued then).
        """
        wanted = list(names)
        for name in wanted:
            subjects.check_name(name)
        if twice := sorted(name for name, n in Counter(wanted).items() if n > 1):
            raise UsageError(
                f"{', '.join(map(repr, twice[:5]))} given more than once; give each node's "
                "name once (one credential per node)"
            )
        seeds = {name: _new_seed(nkeys.PREFIX_BYTE_USER) for name in wanted}
        keys = {name: _pub(seed) for name, seed in seeds.items()}
        with self._locked():
            now = time.time()
            for name, key in keys.items():
                self._state.nodes.setdefault(name, []).append(IssuedKey(key, issued_at=now))
        return {
            name: self._sign_user(
                f"node:{name}", seed, node_permissions(name), system=False, key=keys[name]
            )
            for name, seed in seeds.items()
        }

    def enroll_agent(self, name: str) -> str:
        """Issue a credential for agent ``name``: it may hold that name and talk to any agent.

        Returns:
            The ``.creds`` file text.

        Raises:
            InvalidName: the name cannot be a subject token.
        """
        subjects.check_name(name, "agent")
        return self._issue(f"agent:{name}", f"agent:{name}", agent_permissions(name))

    def enroll_guardian(self, name: str) -> str:
        """Issue a credential for guardian ``name``: its own subjects and bucket key only.

        Returns:
            The ``.creds`` file text.

        Raises:
            InvalidName: the name cannot be a subject token.
        """
        subjects.check_name(name, "guardian")
        return self._issue(f"guardian:{name}", f"guardian:{name}", guardian_permissions(name))

    def revoke(self, name: str) -> list[str]:
        """Revoke every live credential of node ``name``.

        Returns:
            The user keys revoked now (empty if all were already revoked).

        Raises:
            UsageError: the node was never enrolled.
        """
        with self._locked():
            keys = self._state.nodes.get(name)
            if not keys:
                raise UsageError(
                    f"no node named {name!r} was ever enrolled; `corral nodes` lists nodes, "
                    "`corral enroll NAME` issues a credential"
                )
            now = time.time()
            revoked = []
            for key in keys:
                if key.revoked_at is None:
                    key.revoked_at = now
                    revoked.append(key.public_key)
        return revoked

    def enrolled(self) -> dict[str, list[IssuedKey]]:
        """Every node ever enrolled, with its issued keys."""
        return {name: list(keys) for name, keys in self._state.nodes.items()}

    def is_enrolled(self, name: str) -> bool:
        """True if ``name`` holds at least one unrevoked credential."""
        return any(k.revoked_at is None for k in self._state.nodes.get(name, ()))


def _with_guardians(base: Permissions) -> Permissions:
    """``base`` (an operator's CLI role) plus sending requests to guardians and reading them."""
    return msgspec.structs.replace(base, pub=(*base.pub, *ADMIN_GUARDIAN_PUB))


def _admin_permissions() -> Permissions:
    """The admin credential's permissions: :data:`ADMIN_PERMISSIONS` plus guardian access."""
    return _with_guardians(ADMIN_PERMISSIONS)


def _allows_publish(creds: str, subject: str) -> bool:
    """True if the user JWT in ``creds`` lists ``subject`` among its publish permissions."""
    lines = creds.splitlines()
    try:
        jwt = lines[lines.index("-----BEGIN NATS USER JWT-----") + 1]
        body = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return subject in claims["nats"].get("pub", {}).get("allow", [])
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        return False
