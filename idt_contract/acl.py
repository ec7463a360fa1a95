"""Redis ACL users generated from the event contract, and the tools to deploy them.

Every process talks to Redis as its own user, allowed only the commands it runs
and only the stream keys it needs:

- ``default``: off (no connection without naming a user).
- ``admin``: everything (operators: ``ACL LOAD``, ``ACL LOG``, repairs).
- ``contact_centre``, ``bdc``, ``scheduler``, ``scoring``: consume the streams in
  their appliers (consumer group = the service name), XADD to the streams they
  publish and to ``idt:dead-letters``, read their groups for /metrics.
- ``clock``: XADD ``idt:clock-tick`` (``python -m idt_cli.clock``).
- ``registry``: XADD ``idt:office-registered`` (``idt offices load``).
- ``ingest``: XADD every input stream (``idt replay``, the demo), read the groups
  and the derived streams to wait for the drain; never XADD to what the services
  derive (``idt:window-outcome``, ``idt:window-alerts:*``).
- ``jc-<office_id>``, one per Jobcentre in the registry: read, and consume with
  its own group, only ``idt:window-alerts:<office_id>``; no XADD, XDEL, DEL...
- ``cc-<office_id>``: the same per Contact Centre (they receive
  MARKER_UNALLOCATED alerts).

The streams come from the services' handlers (``APPLIERS``, or the scheduler's
``Scheduler().appliers()``, and ``PUBLISHES``) and the offices from the registry
file, so the shipped rules cannot drift from the code without ``--check`` failing.

Files
-----
``deploy/redis/users.acl.rules`` (generated, shipped): one ``user <name> <rules>``
line per user, with comments, and NO password. Rules are Redis 7.2 syntax; a
service's XADD is granted in a selector ``(+xadd ~...)`` so that it can XADD only
to the streams it publishes. ``render`` adapts them to the server's version:
7.0/7.1 lose ``+client|setinfo`` (no such subcommand there); 6.2 has no selectors,
so they are merged into the user's root permissions (on 6.2 a user's commands
reach all of its keys: a service may XADD to a stream it consumes, ``ingest`` to
the derived streams; every other restriction holds), and it gains
``+client|maint_notifications`` (redis-py's RESP3 handshake).

A passwords directory holds one file per user, ``DIR/<user>`` (one line, the
password; surrounding whitespace dropped, as ``IDT_REDIS_PASSWORD_FILE`` reads
it), and optionally ``DIR/<user>.previous`` during a rotation (both passwords are
accepted). ``default`` has no file (it is off).

Usage
-----
::

    python -m idt_contract.acl                     # regenerate users.acl.rules
    python -m idt_contract.acl --check             # exit 1 if the shipped file is stale
    python -m idt_contract.acl secrets --dir DIR   # a random password (mode 0600) for
                                                   # every user that has no file yet
    python -m idt_contract.acl render --passwords-dir DIR --redis-version 7.2 \\
        --out users.acl                            # the Redis aclfile (mode 0600)
    python -m idt_contract.acl apply --redis-url redis://admin:PW@host:6379/0 \\
        --passwords-dir DIR                        # ACL SETUSER each user on a running
                                                   # server (its version is asked)

``secrets``, ``render`` and ``apply`` take ``--rules FILE`` (default: the shipped
file); ``render`` takes ``--mode 640`` for another file mode. ``--redis-version``
is MAJOR.MINOR of the server that loads the file (required: the rules differ by
version). A missing or empty password file is an error that names every user
concerned. The rendered file is a Redis ``aclfile`` (no comments: Redis refuses
them there): start ``redis-server --aclfile /path/users.acl``; after re-rendering,
``ACL LOAD`` (as ``admin``) replaces every user at once (and disconnects their
clients, which reconnect). A process then connects as its user with
``IDT_REDIS_USERNAME=<user>`` and ``IDT_REDIS_PASSWORD_FILE=DIR/<user>``; the CLI
tools take ``--redis-url redis://<user>:<password>@host:port/0``.

Exit codes: 0 done, 1 stale (``--check``), 2 bad input (the message says why).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets as _secrets
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .events import EVENT_TYPES
from .export import SERVICES, consumed_streams
from .streams import DEAD_LETTERS, alerts_stream, outbox_run_key, stream_for

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "redis" / "users.acl.rules"
OFFICES = ROOT / "deploy" / "registry" / "offices.csv"

#: User-name prefix of the alert readers, by office kind (the offices alerts go to).
OFFICE_USER_PREFIX = {"JOBCENTRE": "jc", "CONTACT_CENTRE": "cc"}

#: Why each command is granted; printed in the generated file's header.
WHY: dict[str, str] = {
    "ping": "health checks (/health, the CLI's connect)",
    "select": "a Redis URL naming a database other than 0 (redis-py SELECTs on connect)",
    "client|setinfo": "redis-py names its library on connect and ignores a refusal; granted "
    "so that ACL LOG shows only real denials (Redis 6.2 and 7.2+; no such command in 7.0/7.1). "
    "For 6.2 `render` adds client|maint_notifications (redis-py's RESP3 handshake) likewise",
    "multi": "acks and dead letters in one transaction; the registry published whole",
    "exec": "(with multi)",
    "xgroup|create": "consumer groups at id 0 before reading starts, recreating a group after "
    "NOGROUP",
    "xgroup|createconsumer": "an alert reader's consumers (XREADGROUP also creates them)",
    "xreadgroup": "a service's reader (one XREADGROUP over all its streams); an alert "
    "reader's group",
    "xack": "acking after the database commit",
    "xautoclaim": "the reclaimer: entries idle too long in the group",
    "xclaim": "an alert reader taking over a dead consumer's entries",
    "xpending": "delivery counts of reclaimed entries; the trimmer finding each group's oldest "
    "unacked entry",
    "xadd": "publishing: the outbox relay, dead letters, the clock, the registry, replays",
    "xinfo|groups": "/metrics (pending, lag); `idt replay` waiting for the groups to drain; "
    "the trimmer reading where each group is",
    "xtrim": "the trimmer (python -m idt_cli.trim): entries every group has acked, older than "
    "the retention",
    "xinfo|stream": "`idt replay` reading the derived streams' last ids; alert readers",
    "xinfo|consumers": "alert readers inspecting their group",
    "xlen": "/metrics idt_dead_letters; alert readers",
    "xread": "alert readers without a group",
    "xrange": "alert readers",
    "xrevrange": "alert readers",
    "exists": "`idt replay` looking for the derived streams",
    "info": "the outbox relay noticing a Redis restart (INFO server: run_id) to publish "
    "again what a crash may have lost",
    "get": "the outbox relay: the Redis run id it last published to (idt:outbox-run:<service>)",
    "set": "(with get)",
    "scan": "`idt replay` finding the alert streams (SCAN MATCH idt:window-alerts:*)",
}

#: Sent by every client on connect.
CONNECT = ("ping", "select", "client|setinfo")
#: What EventConsumer runs on a consumed stream.
CONSUME = ("xgroup|create", "xreadgroup", "xack", "xautoclaim", "xpending", "xinfo|groups")
#: What a reader of one office's alert stream may run.
ALERT_READER = (
    "xread", "xrange", "xrevrange", "xlen", "xreadgroup", "xack", "xgroup|create",
    "xgroup|createconsumer", "xautoclaim", "xclaim", "xpending", "xinfo|stream",
    "xinfo|groups", "xinfo|consumers",
)  # fmt: skip
#: Commands added in Redis 7.2 (left out when rendering for 7.0 and 7.1, which
#: would refuse to load them; 6.2 accepts any first argument).
SINCE_7_2 = frozenset({"+client|setinfo"})
#: Redis 6.2 checks the ACL before it looks at a subcommand, so a connect-time call
#: that 7.x answers with "unknown subcommand" is denied, and logged, there: redis-py's
#: RESP3 handshake sends CLIENT MAINT_NOTIFICATIONS (and ignores the error).
ONLY_6_2 = {"+client|setinfo": ("+client|maint_notifications",)}

_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEY_PATTERN = re.compile(r"[A-Za-z0-9:_*-]+")
_PASSWORD_TOKENS = re.compile(r"^(?:[><#!].*|nopass)$")


class AclError(Exception):
    """Bad input (a rules file, a password file, a version); the message says why."""


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Selector:
    """Commands allowed on these keys only (a Redis 7 selector)."""

    commands: tuple[str, ...]
    keys: tuple[str, ...]

    def token(self) -> str:
        return "(" + " ".join([*(f"+{c}" for c in self.commands), *_keys(self.keys)]) + ")"


@dataclass(frozen=True)
class User:
    name: str
    about: str
    #: Keyless commands, or (for users without selectors) commands on `keys`.
    commands: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    selectors: tuple[Selector, ...] = ()
    enabled: bool = True
    everything: bool = False

    def tokens(self) -> list[str]:
        if not self.enabled:
            return ["reset", "off"]
        if self.everything:
            return ["reset", "on", "~*", "&*", "+@all"]
        return [
            "reset",
            "on",
            "resetchannels",
            "-@all",
            *(f"+{c}" for c in self.commands),
            *_keys(self.keys),
            *(s.token() for s in self.selectors),
        ]

    def line(self) -> str:
        return f"user {self.name} {' '.join(self.tokens())}"


def _keys(patterns: Iterable[str]) -> list[str]:
    out = []
    for p in patterns:
        if not _KEY_PATTERN.fullmatch(p):
            raise AclError(f"stream key {p!r} has characters unsafe in an ACL key pattern")
        out.append(f"~{p}")
    return out


def _glob(stream: str) -> str:
    """A stream name from PUBLISHES as a key pattern: `{office_id}` matches any office."""
    return re.sub(r"\{[^{}]*\}", "*", stream)


# --------------------------------------------------------------------------- from the code


def service_io() -> dict[str, dict[str, list[str]]]:
    """{service: {"receives": [stream...], "sends": [stream or pattern...]}} read from
    each service's handlers (the same sources as `idt_contract.export`)."""
    import importlib

    io: dict[str, dict[str, list[str]]] = {}
    for name in SERVICES:
        try:
            mod = importlib.import_module(f"services.{name}.handlers")
        except ModuleNotFoundError as exc:
            raise AclError(f"cannot import services.{name}.handlers: {exc}") from None
        consumed = consumed_streams(mod)
        if consumed is None:
            raise AclError(
                f"services.{name}.handlers has neither APPLIERS nor a class with appliers(): "
                "cannot tell which streams it consumes"
            )
        receives = sorted(consumed)
        sends = sorted(getattr(mod, "PUBLISHES", ()))
        io[name] = {"receives": receives, "sends": sends}
    return io


