"""``mvm.Sandbox``: the lifecycle of one microVM sandbox."""

from __future__ import annotations

import os
import secrets as _random
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Type, Union, overload

from . import _cleanup
from . import _cli
from . import _validate as v
from ._commands import CommandHandle, Commands
from . import _secrets
from ._errors import (
    InvalidArgument,
    MvmError,
    SandboxNotFound,
    SnapshotNotFound,
    TransportError,
    Unsupported,
)
from ._files import Files
from ._record import Recording, literal_env, sdk_mode


@dataclass
class SandboxInfo:
    """A sandbox as ``mvmctl up/ls --json`` describes it."""

    name: str
    id: str
    state: str
    image: str = ""
    image_digest: str = ""
    image_profile: str = ""
    run_profile: str = ""
    backend: str = ""
    cpus: int = 0
    memory_mib: int = 0
    created: Optional[str] = None
    expires: Optional[str] = None
    transient: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, obj: Any) -> "SandboxInfo":
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise TransportError("expected a sandbox object with a name")
        return cls(
            name=obj["name"],
            id=str(obj.get("id", "")),
            state=str(obj.get("state", "")),
            image=str(obj.get("image", "")),
            image_digest=str(obj.get("image_digest", "")),
            image_profile=str(obj.get("image_profile", obj.get("profile", ""))),
            run_profile=str(obj.get("run_profile", "")),
            backend=str(obj.get("backend", "")),
            cpus=int(obj.get("cpus") or 0),
            memory_mib=int(obj.get("memory_mib") or 0),
            created=obj.get("created"),
            expires=obj.get("expires"),
            transient=bool(obj.get("transient")),
            raw=dict(obj),
        )


@dataclass
class SnapshotInfo:
    """A snapshot as ``mvmctl snapshot save/ls --json`` describes it."""

    tag: str
    created: Optional[str] = None
    source: str = ""
    image: str = ""
    image_digest: str = ""
    cpus: int = 0
    memory_mib: int = 0
    bytes: int = 0
    holds_secrets: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, obj: Any) -> "SnapshotInfo":
        if not isinstance(obj, dict) or not isinstance(obj.get("tag"), str):
            raise TransportError("expected a snapshot object with a tag")
        return cls(
            tag=obj["tag"],
            created=obj.get("created"),
            source=str(obj.get("source", "")),
            image=str(obj.get("image", "")),
            image_digest=str(obj.get("image_digest", "")),
            cpus=int(obj.get("cpus") or 0),
            memory_mib=int(obj.get("memory_mib") or 0),
            bytes=int(obj.get("bytes") or 0),
            holds_secrets=bool(obj.get("holds_secrets")),
            raw=dict(obj),
        )


class _Resume:
    """``Sandbox.resume(name)`` on the class (resume a paused sandbox by
    name and return it, connected), ``sandbox.resume()`` on an instance
    (resume that one)."""

    @overload
    def __get__(self, obj: None, owner: Type["Sandbox"]) -> Callable[[str], "Sandbox"]: ...

    @overload
    def __get__(self, obj: "Sandbox", owner: Type["Sandbox"]) -> Callable[[], "Sandbox"]: ...

    def __get__(
        self, obj: Optional["Sandbox"], owner: Type["Sandbox"]
    ) -> Union[Callable[[str], "Sandbox"], Callable[[], "Sandbox"]]:
        if obj is None:
            return owner._resume_named
        return obj._resume_self


#: What ``from_snapshot`` cannot be combined with: a clone runs the
#: snapshot's image, resources, environment, network and attachments.
_NOT_WITH_SNAPSHOT = ("cpus", "memory_mb", "env", "network", "ports", "mounts", "secrets")


@dataclass
class PortForward:
    """A published port: ``host:host_port`` on the host reaches
    ``guest_port`` in the sandbox."""

    host: str
    host_port: int
    guest_port: int
    proto: str = "tcp"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.host_port}"


def _port_forwards(obj: Any) -> List[PortForward]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise TransportError("port --json: expected an array")
    out = []
    for p in obj:
        if isinstance(p, dict):
            out.append(
                PortForward(
                    host=str(p.get("host_addr") or p.get("host") or "127.0.0.1"),
                    host_port=int(p.get("host_port") or 0),
                    guest_port=int(p.get("guest_port") or 0),
                    proto=str(p.get("proto") or "tcp"),
                )
            )
    return out


