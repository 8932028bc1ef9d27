"""``sandbox.files``: guest files through ``mvmctl fs`` (bytes stream over
the CLI's stdin/stdout; paths are validated on the host first)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Union

from . import _cli
from . import _validate as v
from ._errors import FileNotFound, TransportError, Unsupported

if TYPE_CHECKING:  # pragma: no cover
    from ._sandbox import Sandbox

Data = Union[str, bytes, bytearray, memoryview]


@dataclass
class EntryInfo:
    """A guest path as ``mvmctl fs stat/ls --json`` describes it."""

    name: str
    path: str
    type: str  # "file", "dir", "symlink", ...
    size: int
    mode: str
    mtime: Optional[str]
    uid: int = 0
    gid: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_dir(self) -> bool:
        return self.type in ("dir", "directory")

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "EntryInfo":
        return cls(
            name=str(obj.get("name", "")),
            path=str(obj.get("path", "")),
            type=str(obj.get("type", "")),
            size=int(obj.get("size") or 0),
            mode=str(obj.get("mode", "")),
            mtime=obj.get("mtime"),
            uid=int(obj.get("uid") or 0),
            gid=int(obj.get("gid") or 0),
            raw=dict(obj),
        )


def _bytes_of(data: Data) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise v.InvalidArgument(f"files.write: expected str or bytes, not {type(data).__name__}")


def _io_timeout(size: int) -> float:
    # the call bound plus a generous 1 s per MiB (TCG guests are slow)
    return _cli.call_timeout() + size / (1024 * 1024)


def _mode_flag(mode: Optional[int]) -> List[str]:
    if mode is None:
        return []
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise v.InvalidArgument(f"mode: expected permission bits such as 0o644, got {mode!r}")
    return ["--mode", format(mode, "04o")]


class Files:
    """Read and change files in one sandbox."""

    def __init__(self, sandbox: "Sandbox") -> None:
        self._sb = sandbox

    def _live(self, op: str) -> str:
        if self._sb._recording is not None:
            raise Unsupported(f"files.{op}() is not available in record mode")
        return self._sb._live_name()

    def read_bytes(self, path: str) -> bytes:
        """The contents of a guest file. Raises :class:`FileNotFound`."""
        p = v.guest_path(path)
        name = self._live("read")
        done = self._sb._cli.call(["fs", "read", name, p], what=f"read {p}")
        return done.stdout

    def read(self, path: str, *, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The contents of a guest file as text."""
        return self.read_bytes(path).decode(encoding, errors)

    def write(
        self,
        path: str,
        data: Data,
        *,
        mode: Optional[int] = None,
        parents: bool = True,
        append: bool = False,
    ) -> EntryInfo:
        """Write ``data`` (str is UTF-8 encoded) to a guest file, creating
        missing parent directories unless ``parents=False``."""
        p = v.guest_path(path)
        payload = _bytes_of(data)
        flags = _mode_flag(mode)
        rec = self._sb._recording
        if rec is not None:
            rec.add(
                {
                    "kind": "files_write",
                    "path": p,
                    "bytes_b64": base64.b64encode(payload).decode(),
                    "mode": format(mode, "04o") if mode is not None else None,
                    "append": append,
                }
            )
            return EntryInfo(name=p.rsplit("/", 1)[-1], path=p, type="file",
                             size=len(payload), mode=format(mode or 0o644, "04o"), mtime=None)
        args = ["fs", "write", self._sb._live_name(), p, "--json", *flags]
        if parents:
            args.append("-p")
        if append:
            args.append("--append")
        done = self._sb._cli.call(
            args, input=payload, timeout=_io_timeout(len(payload)), what=f"write {p}"
        )
        obj = done.json()
        if not isinstance(obj, dict):
            raise TransportError("fs write --json: expected an object")
        return EntryInfo.from_json(obj)

    def list(self, path: str) -> List[EntryInfo]:
        """The entries of a guest directory."""
        p = v.guest_path(path)
        done = self._sb._cli.call(
            ["fs", "ls", self._live("list"), p, "--json"], what=f"list {p}"
        )
        obj = done.json()
        entries = obj.get("entries") if isinstance(obj, dict) else obj
        if not isinstance(entries, list):
            raise TransportError("fs ls --json: expected entries")
        return [EntryInfo.from_json(e) for e in entries if isinstance(e, dict)]

    def stat(self, path: str) -> EntryInfo:
        """Describe a guest path (symlinks are not followed)."""
        p = v.guest_path(path)
        done = self._sb._cli.call(
            ["fs", "stat", self._live("stat"), p, "--json"], what=f"stat {p}"
        )
        obj = done.json()
        if not isinstance(obj, dict):
            raise TransportError("fs stat --json: expected an object")
        return EntryInfo.from_json(obj)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except FileNotFound:
            return False
        return True

    def remove(self, path: str, *, recursive: bool = False, missing_ok: bool = False) -> None:
        """Remove a file, symlink or empty directory (``recursive=True``: a
        tree). Raises :class:`FileNotFound` unless ``missing_ok``."""
        p = v.guest_path(path)
        if p == "/":
            raise v.InvalidArgument("refusing to remove '/'")
        rec = self._sb._recording
        if rec is not None:
            rec.add({"kind": "files_remove", "path": p, "recursive": recursive})
            return
        args = ["fs", "rm", self._sb._live_name(), p]
        if recursive:
            args.append("-r")
        if missing_ok:
            args.append("-f")
        self._sb._cli.call(args, what=f"remove {p}")

    def mkdir(self, path: str, *, parents: bool = True, mode: Optional[int] = None) -> None:
        """Create a guest directory (with ``parents``: missing parents too,
        and no error if it exists)."""
        p = v.guest_path(path)
        flags = _mode_flag(mode)
        rec = self._sb._recording
        if rec is not None:
            rec.add({"kind": "files_mkdir", "path": p, "parents": parents})
            return
        args = ["fs", "mkdir", self._sb._live_name(), p, *flags]
        if parents:
            args.append("-p")
        self._sb._cli.call(args, what=f"mkdir {p}")

    def rename(self, src: str, dst: str) -> None:
        """Move a guest path (into ``dst`` when it is a directory)."""
        a, b = v.guest_path(src, what="src"), v.guest_path(dst, what="dst")
        rec = self._sb._recording
        if rec is not None:
            rec.add({"kind": "files_rename", "src": a, "dst": b})
            return
        self._sb._cli.call(["fs", "mv", self._sb._live_name(), a, b], what=f"rename {a}")