def alerted_offices(offices_csv: Path = OFFICES) -> list[tuple[str, str]]:
    """(office id, kind) of every office in the registry file that alerts go to."""
    from idt_cli.offices import RegistryFileError, read_registry

    try:
        parsed = read_registry(offices_csv, time=datetime(2000, 1, 1, tzinfo=UTC))
    except RegistryFileError as exc:
        raise AclError(str(exc)) from None
    if not parsed.ok:
        problems = "; ".join(str(e) for e in parsed.errors[:10])
        raise AclError(f"{offices_csv}: {len(parsed.errors)} problem(s): {problems}")
    return [
        (ev.data.office_id, ev.data.kind.value)
        for ev in parsed.events
        if ev.data.kind.value in OFFICE_USER_PREFIX
    ]


def office_user(office_id: str, kind: str = "JOBCENTRE") -> str:
    """The Redis user that reads an office's alerts, e.g. `jc-JC0101`."""
    return f"{OFFICE_USER_PREFIX[kind]}-{office_id}"


def _input_streams() -> tuple[list[str], list[str]]:
    """(streams outside systems publish, streams and patterns the services derive)."""
    from idt_cli.replay import DERIVED, DERIVED_PATTERNS

    derived = [*DERIVED, *DERIVED_PATTERNS]
    inputs = [
        stream_for(t) for t in EVENT_TYPES if t != "window-alert" and stream_for(t) not in DERIVED
    ]
    return inputs, derived


