"""Declaration helpers: ``@mvm.app(...)`` and the helpers it takes.

``mvmctl compile`` reads these calls statically (the module is never
imported); at run time they are inert: ``@mvm.app(...)`` returns the
decorated function unchanged, so calling it locally still works, and the
helpers return plain dicts describing what they declare. See
docs/declarations.md.

``mvm.workload("worker").invoke(...)`` calls a booted workload's function
through ``mvmctl invoke``.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar, Union

from ._cli import CLI, EXIT_MVM, call_timeout
from ._errors import InvalidArgument, MvmError
from ._secrets import Secret

F = TypeVar("F", bound=Callable[..., Any])

Decl = Dict[str, Any]
EnvValue = Union[str, Secret]


def app(
    *,
    name: Optional[str] = None,
    source: Optional[Decl] = None,
    image: Optional[Decl] = None,
    resources: Optional[Decl] = None,
    network: Optional[Decl] = None,
    env: Optional[Mapping[str, EnvValue]] = None,
    entrypoint: Optional[Decl] = None,
    entrypoints: Optional[Sequence[Decl]] = None,
    hooks: Optional[Decl] = None,
    before_start: Optional[Sequence[Sequence[str]]] = None,
    after_start: Optional[Sequence[Sequence[str]]] = None,
    before_stop: Optional[Sequence[Sequence[str]]] = None,
) -> Callable[[F], F]:
    """Declare the decorated function as a workload. Returns it unchanged."""

    def decorate(fn: F) -> F:
        return fn

    return decorate


def local_path(path: str, include: Sequence[str] = ("**",), exclude: Sequence[str] = ()) -> Decl:
    return {"kind": "local_path", "path": path, "include": list(include), "exclude": list(exclude)}


def nix_packages(packages: Sequence[str]) -> Decl:
    return {"kind": "nix_packages", "packages": list(packages)}


def debian_packages(packages: Sequence[str], release: int = 12) -> Decl:
    return {"kind": "debian_packages", "packages": list(packages), "release": release}


def python_image(version: str = "3.13", packages: Sequence[str] = ()) -> Decl:
    return {"kind": "python_image", "version": version, "packages": list(packages)}


def node_image(version: str = "20") -> Decl:
    return {"kind": "node_image", "version": version}


def template(name: str) -> Decl:
    return {"kind": "template", "name": name}


def oci_image(ref: str) -> Decl:
    """An OCI image (``python:3.12-slim``, ``ghcr.io/org/app@sha256:...``),
    pulled at build; pin it by digest so that the reviewed hash covers its
    content."""
    return {"kind": "oci_image", "ref": ref}


def resources(cpu_cores: int = 1, memory_mb: int = 512, disk_mb: int = 4096) -> Decl:
    return {"cpu_cores": cpu_cores, "memory_mb": memory_mb, "disk_mb": disk_mb}


def network(
    mode: str = "deny",
    allow: Sequence[str] = (),
    ports: Sequence[Union[int, Mapping[str, int]]] = (),
) -> Decl:
    return {"mode": mode, "allow": list(allow), "ports": list(ports)}


def entrypoint(
    command: Sequence[str], working_dir: str = "/app", env: Optional[Mapping[str, str]] = None
) -> Decl:
    return {"kind": "command", "command": list(command), "working_dir": working_dir, "env": dict(env or {})}


def entrypoint_function(
    module: Optional[str] = None,
    function: Optional[str] = None,
    working_dir: str = "/app",
    env: Optional[Mapping[str, str]] = None,
    warm: bool = False,
) -> Decl:
    return {
        "kind": "function",
        "module": module,
        "function": function,
        "working_dir": working_dir,
        "env": dict(env or {}),
        "warm": warm,
    }


def hooks(
    before_start: Sequence[Sequence[str]] = (),
    after_start: Sequence[Sequence[str]] = (),
    before_stop: Sequence[Sequence[str]] = (),
) -> Decl:
    return {
        "before_start": [list(h) for h in before_start],
        "after_start": [list(h) for h in after_start],
        "before_stop": [list(h) for h in before_stop],
    }


class RemoteError(MvmError):
    """The workload's function raised: its exception type, message and the
    guest traceback."""

    def __init__(self, type: str, message: str, traceback: str, **kw: Any) -> None:
        super().__init__(f"{type}: {message}", **kw)
        self.type = type
        self.remote_message = message
        self.traceback = traceback


#: Exit code of ``mvmctl invoke`` when the function raised.
EXIT_RAISED = 1


class Workload:
    """A booted declared workload (its sandbox name)."""

    def __init__(self, name: str, *, cli: Optional[CLI] = None) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidArgument("workload name: expected a non-empty string")
        self.name = name
        self._cli = cli or CLI()

    def invoke(self, *args: Any, timeout: Optional[float] = None, **kwargs: Any) -> Any:
        """Call the function with JSON-serialisable arguments and return its
        JSON result. Raises :class:`RemoteError` when it raised, and the
        SDK's typed errors for everything else (timeout, transport, ...)."""
        if args and kwargs:
            raise InvalidArgument("invoke: pass positional or keyword arguments, not both")
        payload: Any = list(args) if args else kwargs
        try:
            data = json.dumps(payload, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"invoke: arguments are not JSON: {exc}") from None
        argv = ["invoke", self.name, "--json", "--input", "-"]
        limit = call_timeout() if timeout is None else timeout
        if timeout is not None:
            argv += ["--timeout", f"{timeout}s"]
            limit = timeout + 30
        done = self._cli.call(argv, input=data, timeout=limit, ok=(0, EXIT_RAISED), what="invoke")
        reply = done.json()
        if not isinstance(reply, dict):
            raise MvmError("invoke: the reply is not a JSON object", exit_code=EXIT_MVM)
        if reply.get("ok"):
            return reply.get("result")
        err = reply.get("error") or {}
        raise RemoteError(
            str(err.get("type", "Error")),
            str(err.get("message", "")),
            str(err.get("traceback", "")),
            exit_code=done.code,
            argv=done.argv,
        )

    __call__ = invoke


def workload(name: str) -> Workload:
    """The booted workload ``name`` (see :meth:`Workload.invoke`)."""
    return Workload(name)
