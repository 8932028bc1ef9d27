"""Host-side validation: nothing malformed leaves the host."""

from __future__ import annotations

import datetime
import posixpath
import re
from typing import Dict, List, Mapping, Optional, Sequence, Union

from ._errors import InvalidArgument as InvalidArgument

MAX_PATH = 4096
DEFAULT_TTL_SECONDS = 1800

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TTL = re.compile(r"^\s*(\d+)\s*(s|m|h)?\s*$")
_WORKLOAD_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_HOST = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9.*-]{0,252}(:[0-9]{1,5})?$")

Command = Union[str, Sequence[str]]
TTL = Union[int, float, str, datetime.timedelta, None]


def guest_path(path: object, *, what: str = "path") -> str:
    """An absolute, clean guest path: no NUL, no ``..``, no ``.``, no
    doubled or trailing slash (``/`` itself is allowed)."""
    if not isinstance(path, str):
        raise InvalidArgument(f"{what}: guest paths are str, not {type(path).__name__}")
    if not path:
        raise InvalidArgument(f"{what}: empty guest path")
    if "\x00" in path:
        raise InvalidArgument(f"{what} {path!r}: contains NUL")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise InvalidArgument(f"{what}: longer than {MAX_PATH} bytes")
    if not path.startswith("/"):
        raise InvalidArgument(f"{what} {path!r}: guest paths must be absolute")
    if "//" in path:
        raise InvalidArgument(f"{what} {path!r}: doubled slash in guest path")
    if ".." in path.split("/"):
        raise InvalidArgument(f"{what} {path!r}: '..' is not allowed in guest paths")
    if path != "/" and posixpath.normpath(path) != path:
        raise InvalidArgument(
            f"{what} {path!r}: not a clean path (use {posixpath.normpath(path)!r})"
        )
    return path


def argv_of(cmd: Command) -> List[str]:
    """A shell string becomes ``sh -c STRING``; a sequence is an argv."""
    if isinstance(cmd, str):
        if not cmd.strip():
            raise InvalidArgument("empty command")
        if "\x00" in cmd:
            raise InvalidArgument("command contains NUL")
        return ["sh", "-c", cmd]
    if isinstance(cmd, (bytes, bytearray)):
        raise InvalidArgument("command must be str or a sequence of str, not bytes")
    argv = list(cmd)
    if not argv:
        raise InvalidArgument("empty argv")
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise InvalidArgument(f"argv[{i}] is {type(arg).__name__}, not str")
        if "\x00" in arg:
            raise InvalidArgument(f"argv[{i}] contains NUL")
    if not argv[0]:
        raise InvalidArgument("argv[0] is empty")
    return argv


def env_of(env: Optional[Mapping[str, str]]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    if env is None:
        return out
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise InvalidArgument(f"env name {key!r}: use [A-Za-z_][A-Za-z0-9_]*")
        if not isinstance(value, str):
            raise InvalidArgument(f"env {key}: value is {type(value).__name__}, not str")
        if "\x00" in value:
            raise InvalidArgument(f"env {key}: value contains NUL")
        out[key] = value
    return out


def env_flags(env: Mapping[str, str]) -> List[str]:
    flags: List[str] = []
    for key in sorted(env):
        flags += ["-e", f"{key}={env[key]}"]
    return flags


def ttl_seconds(ttl: TTL) -> int:
    """``None`` → the default (1800 s); ``0`` → no limit; ints/floats are
    seconds; strings ``"30s"``, ``"5m"``, ``"1h"``, ``"3600"``; timedelta."""
    if ttl is None:
        return DEFAULT_TTL_SECONDS
    if isinstance(ttl, bool):
        raise InvalidArgument("ttl: expected seconds, a duration string or a timedelta")
    if isinstance(ttl, datetime.timedelta):
        secs = ttl.total_seconds()
    elif isinstance(ttl, (int, float)):
        secs = float(ttl)
    elif isinstance(ttl, str):
        m = _TTL.match(ttl)
        if not m:
            raise InvalidArgument(f"ttl {ttl!r}: expected e.g. '30s', '5m', '1h' or '3600'")
        secs = float(int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)])
    else:
        raise InvalidArgument(f"ttl: unsupported type {type(ttl).__name__}")
    if secs < 0 or secs != secs:
        raise InvalidArgument("ttl must not be negative")
    return int(secs)


def workload_id(value: Optional[str], template: str) -> str:
    if value is not None:
        if not isinstance(value, str) or not _WORKLOAD_ID.match(value):
            raise InvalidArgument(
                f"workload_id {value!r}: use ^[a-z][a-z0-9-]{{0,62}}$"
            )
        return value
    base = posixpath.basename(template.rstrip("/")) or "sandbox"
    slug = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = "w-" + slug
    return slug[:63].rstrip("-") or "sandbox"


def sandbox_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(
            f"sandbox name {name!r}: use 1-40 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return name


_TAG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def snapshot_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise InvalidArgument(
            f"snapshot tag {tag!r}: use 1-63 lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return tag


def positive_int(value: Optional[int], what: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgument(f"{what}: expected a positive integer, got {value!r}")
    return value


def timeout_seconds(value: Optional[float], what: str = "timeout") -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidArgument(f"{what}: expected a positive number of seconds, got {value!r}")
    return float(value)


def duration_flag(seconds: float) -> str:
    """Seconds as a Go duration (milliseconds precision)."""
    ms = max(1, int(round(seconds * 1000)))
    return f"{ms}ms"


def network_hosts(network: Optional[Sequence[str]]) -> List[str]:
    if network is None:
        return []
    if isinstance(network, str):
        network = [network]
    hosts: List[str] = []
    for host in network:
        if not isinstance(host, str) or not _HOST.match(host):
            raise InvalidArgument(f"network: {host!r} is not HOST or HOST:PORT")
        hosts.append(host)
    return hosts


NETWORK_PRESETS = ("none", "unrestricted", "agent", "dev", "registries")
_PUBLISH = re.compile(r"^(?:[0-9.]+:)?[0-9]{1,5}:[0-9]{1,5}$")


def network_of(network: Union[str, Sequence[str], None]) -> "tuple[Optional[str], List[str]]":
    """(preset, allowed hosts): a preset name, or HOST[:PORT] entries."""
    if isinstance(network, str) and network in NETWORK_PRESETS:
        return network, []
    return None, network_hosts(network)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def publish_specs(ports: Optional[Sequence[Union[int, str]]]) -> List[str]:
    out: List[str] = []
    for p in ports or ():
        if isinstance(p, int) and not isinstance(p, bool):
            out.append(f"{free_port()}:{port(p, 'ports')}")
        elif isinstance(p, str) and _PUBLISH.match(p):
            out.append(p)
        else:
            raise InvalidArgument(f"ports: {p!r} is not a guest port or '[ADDR:]HOSTPORT:GUESTPORT'")
    return out


def port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidArgument(f"{what}: expected a port 1-65535, got {value!r}")
    return value