def users(offices_csv: Path = OFFICES) -> list[User]:
    """Every user, in the order the rules file lists them."""
    out = [
        User("default", "off: every connection must name a user", enabled=False),
        User("admin", "operators: everything (ACL LOAD, ACL LOG, repairs)", everything=True),
    ]
    for name, io in service_io().items():
        receives, sends = io["receives"], [_glob(s) for s in io["sends"]]
        selectors: list[Selector] = []
        if receives:
            selectors.append(Selector(CONSUME, tuple(receives)))
        if sends:
            selectors.append(Selector(("xadd",), tuple(sends)))
        if receives:
            selectors.append(Selector(("xadd", "xlen"), (DEAD_LETTERS,)))
        selectors.append(Selector(("get", "set"), (outbox_run_key(name),)))
        about = f"consumes {', '.join(receives) or 'nothing'} (group {name}); "
        about += f"publishes {', '.join(sends) or 'nothing'}"
        if receives:
            about += f"; dead-letters to {DEAD_LETTERS}"
        out.append(User(name, about, (*CONNECT, "multi", "exec", "info"), (), tuple(selectors)))

    clock = stream_for("clock-tick")
    out.append(
        User("clock", f"python -m idt_cli.clock: XADD {clock}", (*CONNECT, "xadd"), (clock,))
    )
    registry = stream_for("office-registered")
    out.append(
        User(
            "registry",
            f"idt offices load: XADD {registry} in one transaction",
            (*CONNECT, "multi", "exec", "xadd"),
            (registry,),
        )
    )
    from idt_cli.trim import trimmed_streams

    out.append(
        User(
            "trim",
            "python -m idt_cli.trim: XTRIM the streams the services consume, below what "
            "every group has acked",
            (*CONNECT, "xinfo|groups", "xpending", "xtrim"),
            tuple(trimmed_streams()),
        )
    )
    inputs, derived = _input_streams()
    out.append(
        User(
            "ingest",
            "idt replay and the demo: XADD every input stream; read the groups and the "
            f"derived streams ({', '.join(derived)}) to wait for the drain",
            (*CONNECT, "multi", "exec", "scan"),
            (),
            (
                Selector(("xadd",), tuple(inputs)),
                Selector(("xinfo|groups", "xinfo|stream", "exists"), (*inputs, *derived)),
            ),
        )
    )
    for office_id, kind in alerted_offices(offices_csv):
        stream = alerts_stream(office_id)
        out.append(
            User(
                office_user(office_id, kind),
                f"{kind} {office_id}: reads {stream} only",
                (*CONNECT, *ALERT_READER),
                (stream,),
            )
        )
    return out


