"""Secrets and host directories for ``Sandbox.create``.

A secret is referenced by name (``mvm.secret("openai")``); its value stays in
mvm's store on the host (``mvmctl secret set``) and never passes through the
SDK, argv, recordings or results."""

import re
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence

from ._errors import InvalidArgument

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass(frozen=True)
class Secret:
    """A reference to a secret stored with ``mvmctl secret set NAME``."""

    name: str

    def __repr__(self) -> str:
        return f"mvm.secret({self.name!r})"


def secret(name: str) -> Secret:
    """Reference the stored secret ``name``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(f"secret name {name!r}: 1-64 of [A-Za-z0-9_.-], starting with a letter or digit")
    return Secret(name)


def secret_flags(secrets: Optional[Mapping[str, Secret]]) -> List[str]:
    """``{"OPENAI_API_KEY": mvm.secret("openai")}`` -> ``--secret openai:OPENAI_API_KEY``.
    A key starting with ``/run/secrets/`` is a file target."""
    if secrets is None:
        return []
    if not isinstance(secrets, Mapping):
        raise InvalidArgument("secrets: expected a mapping of ENV_VAR (or /run/secrets/FILE) to mvm.secret(NAME)")
    out: List[str] = []
    for target, ref in secrets.items():
        if not isinstance(ref, Secret):
            raise InvalidArgument(
                f"secrets[{target!r}]: expected mvm.secret(NAME), not a value; "
                "store values with `mvmctl secret set NAME`"
            )
        if not isinstance(target, str) or not (_ENV.match(target) or re.match(r"^/run/secrets/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", target)):
            raise InvalidArgument(f"secrets: {target!r} is not an environment variable name nor /run/secrets/FILE")
        out += ["--secret", f"{ref.name}:{target}"]
    return out


def mount_flags(mounts: Optional[Sequence[str]]) -> List[str]:
    """``["./src:/work", "cache:/cache:ro"]`` -> ``-v`` flags (checked by mvmctl)."""
    if mounts is None:
        return []
    if isinstance(mounts, str) or not isinstance(mounts, Sequence):
        raise InvalidArgument("mounts: expected a list of 'HOST_DIR:GUEST_PATH[:ro|:rw]' or 'VOLUME:GUEST_PATH[:ro|:rw]'")
    out: List[str] = []
    for m in mounts:
        if not isinstance(m, str) or m.count(":") not in (1, 2):
            raise InvalidArgument(f"mounts: {m!r}: expected 'HOST_DIR:GUEST_PATH[:ro|:rw]' or 'VOLUME:GUEST_PATH[:ro|:rw]'")
        out += ["-v", m]
    return out
