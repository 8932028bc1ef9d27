"""``sandbox.commands``: run to completion (``mvmctl exec --json``) or start
in the background (``mvmctl proc start`` + ``proc wait`` for streaming)."""

from __future__ import annotations

import base64
import codecs
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Union,
)

from . import _cli
from . import _validate as v
from ._errors import CommandTimeout, MvmError, TransportError, Unsupported

if TYPE_CHECKING:  # pragma: no cover
    from ._sandbox import Sandbox

OutputCallback = Callable[[str], None]

#: Default bound of ``commands.run`` (seconds), as in E2B.
DEFAULT_RUN_TIMEOUT = 60.0
#: Default number of bytes of each stream kept in a result.
DEFAULT_MAX_OUTPUT = 4 * 1024 * 1024


@dataclass
class CommandResult:
    """The outcome of a command. A non-zero ``exit_code`` is a result, not an
    error; ``stdout``/``stderr`` are text (invalid UTF-8 replaced), the raw
    bytes are in ``stdout_raw``/``stderr_raw``."""

    argv: List[str]
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    stdout_raw: bytes = b""
    stderr_raw: bytes = b""
    duration_ms: int = 0
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_size: int = 0
    stderr_size: int = 0
    audit_id: Optional[str] = None
    receipt_id: Optional[str] = None
    handle: Optional[str] = None
    recorded: bool = False

    @property
    def truncated(self) -> bool:
        return self.stdout_truncated or self.stderr_truncated

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass
class OutputChunk:
    """A piece of a started command's output, in arrival order."""

    stream: str  # "stdout" or "stderr"
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass
class ProcessInfo:
    """A background process as ``mvmctl proc ls --json`` describes it."""

    handle: str
    pid: int
    argv: List[str]
    state: str
    exit_code: Optional[int]
    signal: Optional[int]
    started: Optional[str]
    exited: Optional[str]
    stdin_open: bool
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "ProcessInfo":
        return cls(
            handle=str(obj.get("handle", "")),
            pid=int(obj.get("pid") or 0),
            argv=[str(a) for a in obj.get("argv") or []],
            state=str(obj.get("state", "")),
            exit_code=obj.get("exit_code"),
            signal=obj.get("signal"),
            started=obj.get("started"),
            exited=obj.get("exited"),
            stdin_open=bool(obj.get("stdin_open")),
            raw=dict(obj),
        )


def _stream(obj: Mapping[str, Any], name: str) -> bytes:
    if isinstance(obj.get(name + "_base64"), str):
        try:
            return base64.b64decode(obj[name + "_base64"], validate=True)
        except ValueError:
            raise TransportError(f"exec: {name}_base64 is not base64") from None
    text = obj.get(name)
    return text.encode("utf-8") if isinstance(text, str) else b""


def result_from_json(argv: List[str], obj: Any) -> CommandResult:
    if not isinstance(obj, dict) or not isinstance(obj.get("exit_code"), int):
        raise TransportError("exec --json: result has no integer exit_code")
    out, err = _stream(obj, "stdout"), _stream(obj, "stderr")
    audit = obj.get("audit_id")
    receipt = obj.get("receipt_id")
    return CommandResult(
        argv=argv,
        exit_code=obj["exit_code"],
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        stdout_raw=out,
        stderr_raw=err,
        duration_ms=int(obj.get("duration_ms") or 0),
        timed_out=bool(obj.get("timed_out")),
        stdout_truncated=bool(obj.get("stdout_truncated")),
        stderr_truncated=bool(obj.get("stderr_truncated")),
        stdout_size=int(obj.get("stdout_bytes") or len(out)),
        stderr_size=int(obj.get("stderr_bytes") or len(err)),
        audit_id=str(audit) if audit else None,
        receipt_id=str(receipt) if receipt else None,
    )


def _as_bytes(data: Union[str, bytes, bytearray, memoryview]) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise v.InvalidArgument(f"expected str or bytes, not {type(data).__name__}")