def _comment(text: str, indent: str = "") -> str:
    """`text` as `#` comment lines of at most 100 characters."""
    lines = textwrap.wrap(text, 98, subsequent_indent=indent, break_on_hyphens=False)
    return "".join(f"# {line}\n" for line in lines)


def header() -> str:
    legend = "".join(_comment(f"  {cmd:<22}{why}", " " * 24) for cmd, why in WHY.items())
    return f"""\
# Redis ACL users of IDT. GENERATED by `python -m idt_contract.acl` from the
# event contract (services/<name>/handlers.py: the streams each service consumes
# and publishes) and the office registry (deploy/registry/offices.csv, a reader
# per office that alerts go to). Do not edit: change the code or the registry and
# regenerate; `python -m idt_contract.acl --check` fails when this file is stale.
#
# No passwords here. `python -m idt_contract.acl render` turns this file into a
# Redis aclfile with each user's password hash (see deploy/redis/README.md).
#
# Rules are Redis 7.2 syntax: `reset` clears the user, then commands (+cmd) and
# key patterns (~key). A selector `(...)` grants its commands on its keys only:
# a service may XADD only to the streams it publishes. `render --redis-version`
# adapts the rules: 7.0/7.1 lose +client|setinfo; 6.2 has no selectors, so they
# are merged into the user's own permissions (there a user's commands reach all
# of its keys: a service may also XADD to the streams it consumes, `ingest` to
# the derived streams it reads). Use Redis 7 in production.
#
# Commands granted, and why:
{legend}"""