class Ports:
    """Inbound port bindings (``mvmctl forward`` / ``mvmctl port``), bound
    to 127.0.0.1. The sandbox needs a network device: create it with
    ``ports=`` or ``network=``."""

    def __init__(self, sandbox: "Sandbox") -> None:
        self._sb = sandbox

    def forward(self, guest_port: int, host_port: Optional[int] = None) -> PortForward:
        """Publish ``guest_port`` on ``127.0.0.1:host_port`` (``None``: a
        free host port is picked). Raises :class:`Unsupported` when the
        installed mvmctl lacks ``forward``."""
        g = v.port(guest_port, "guest_port")
        hp = None if host_port is None else v.port(host_port, "host_port")
        if self._sb._recording is not None:
            self._sb._recording.add({"kind": "ports_forward", "guest_port": g, "host_port": host_port})
            return PortForward("127.0.0.1", hp if hp is not None else 0, g)
        # Without a host port the supervisor picks a free one (no race on
        # the caller's side); --json returns the bindings this call added.
        spec = f"{g}" if hp is None else f"{hp}:{g}"
        try:
            done = self._sb._cli.call(
                ["forward", self._sb._live_name(), "-p", spec, "--json"], what="forward"
            )
        except Unsupported as exc:
            raise Unsupported(
                "ports.forward needs `mvmctl forward NAME -p [HOST:]GUEST`, which "
                f"this mvmctl lacks ({exc.message})",
                exit_code=exc.exit_code, argv=exc.argv, stderr=exc.stderr,
            ) from None
        for pf in _port_forwards(done.json() if done.stdout.strip() else None):
            if pf.guest_port == g and (hp is None or pf.host_port == hp):
                return pf
        raise TransportError(f"forward: no binding for guest port {g} after forwarding")

    def list(self) -> List[PortForward]:
        """The sandbox's published ports (``mvmctl port NAME --json``)."""
        if self._sb._recording is not None:
            raise Unsupported("ports.list() is not available in record mode")
        done = self._sb._cli.call(["port", self._sb._live_name(), "--json"], what="port")
        return _port_forwards(done.json() if done.stdout.strip() else None)


def _is_build_dir(template: str) -> bool:
    return (
        template.startswith(("/", "./", "../", "~"))
        or template in (".", "..")
        or os.path.isdir(template)
    )