class Commands:
    """Run commands in one sandbox."""

    def __init__(self, sandbox: "Sandbox") -> None:
        self._sb = sandbox

    def run(
        self,
        cmd: v.Command,
        *,
        timeout: Optional[float] = DEFAULT_RUN_TIMEOUT,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Union[str, bytes, None] = None,
        max_output_bytes: Optional[int] = None,
        raise_on_timeout: bool = True,
    ) -> CommandResult:
        """Run ``cmd`` (an argv list, or a shell string run with ``sh -c``)
        to completion and return its result; a non-zero exit is not an
        error. Past ``timeout`` seconds (``None``: no limit) the command is
        killed and :class:`CommandTimeout` is raised with the partial result
        in ``.result`` (or the result is returned with ``timed_out=True``
        when ``raise_on_timeout=False``)."""
        argv = v.argv_of(cmd)
        envs = v.env_of(env)
        workdir = v.guest_path(cwd, what="cwd") if cwd is not None else None
        limit = v.timeout_seconds(timeout)
        cap = v.positive_int(max_output_bytes, "max_output_bytes")
        data = _as_bytes(stdin) if stdin is not None else None
        rec = self._sb._recording
        if rec is not None:
            rec.add(
                {
                    "kind": "command_run",
                    "argv": argv,
                    "env": envs,
                    "cwd": workdir,
                    "timeout_seconds": limit,
                    "stdin_b64": base64.b64encode(data).decode() if data is not None else None,
                }
            )
            return CommandResult(argv=argv, exit_code=0, recorded=True)
        name = self._sb._live_name()
        args = ["exec", name, "--json", *v.env_flags(envs)]
        if workdir is not None:
            args += ["-w", workdir]
        if limit is not None:
            args += ["--timeout", v.duration_flag(limit)]
        if cap is not None:
            args += ["--max-output", str(cap)]
        if data is not None:
            args.append("-i")
        args += ["--", *argv]
        host_bound = None if limit is None else limit + _cli.call_timeout()
        done = self._sb._cli.call(
            args, input=data, timeout=host_bound, ok=range(256), what="exec"
        )
        parsed: Any = None
        if done.stdout.strip():
            parsed = done.json()
        failure: Any = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(parsed, dict) and "exit_code" in parsed and failure is None:
            result = result_from_json(argv, parsed)
            if result.timed_out and raise_on_timeout:
                raise CommandTimeout(
                    f"{argv[0]}: timed out after {limit:g}s" if limit else f"{argv[0]}: timed out",
                    argv=done.argv,
                    stderr=done.stderr,
                    result=result,
                )
            return result
        # An error object (or nothing): the CLI could not run the command.
        msg = _cli.cli_message(done.stderr)
        kind = reason = ""
        if isinstance(failure, dict):
            kind = str(failure.get("kind", ""))
            reason = str(failure.get("reason") or "")
            msg = str(failure.get("message", msg)) or msg
        if (kind in ("not_found", "permission_denied") and reason == "command") or (
            not kind and done.code == _cli.EXIT_NO_COMMAND
        ) or (not kind and done.code == _cli.EXIT_CANNOT_EXEC and "permission denied in the sandbox" in msg):
            # The guest's "not found" / "not executable" is a command result,
            # as a shell would report it.
            err = (msg + "\n").encode()
            return CommandResult(
                argv=argv,
                exit_code=done.code,
                stderr=err.decode(),
                stderr_raw=err,
                stderr_size=len(err),
            )
        if done.code == 0:
            raise TransportError("exec --json: no result on stdout", argv=done.argv)
        raise _cli.error_for(done.argv, done.code, done.stderr, what="exec", stdout=done.stdout)

    def start(
        self,
        cmd: v.Command,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Union[bool, str, bytes] = False,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        max_output_bytes: Optional[int] = None,
    ) -> "CommandHandle":
        """Start ``cmd`` in the background and return its handle at once.

        Output streams to ``on_stdout``/``on_stderr`` (text chunks, called
        from a reader thread) and to the handle's iterator. ``stdin=True``
        keeps the process's stdin open for :meth:`CommandHandle.send_stdin`;
        str/bytes are sent and stdin is closed."""
        argv = v.argv_of(cmd)
        envs = v.env_of(env)
        workdir = v.guest_path(cwd, what="cwd") if cwd is not None else None
        cap = v.positive_int(max_output_bytes, "max_output_bytes") or DEFAULT_MAX_OUTPUT
        if not isinstance(stdin, (bool, str, bytes, bytearray)):
            raise v.InvalidArgument("stdin: expected bool, str or bytes")
        rec = self._sb._recording
        if rec is not None:
            rec.add({"kind": "command_start", "argv": argv, "env": envs, "cwd": workdir})
            return CommandHandle._recorded(self._sb, argv)
        name = self._sb._live_name()
        args = ["proc", "start", name, "--json", *v.env_flags(envs)]
        if workdir is not None:
            args += ["-w", workdir]
        if stdin is not False:
            args.append("-i")
        args += ["--", *argv]
        done = self._sb._cli.call(args, what="proc start")
        info = done.json()
        if not isinstance(info, dict) or not isinstance(info.get("handle"), str):
            raise TransportError("proc start --json: no handle in the result", argv=done.argv)
        handle = CommandHandle(
            self._sb,
            info["handle"],
            argv,
            pid=int(info.get("pid") or 0),
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            max_output_bytes=cap,
        )
        if isinstance(stdin, (str, bytes, bytearray)):
            handle.send_stdin(stdin, close=True)
        return handle

    def list(self) -> List[ProcessInfo]:
        """Background processes of this sandbox (running and recently
        exited), from ``mvmctl proc ls --json``."""
        if self._sb._recording is not None:
            raise Unsupported("commands.list() is not available in record mode")
        done = self._sb._cli.call(
            ["proc", "ls", self._sb._live_name(), "--json"], what="proc ls"
        )
        items = done.json()
        if not isinstance(items, list):
            raise TransportError("proc ls --json: expected an array")
        return [ProcessInfo.from_json(x) for x in items if isinstance(x, dict)]

    def connect(
        self,
        handle: str,
        *,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> "CommandHandle":
        """Attach to a background process started earlier (possibly by
        another process); its retained output is replayed from the start."""
        for info in self.list():
            if info.handle == handle:
                return CommandHandle(
                    self._sb, handle, info.argv, pid=info.pid,
                    on_stdout=on_stdout, on_stderr=on_stderr,
                )
        raise _cli.error_for(
            [], _cli.EXIT_PATH_NOT_FOUND, f"mvmctl: no process {handle!r} in this sandbox"
        )


_EOF = object()


class CommandHandle:
    """A background process. Its output is followed by one
    ``mvmctl proc wait`` child for the lifetime of the handle."""

    def __init__(
        self,
        sandbox: "Sandbox",
        handle: str,
        argv: List[str],
        *,
        pid: int = 0,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT,
        _follow: bool = True,
    ) -> None:
        self._sb = sandbox
        self.handle = handle
        self.argv = argv
        self.pid = pid
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self._cap = max_output_bytes
        self._buf: Dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._sizes = {"stdout": 0, "stderr": 0}
        self._queue: "queue.Queue[object]" = queue.Queue()
        self._lock = threading.Lock()
        self._result: Optional[CommandResult] = None
        self._started = time.monotonic()
        self._follower: Optional["subprocess.Popen[bytes]"] = None
        self._threads: List[threading.Thread] = []
        self._callback_error: Optional[BaseException] = None
        if _follow:
            self._follow()
            sandbox._handles.add(self)

    @classmethod
    def _recorded(cls, sandbox: "Sandbox", argv: List[str]) -> "CommandHandle":
        h = cls(sandbox, "recorded", argv, _follow=False)
        h._result = CommandResult(argv=argv, exit_code=0, recorded=True)
        h._queue.put(_EOF)
        return h

    def __repr__(self) -> str:
        return f"CommandHandle(handle={self.handle!r}, argv={self.argv!r}, pid={self.pid})"

    # -- output ---------------------------------------------------------
    def _follow(self) -> None:
        self._follower = self._sb._cli.popen(
            ["proc", "wait", self._sb._live_name(), self.handle]
        )
        pending = {"n": 2}
        for name in ("stdout", "stderr"):
            pipe = getattr(self._follower, name)
            t = threading.Thread(
                target=self._pump, args=(name, pipe, pending), daemon=True,
                name=f"mvm-{self.handle}-{name}",
            )
            t.start()
            self._threads.append(t)

    def _pump(self, name: str, pipe: Any, pending: Dict[str, int]) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        callback = self._callbacks[name]
        try:
            while True:
                try:
                    chunk = pipe.read1(65536)
                except (OSError, ValueError):  # closed by _detach_follower
                    break
                if not chunk:
                    break
                with self._lock:
                    self._sizes[name] += len(chunk)
                    buf = self._buf[name]
                    room = self._cap - len(buf)
                    if room > 0:
                        buf += chunk[:room]
                self._queue.put(OutputChunk(name, chunk))
                if callback is not None:
                    text = decoder.decode(chunk)
                    if text:
                        self._call(callback, text)
            if callback is not None:
                tail = decoder.decode(b"", final=True)
                if tail:
                    self._call(callback, tail)
        finally:
            with self._lock:
                pending["n"] -= 1
                last = pending["n"] == 0
            if last:
                self._queue.put(_EOF)

    def _call(self, callback: OutputCallback, text: str) -> None:
        try:
            callback(text)
        except BaseException as exc:  # report it from wait(), keep reading
            if self._callback_error is None:
                self._callback_error = exc

    def __iter__(self) -> Iterator[OutputChunk]:
        return self.iter_output()

    def iter_output(self, timeout: Optional[float] = None) -> Iterator[OutputChunk]:
        """Yield output chunks as they arrive until the process exits. With
        ``timeout``, :class:`CommandTimeout` is raised if no chunk and no
        exit arrives within that many seconds."""
        while True:
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise CommandTimeout(
                    f"{self.argv[0]}: no output within {timeout:g}s", exit_code=None
                ) from None
            if item is _EOF:
                self._queue.put(_EOF)  # later iterators end at once too
                return
            assert isinstance(item, OutputChunk)
            yield item

    def iter_lines(self, stream: str = "stdout", timeout: Optional[float] = None) -> Iterator[str]:
        """Yield complete lines (without the newline) of one stream."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        partial = ""
        for chunk in self.iter_output(timeout=timeout):
            if chunk.stream != stream:
                continue
            partial += decoder.decode(chunk.data)
            *lines, partial = partial.split("\n")
            yield from lines
        partial += decoder.decode(b"", final=True)
        if partial:
            yield partial

    @property
    def stdout(self) -> str:
        """Output received so far (bounded by ``max_output_bytes``)."""
        with self._lock:
            return bytes(self._buf["stdout"]).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        with self._lock:
            return bytes(self._buf["stderr"]).decode("utf-8", "replace")

    # -- lifecycle ------------------------------------------------------
    def wait(self, timeout: Optional[float] = None) -> CommandResult:
        """Wait until the process exits and return its result. Raises
        :class:`CommandTimeout` after ``timeout`` seconds (the process keeps
        running; call :meth:`kill` to stop it)."""
        if self._result is not None:
            return self._result
        limit = v.timeout_seconds(timeout)
        follower = self._follower
        assert follower is not None
        try:
            code = follower.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(
                f"{self.argv[0]}: still running after {limit:g}s", exit_code=None
            ) from None
        for t in self._threads:
            t.join(timeout=10)
        info = self._status()
        exit_code = code
        if info is not None and info.state == "exited" and isinstance(info.exit_code, int):
            exit_code = info.exit_code
        with self._lock:
            out, err = bytes(self._buf["stdout"]), bytes(self._buf["stderr"])
            sizes = dict(self._sizes)
        self._result = CommandResult(
            argv=self.argv,
            exit_code=exit_code,
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            stdout_raw=out,
            stderr_raw=err,
            duration_ms=int((time.monotonic() - self._started) * 1000),
            stdout_truncated=sizes["stdout"] > len(out),
            stderr_truncated=sizes["stderr"] > len(err),
            stdout_size=sizes["stdout"],
            stderr_size=sizes["stderr"],
            handle=self.handle,
        )
        self._sb._handles.discard(self)
        if self._callback_error is not None:
            exc, self._callback_error = self._callback_error, None
            raise exc
        return self._result

    def _status(self) -> Optional[ProcessInfo]:
        """The guest's view of this process; raises SandboxNotFound /
        TransportError when the sandbox is gone."""
        for info in self._sb.commands.list():
            if info.handle == self.handle:
                return info
        return None

    @property
    def exit_code(self) -> Optional[int]:
        """The exit code once :meth:`wait` returned, else ``None``."""
        return self._result.exit_code if self._result is not None else None

    def is_running(self) -> bool:
        if self._result is not None:
            return False
        info = self._status()
        return info is not None and info.state == "running"

    def kill(self) -> None:
        """SIGKILL the process and its group. Killing an exited process is
        not an error."""
        if self._result is not None and self._result.recorded:
            return
        try:
            self._sb._cli.call(
                ["proc", "kill", self._sb._live_name(), self.handle], what="proc kill"
            )
        except MvmError as exc:
            if not self._exited():
                raise exc

    def signal(self, sig: Union[str, int]) -> None:
        """Send a signal (``"TERM"``, ``"INT"``, ``9``, ...) to the process
        group."""
        self._sb._cli.call(
            ["proc", "signal", self._sb._live_name(), self.handle, str(sig)],
            what="proc signal",
        )

    def send_stdin(self, data: Union[str, bytes, bytearray], *, close: bool = False) -> None:
        """Write to the process's stdin (start it with ``stdin=True``)."""
        payload = _as_bytes(data)
        args = ["proc", "stdin", self._sb._live_name(), self.handle]
        if close:
            args.append("--close")
        self._sb._cli.call(args, input=payload, what="proc stdin")

    def close_stdin(self) -> None:
        self.send_stdin(b"", close=True)

    def _exited(self) -> bool:
        try:
            info = self._status()
        except MvmError:
            return False
        return info is not None and info.state != "running"

    def _detach_follower(self) -> None:
        """Stop following (the sandbox goes away or is detached)."""
        f = self._follower
        if f is not None and f.poll() is None:
            f.kill()
            try:
                f.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for pipe in (f.stdout, f.stderr) if f is not None else ():
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