def rules_text(offices_csv: Path = OFFICES) -> str:
    parts = [header()]
    for u in users(offices_csv):
        parts.append(f"\n{_comment(f'{u.name}: {u.about}', '  ')}{u.line()}\n")
    return "".join(parts)


def drift(path: Path = RULES, offices_csv: Path = OFFICES) -> list[str]:
    if not path.exists():
        return [f"missing: {path}"]
    if path.read_text(encoding="utf-8") != rules_text(offices_csv):
        return [f"out of date: {path}"]
    return []


# --------------------------------------------------------------------------- the rules file


@dataclass(frozen=True)
class Rule:
    """One `user` line of a rules file: the name and its tokens (a selector is one)."""

    name: str
    tokens: tuple[str, ...]
    line: int = 0

    @property
    def enabled(self) -> bool:
        state = [t for t in self.tokens if t in ("on", "off", "reset")]
        return bool(state) and state[-1] == "on"


def tokenize(text: str) -> list[str]:
    """Split rules on spaces, keeping each `( ... )` selector as one token."""
    out: list[str] = []
    current: list[str] | None = None
    for word in text.split():
        if current is None:
            if word.startswith("("):
                current = [word]
                if word.endswith(")"):
                    out.append(word)
                    current = None
            elif ")" in word:
                raise AclError(f"')' without '(' in {word!r}")
            else:
                out.append(word)
        else:
            if word.startswith("("):
                raise AclError("a selector '(' inside another selector")
            current.append(word)
            if word.endswith(")"):
                out.append(" ".join(current))
                current = None
    if current is not None:
        raise AclError(f"selector {' '.join(current)!r} has no closing ')'")
    return out


def parse_rules(text: str, source: str = "rules") -> list[Rule]:
    rules: list[Rule] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        words = line.split(maxsplit=2)
        if len(words) < 3 or words[0] != "user":
            raise AclError(f"{where}: expected `user <name> <rules...>`, got {line[:60]!r}")
        name = words[1]
        if not _USER_NAME.fullmatch(name):
            raise AclError(f"{where}: user name {name!r} is not letters, digits, '_', '.', '-'")
        if name in seen:
            raise AclError(f"{where}: user {name!r} appears twice")
        seen.add(name)
        try:
            tokens = tokenize(words[2])
        except AclError as exc:
            raise AclError(f"{where}: {exc}") from None
        for tok in tokens:
            inner = tok[1:-1].split() if tok.startswith("(") else [tok]
            if any(_PASSWORD_TOKENS.match(t) for t in inner):
                raise AclError(
                    f"{where}: user {name!r} has a password rule ({tok.split()[0][:1]}...): "
                    "passwords never go in the rules file; put them in the passwords directory"
                )
        rules.append(Rule(name, tuple(tokens), number))
    if not rules:
        raise AclError(f"{source}: no `user` lines")
    return rules


def read_rules(path: Path) -> list[Rule]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AclError(f"cannot read the rules file {path}: {exc}") from None
    return parse_rules(text, str(path))


# --------------------------------------------------------------------------- versions