class Sandbox:
    """A running microVM sandbox.

    ``Sandbox.create`` boots one (``mvmctl up``); the sandbox is destroyed
    when the ``with`` block ends, on :meth:`destroy`, or when the creating
    process exits (also on an exception, Ctrl-C or SIGTERM) unless
    :meth:`detach` was called. ``Sandbox.connect`` attaches to an existing
    sandbox without taking ownership (only a ``with`` block or
    :meth:`destroy` stops it)."""

    def __init__(
        self,
        info: SandboxInfo,
        *,
        cli: Optional[_cli.CLI] = None,
        owned: bool = False,
        workload_id: Optional[str] = None,
        recording: Optional[Recording] = None,
    ) -> None:
        self._info = info
        self._cli = cli or _cli.CLI()
        self._recording = recording
        self._owned = owned
        self._destroyed = False
        self._detached = False
        self._lock = threading.Lock()
        self._handles: "set[CommandHandle]" = set()
        self.workload_id = workload_id or info.name
        self.commands = Commands(self)
        self.files = Files(self)
        self.ports = Ports(self)
        if owned:
            _cleanup.register(self)

    # -- construction -----------------------------------------------------
    @classmethod
    def create(
        cls,
        template: Optional[str] = None,
        *,
        name: Optional[str] = None,
        workload_id: Optional[str] = None,
        cpus: Optional[int] = None,
        memory_mb: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        ttl: v.TTL = None,
        network: Union[str, Sequence[str], None] = None,
        ports: Optional[Sequence[Union[int, str]]] = None,
        mounts: Optional[Sequence[str]] = None,
        secrets: Optional[Mapping[str, _secrets.Secret]] = None,
        allow_rw_mount: bool = False,
        allow_manifest_mounts: bool = False,
        allow_manifest_secrets: bool = False,
        allow_manifest_network: bool = False,
        refresh: bool = False,
        from_snapshot: Optional[str] = None,
    ) -> "Sandbox":
        """Boot a sandbox from a template (``"python"``, ``"minimal"``, an
        image name or digest) or a build directory holding ``mvm.toml``
        (``"./app"``), and wait until it is ready.

        ``ttl`` bounds its life even if this process is killed hard
        (default 30 minutes; ``0`` = no limit). ``network`` is a list of
        ``HOST`` / ``HOST:PORT`` to allow out, or a preset name (``"agent"``,
        ``"dev"``, ``"registries"``, ``"unrestricted"``); default: no
        network. ``ports`` publishes guest ports on 127.0.0.1: a guest port
        (a free host port is picked) or ``"[ADDR:]HOSTPORT:GUESTPORT"``.
        ``mounts`` are host directories (read-only unless ``:rw`` and
        ``allow_rw_mount``) or volumes: ``["./src:/work", "cache:/cache"]``.
        ``secrets`` maps env variables (or ``/run/secrets/FILE``) to
        ``mvm.secret(NAME)``; values never pass through the SDK.

        A build directory's ``mvm.toml`` may ask for host directories or
        volumes (``[[mount]]``), stored secrets (``[secrets]``) and network
        egress (``network``/``allow``); each is a request the caller grants
        with ``allow_manifest_mounts``, ``allow_manifest_secrets`` or
        ``allow_manifest_network`` (``mvmctl up --allow-manifest-*``,
        recorded in the signed plan). Without the grant the CLI refuses
        before anything is created and :class:`PolicyDenied` carries its
        message, which names what was asked for.

        ``refresh=True`` (``mvmctl up DIR --refresh``) resolves the OCI
        image a build directory's ``image = REF`` names on its registry
        again instead of using the digest it was pinned to, and boots what
        the tag names now (docs/declarations.md); on a build directory on a
        template it does nothing, on anything but a build directory the CLI
        refuses it (:class:`CLIError`, exit code 2).

        ``from_snapshot=TAG`` starts a clone of a snapshot
        (:meth:`snapshot`) instead of booting: its memory, processes and
        files as they were, with its own name, disk copy and a fresh
        identity (RNG seed, clock, hostname, machine-id). It takes no
        ``template`` and none of ``cpus``, ``memory_mb``, ``env``,
        ``network``, ``ports``, ``mounts``, ``secrets`` (the snapshot's
        apply). Raises :class:`SnapshotNotFound` or :class:`SnapshotError`."""
        if from_snapshot is not None:
            given = dict(cpus=cpus, memory_mb=memory_mb, env=env, network=network, ports=ports,
                         mounts=mounts, secrets=secrets)
            clash = [k for k in _NOT_WITH_SNAPSHOT if given[k] is not None]
            if template is not None:
                clash.insert(0, "template")
            for flag, on in (("allow_rw_mount", allow_rw_mount),
                             ("allow_manifest_mounts", allow_manifest_mounts),
                             ("allow_manifest_secrets", allow_manifest_secrets),
                             ("allow_manifest_network", allow_manifest_network),
                             ("refresh", refresh)):
                if on:
                    clash.append(flag)
            if clash:
                raise InvalidArgument(
                    f"from_snapshot cannot be combined with {', '.join(clash)}: a clone runs the "
                    "snapshot's image, resources, environment, network and secrets"
                )
            return cls._create_from_snapshot(
                v.snapshot_tag(from_snapshot), name=name, workload_id=workload_id, ttl=ttl
            )
        if not isinstance(template, str) or not template.strip():
            raise v.InvalidArgument("template: expected a non-empty template name or directory")
        wid = v.workload_id(workload_id, template)
        if name is not None:
            v.sandbox_name(name)
        n_cpus = v.positive_int(cpus, "cpus")
        mem = v.positive_int(memory_mb, "memory_mb")
        envs = v.env_of(env)
        ttl_s = v.ttl_seconds(ttl)
        preset, hosts = v.network_of(network)
        publish = v.publish_specs(ports)
        build_dir = _is_build_dir(template)
        attach = _secrets.mount_flags(mounts) + _secrets.secret_flags(secrets)
        for flag, on in (("--allow-rw-mount", allow_rw_mount),
                         ("--allow-manifest-mounts", allow_manifest_mounts),
                         ("--allow-manifest-secrets", allow_manifest_secrets),
                         ("--allow-manifest-network", allow_manifest_network),
                         ("--refresh", refresh)):
            if on:
                attach.append(flag)

        if sdk_mode() == "record":
            rec = Recording(
                wid,
                {
                    "template": None if build_dir else template,
                    "build_dir": template if build_dir else None,
                    "name": name,
                    "env": literal_env(envs),
                    "resources": {"cpu_cores": n_cpus, "memory_mb": mem},
                    "ttl_seconds": ttl_s,
                    "network": (preset or hosts) if network is not None else None,
                    "ports": publish,
                },
            )
            info = SandboxInfo(name=name or f"recorded-{wid}"[:40], id="", state="recorded",
                               image=template)
            return cls(info, workload_id=wid, recording=rec)

        _cleanup.install()
        cli = _cli.CLI()
        sb_name = name or f"sdk-{wid[:24].rstrip('-')}-{_random.token_hex(4)}"
        args: List[str] = ["up"]
        if build_dir:
            args.append(os.path.abspath(os.path.expanduser(template)))
        else:
            args += ["--image", template]
        args += ["--name", sb_name, "--json", "--ttl", f"{ttl_s}s"]
        if n_cpus is not None:
            args += ["--cpus", str(n_cpus)]
        if mem is not None:
            args += ["--memory", f"{mem}M"]
        args += v.env_flags(envs)
        if preset is not None:
            args += ["--network", preset]
        for host in hosts:
            args += ["--allow", host]
        for spec in publish:
            args += ["-p", spec]
        args += attach
        try:
            done = cli.call(args, timeout=_cli.create_timeout(), what="up")
        except (TransportError, KeyboardInterrupt, SystemExit):
            # a timed-out, interrupted or half-failed boot must not leak a VM
            _cleanup.run_uninterrupted([cli.binary, "down", sb_name], 60)
            raise
        except Unsupported as exc:
            if hosts and "--allow" in exc.message:
                raise Unsupported(
                    "network= needs `mvmctl up --allow HOST[:PORT]`, which this mvmctl lacks",
                    exit_code=exc.exit_code, argv=exc.argv, stderr=exc.stderr,
                ) from None
            raise
        info = SandboxInfo.from_json(done.json())
        return cls(info, cli=cli, owned=True, workload_id=wid)

    @classmethod
    def _create_from_snapshot(
        cls, tag: str, *, name: Optional[str], workload_id: Optional[str], ttl: v.TTL
    ) -> "Sandbox":
        wid = v.workload_id(workload_id, tag)
        if name is not None:
            v.sandbox_name(name)
        ttl_s = v.ttl_seconds(ttl)
        if sdk_mode() == "record":
            raise Unsupported("from_snapshot is not available in record mode")
        _cleanup.install()
        cli = _cli.CLI()
        sb_name = name or f"sdk-{wid[:24].rstrip('-')}-{_random.token_hex(4)}"
        args = ["up", "--from-snapshot", tag, "--name", sb_name, "--json", "--ttl", f"{ttl_s}s"]
        try:
            done = cli.call(args, timeout=_cli.create_timeout(), what="up")
        except (TransportError, KeyboardInterrupt, SystemExit):
            _cleanup.run_uninterrupted([cli.binary, "down", sb_name], 60)
            raise
        except Unsupported as exc:
            raise Unsupported(
                "from_snapshot needs `mvmctl up --from-snapshot TAG`, which this mvmctl lacks",
                exit_code=exc.exit_code, argv=exc.argv, stderr=exc.stderr,
            ) from None
        info = SandboxInfo.from_json(done.json())
        return cls(info, cli=cli, owned=True, workload_id=wid)

    @classmethod
    def _resume_named(cls, name: str) -> "Sandbox":
        v.sandbox_name(name)
        if sdk_mode() == "record":
            raise Unsupported("Sandbox.resume() is not available in record mode")
        cli = _cli.CLI()
        done = cli.call(["resume", name, "--json"], timeout=_cli.create_timeout(), what="resume")
        return cls(SandboxInfo.from_json(done.json()), cli=cli, owned=False)

    @staticmethod
    def list_snapshots() -> List[SnapshotInfo]:
        """The snapshots on this host (``mvmctl snapshot ls --json``)."""
        if sdk_mode() == "record":
            raise Unsupported("Sandbox.list_snapshots() is not available in record mode")
        obj = _cli.CLI().call(["snapshot", "ls", "--json"], what="snapshot ls").json()
        items = obj.get("snapshots") if isinstance(obj, dict) else None
        if not isinstance(items, list):
            raise TransportError('snapshot ls --json: expected {"snapshots": [...]}')
        return [SnapshotInfo.from_json(x) for x in items if isinstance(x, dict) and not x.get("invalid")]

    @staticmethod
    def remove_snapshot(tag: str) -> None:
        """Remove a snapshot (sandboxes started from it are not affected).
        Raises :class:`SnapshotNotFound`."""
        v.snapshot_tag(tag)
        if sdk_mode() == "record":
            raise Unsupported("Sandbox.remove_snapshot() is not available in record mode")
        try:
            _cli.CLI().call(["snapshot", "rm", tag], what="snapshot rm")
        except SandboxNotFound as exc:  # exit 3 without --json: here, the snapshot
            raise SnapshotNotFound(exc.message, exit_code=exc.exit_code, argv=exc.argv,
                                   stderr=exc.stderr) from None

    @classmethod
    def connect(cls, name: str) -> "Sandbox":
        """Attach to an existing sandbox (for example one another process
        created and detached). Raises :class:`SandboxNotFound`."""
        v.sandbox_name(name)
        if sdk_mode() == "record":
            raise Unsupported("Sandbox.connect() is not available in record mode")
        cli = _cli.CLI()
        for info in cls._ls(cli, all=True):
            if info.name == name:
                return cls(info, cli=cli, owned=False)
        raise SandboxNotFound(f"no sandbox named {name!r}", exit_code=_cli.EXIT_NOT_FOUND)

    @classmethod
    def list(cls, *, all: bool = False) -> List[SandboxInfo]:
        """Running sandboxes (``all=True``: also stopped and failed ones)."""
        if sdk_mode() == "record":
            raise Unsupported("Sandbox.list() is not available in record mode")
        return cls._ls(_cli.CLI(), all=all)

    @staticmethod
    def _ls(cli: _cli.CLI, *, all: bool) -> List[SandboxInfo]:
        args = ["ls", "--json"] + (["-a"] if all else [])
        items = cli.call(args, what="ls").json()
        if items is None:
            return []
        if not isinstance(items, list):
            raise TransportError("ls --json: expected an array")
        return [SandboxInfo.from_json(x) for x in items]

    # -- properties -------------------------------------------------------
    @property
    def name(self) -> str:
        return self._info.name

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def info(self) -> SandboxInfo:
        """The description from the last create/connect/refresh."""
        return self._info

    @property
    def recording(self) -> bool:
        return self._recording is not None

    def __repr__(self) -> str:
        return f"Sandbox(name={self.name!r}, id={self.id!r}, state={self._info.state!r})"

    def _live_name(self) -> str:
        if self._destroyed:
            raise SandboxNotFound(f"sandbox {self.name!r} was destroyed",
                                  exit_code=_cli.EXIT_NOT_FOUND)
        if self._recording is not None:
            raise Unsupported("not available in record mode")
        return self.name

    # -- operations -------------------------------------------------------
    def refresh(self) -> SandboxInfo:
        """Re-read the sandbox's state from ``mvmctl ls -a``."""
        name = self._live_name()
        for info in self._ls(self._cli, all=True):
            if info.name == name:
                self._info = info
                return info
        raise SandboxNotFound(f"no sandbox named {name!r}", exit_code=_cli.EXIT_NOT_FOUND)

    def is_running(self) -> bool:
        if self._destroyed or self._recording is not None:
            return False
        try:
            return self.refresh().state == "running"
        except SandboxNotFound:
            return False

    def logs(self, lines: Optional[int] = None) -> str:
        """The guest console and agent log (the last ``lines`` lines)."""
        if self._recording is not None:
            raise Unsupported("logs() is not available in record mode")
        args = ["logs", self._live_name()]
        if lines is not None:
            args += ["-n", str(v.positive_int(lines, "lines"))]
        return self._cli.call(args, what="logs").stdout.decode("utf-8", "replace")

    def stats(self) -> Dict[str, Any]:
        """Guest metrics (memory, load, processes, uptime, disk)."""
        if self._recording is not None:
            raise Unsupported("stats() is not available in record mode")
        obj = self._cli.call(["stats", self._live_name(), "--json"], what="stats").json()
        if not isinstance(obj, dict):
            raise TransportError("stats --json: expected an object")
        return obj

    def pause(self, *, in_memory: bool = False) -> str:
        """Pause the sandbox and return its name.

        By default its memory, device state and disk are saved and its VM
        exits: a paused sandbox holds no RAM or CPU, and survives this
        process, its supervisor and a host reboot. Pausing to disk releases
        the sandbox from this process (as :meth:`detach` does) so that it is
        still there to resume: ``Sandbox.resume(name)`` from any process, or
        :meth:`resume` on this object.

        ``in_memory=True`` only freezes the vCPUs (the VM keeps its RAM, and
        ownership does not change). Commands fail until resumed."""
        if self._recording is not None:
            raise Unsupported("pause() is not available in record mode")
        args = ["pause", self._live_name(), "--json"] + (["--in-memory"] if in_memory else [])
        done = self._cli.call(args, timeout=_cli.create_timeout(), what="pause")
        self._info = SandboxInfo.from_json(done.json())
        if not in_memory:
            self.detach()
        return self.name

    #: ``Sandbox.resume(name)`` resumes a paused sandbox by name and returns
    #: it connected (not owned, as :meth:`connect`; a ``with`` block or
    #: :meth:`destroy` stops it); ``sandbox.resume()`` resumes this one and
    #: returns it. A sandbox paused to disk continues where it was (its
    #: processes keep running, open files stay open) with its own RNG
    #: reseeded and its clock set from the host. Raises
    #: :class:`SandboxNotFound`, or :class:`SnapshotError` when the saved
    #: state fails verification.
    resume = _Resume()

    def _resume_self(self) -> "Sandbox":
        if self._recording is not None:
            raise Unsupported("resume() is not available in record mode")
        done = self._cli.call(["resume", self._live_name(), "--json"], timeout=_cli.create_timeout(),
                              what="resume")
        self._info = SandboxInfo.from_json(done.json())
        return self

    def snapshot(self, tag: str) -> SnapshotInfo:
        """Save the sandbox's memory, device state and disk as snapshot
        ``tag`` (``mvmctl snapshot save``); the sandbox keeps running. Start
        clones of it with ``Sandbox.create(from_snapshot=tag)``. A snapshot
        holds whatever the guest's memory holds (secrets included: see
        ``holds_secrets``); it is stored mode 0600 under the data
        directory."""
        v.snapshot_tag(tag)
        if self._recording is not None:
            raise Unsupported("snapshot() is not available in record mode")
        done = self._cli.call(["snapshot", "save", self._live_name(), tag, "--json"],
                              timeout=_cli.create_timeout(), what="snapshot save")
        return SnapshotInfo.from_json(done.json())

    def detach(self) -> str:
        """Leave the sandbox running after this process exits (its TTL
        still applies) and return its name for a later
        :meth:`Sandbox.connect`. Further calls on this object still work."""
        with self._lock:
            self._detached = True
        _cleanup.unregister(self)
        if self._recording is not None:
            self._recording.add({"kind": "detach"})
        for h in list(self._handles):
            h._detach_follower()
        return self.name

    def destroy(self) -> None:
        """Stop the sandbox and remove its state (``mvmctl down``).
        Idempotent: destroying a gone sandbox is not an error."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        _cleanup.unregister(self)
        for h in list(self._handles):
            h._detach_follower()
        if self._recording is not None:
            self._recording.add({"kind": "kill"})
            return
        code = _cleanup.run_uninterrupted([self._cli.binary, "down", self.name], _cli.call_timeout())
        if code not in (0, _cli.EXIT_NOT_FOUND):
            # retry once through the error-mapping path to report why
            try:
                self._cli.call(["down", self.name], ok=(0, _cli.EXIT_NOT_FOUND), what="down")
            except MvmError:
                self._destroyed = False
                raise
        self._info.state = "destroyed"

    #: E2B-style alias of :meth:`destroy`.
    kill = destroy

    def _cleanup(self) -> None:
        """Called at interpreter exit for owned, undetached sandboxes."""
        if not self._detached:
            try:
                self.destroy()
            except MvmError:
                pass

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if not self._detached:
            self.destroy()