@dataclass(frozen=True, order=True)
class RedisVersion:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> RedisVersion:
        m = re.fullmatch(r"\s*v?=?(\d+)\.(\d+)(?:\.\d+)?\s*", text)
        if not m:
            raise AclError(
                f"Redis version {text!r}: give the server's MAJOR.MINOR, e.g. 7.2 or 6.2 "
                "(`redis-server --version`)"
            )
        v = cls(int(m.group(1)), int(m.group(2)))
        if v < cls(6, 2):
            raise AclError(f"Redis {v} is too old: the services need 6.2 or later (XAUTOCLAIM)")
        return v

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def adapt(tokens: Sequence[str], version: RedisVersion) -> list[str]:
    """The tokens as `version` accepts them (see the module's docstring)."""
    out: list[str] = []
    merged: list[str] = []
    for tok in tokens:
        if version < RedisVersion(7, 0) and tok.startswith("("):
            for inner in tok[1:-1].split():
                if not inner.startswith(("+", "~")):
                    raise AclError(
                        f"selector rule {inner!r} cannot be merged for Redis {version}: "
                        "only +command and ~key can be"
                    )
                merged.append(inner)
            continue
        out.append(tok)
    for inner in merged:
        if inner not in out:
            out.append(inner)
    if version < RedisVersion(7, 0):
        out = [x for t in out for x in (t, *ONLY_6_2.get(t, ()))]
    elif version < RedisVersion(7, 2):
        out = [t for t in out if t not in SINCE_7_2]
    return out


# --------------------------------------------------------------------------- passwords


def read_password(path: Path) -> str:
    """The password in a file, as `IDT_REDIS_PASSWORD_FILE` reads it."""
    try:
        password = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise AclError(f"no password file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AclError(f"cannot read the password file {path}: {exc}") from None
    if not password:
        raise AclError(f"the password file {path} is empty")
    return password


def password_hashes(rules: Sequence[Rule], passwords_dir: Path) -> dict[str, list[str]]:
    """{user: [`#<sha256>`...]} for every enabled user: `DIR/<user>`, and
    `DIR/<user>.previous` while a rotation is under way. Every problem is reported."""
    if not passwords_dir.is_dir():
        raise AclError(f"the passwords directory {passwords_dir} does not exist")
    out: dict[str, list[str]] = {}
    problems: list[str] = []
    for rule in rules:
        if not rule.enabled:
            continue
        hashes = []
        for path in (passwords_dir / rule.name, passwords_dir / f"{rule.name}.previous"):
            if path.name.endswith(".previous") and not path.exists():
                continue
            try:
                hashes.append("#" + hashlib.sha256(read_password(path).encode()).hexdigest())
            except AclError as exc:
                problems.append(f"{rule.name}: {exc}")
        out[rule.name] = hashes
    if problems:
        raise AclError(
            f"{len(problems)} user(s) without a usable password:\n  "
            + "\n  ".join(problems)
            + f"\n(create missing ones with `python -m idt_contract.acl secrets --dir "
            f"{passwords_dir}`)"
        )
    return out


def with_passwords(rule: Rule, hashes: Sequence[str], version: RedisVersion) -> list[str]:
    tokens = adapt(rule.tokens, version)
    if not rule.enabled:
        return tokens
    at = tokens.index("on") + 1
    return [*tokens[:at], *hashes, *tokens[at:]]


def render(rules: Sequence[Rule], passwords_dir: Path, version: RedisVersion) -> str:
    """The Redis aclfile: every user with its password hashes (no comments: Redis
    refuses them in an aclfile)."""
    hashes = password_hashes(rules, passwords_dir)
    return "".join(
        f"user {r.name} {' '.join(with_passwords(r, hashes.get(r.name, []), version))}\n"
        for r in rules
    )


def make_secrets(rules: Sequence[Rule], directory: Path) -> list[str]:
    """A random password file (mode 0600) for every enabled user without one; the
    users given one. Existing files are never touched."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = []
    for rule in rules:
        if not rule.enabled:
            continue
        path = directory / rule.name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise AclError(f"cannot create {path}: {exc}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_secrets.token_urlsafe(32) + "\n")
        created.append(rule.name)
    return created


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `text` to `path` with `mode`, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- a live server


def apply(client: Any, rules: Sequence[Rule], passwords_dir: Path) -> RedisVersion:
    """ACL SETUSER every user on the server `client` (a redis-py client allowed to
    run ACL) is connected to, in the form its version accepts; `default` last, so
    that a fresh server's default connection can run them all."""
    info = client.info("server")
    version = RedisVersion.parse(str(info["redis_version"]))
    hashes = password_hashes(rules, passwords_dir)
    ordered = [r for r in rules if r.name != "default"] + [r for r in rules if r.name == "default"]
    for rule in ordered:
        tokens = with_passwords(rule, hashes.get(rule.name, []), version)
        client.execute_command("ACL", "SETUSER", rule.name, *tokens)
    return version


# --------------------------------------------------------------------------- the CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m idt_contract.acl",
        description="Redis ACL users generated from the IDT contract.",
        epilog="Without a command: write the rules file (or --check it).",
    )
    p.add_argument("--check", action="store_true", help="exit 1 if the rules file is stale")
    p.add_argument("--offices", type=Path, default=OFFICES, help="the office registry CSV")
    p.add_argument("--out", type=Path, default=RULES, help="the rules file to write or check")
    sub = p.add_subparsers(dest="command")

    s = sub.add_parser("secrets", help="create missing password files (mode 0600)")
    s.add_argument("--dir", type=Path, required=True, help="the passwords directory")
    s.add_argument("--rules", type=Path, default=RULES)

    r = sub.add_parser("render", help="write the Redis aclfile with password hashes")
    r.add_argument("--rules", type=Path, default=RULES)
    r.add_argument("--passwords-dir", type=Path, required=True)
    r.add_argument("--redis-version", required=True, help="MAJOR.MINOR of the server")
    r.add_argument("--out", type=Path, required=True, dest="aclfile")
    r.add_argument("--mode", default="600", help="octal file mode of the aclfile (default 600)")

    a = sub.add_parser("apply", help="ACL SETUSER every user on a running server")
    a.add_argument("--redis-url", required=True, help="a user allowed ACL SETUSER (admin)")
    a.add_argument("--rules", type=Path, default=RULES)
    a.add_argument("--passwords-dir", type=Path, required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except AclError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "secrets":
        created = make_secrets(read_rules(args.rules), args.dir)
        print(f"created {len(created)} password file(s) in {args.dir}: {', '.join(created)}")
        return 0
    if args.command == "render":
        version = RedisVersion.parse(args.redis_version)
        try:
            mode = int(args.mode, 8)
        except ValueError:
            raise AclError(f"--mode {args.mode!r} is not an octal file mode") from None
        rules = read_rules(args.rules)
        write_private(args.aclfile, render(rules, args.passwords_dir, version), mode)
        print(f"wrote {len(rules)} users for Redis {version} to {args.aclfile}")
        return 0
    if args.command == "apply":
        return _apply(args)
    if args.check:
        problems = drift(args.out, args.offices)
        for p in problems:
            print(p)
        if problems:
            print("run `python -m idt_contract.acl` and commit the result")
        return 1 if problems else 0
    text = rules_text(args.offices)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {len(users(args.offices))} users to {args.out}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    import redis

    from idt_cli.offices import redact_url

    rules = read_rules(args.rules)
    password_hashes(rules, args.passwords_dir)  # every problem before touching the server
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    where = f"Redis at {redact_url(args.redis_url)}"
    client = redis.Redis.from_url(
        args.redis_url, socket_connect_timeout=5, socket_timeout=10, retry=Retry(NoBackoff(), 0)
    )
    try:
        version = apply(client, rules, args.passwords_dir)
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        raise AclError(
            f"{where} refused: {exc} (a server that has these users already takes "
            "`--redis-url redis://admin:<password>@host:port/0`)"
        ) from None
    except redis.RedisError as exc:
        raise AclError(f"{where}: {exc}") from None
    finally:
        client.close()
    print(f"applied {len(rules)} users to Redis {version} at {redact_url(args.redis_url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
