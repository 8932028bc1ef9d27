"""Subprocess transport to ``mvmctl`` (JSON on stdout, ``mvmctl: ...`` on
stderr, documented exit codes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ._errors import (
    CLIError,
    CLIInvalidArgument,
    CommandTimeout,
    FileNotFound,
    MvmError,
    PolicyDenied,
    SandboxNotFound,
    SnapshotError,
    SnapshotNotFound,
    TransportError,
    Unsupported,
)

# Exit codes of the CLI contract.
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_PATH_NOT_FOUND = 4
EXIT_TIMEOUT = 124
EXIT_MVM = 125
EXIT_CANNOT_EXEC = 126
EXIT_NO_COMMAND = 127

#: Default bound of one CLI call that is not itself bounded by a command
#: timeout (fs, ls, down, ...). Override with MVM_SDK_CALL_TIMEOUT (seconds).
DEFAULT_CALL_TIMEOUT = 120.0
#: Bound of ``up`` (a first use of a Debian template builds it: ~30 s or
#: more). Override with MVM_SDK_CREATE_TIMEOUT (seconds).
DEFAULT_CREATE_TIMEOUT = 900.0

_UNSUPPORTED = re.compile(r"unknown (command|flag|shorthand flag)")


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if value > 0 else default


def call_timeout() -> float:
    return _env_seconds("MVM_SDK_CALL_TIMEOUT", DEFAULT_CALL_TIMEOUT)


def create_timeout() -> float:
    return _env_seconds("MVM_SDK_CREATE_TIMEOUT", DEFAULT_CREATE_TIMEOUT)


def resolve_binary() -> str:
    """``$MVM_CLI_BIN`` if set, else ``mvmctl`` on ``PATH``."""
    explicit = os.environ.get("MVM_CLI_BIN", "").strip()
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise TransportError(f"MVM_CLI_BIN={explicit!r} is not an executable file")
    found = shutil.which("mvmctl")
    if found is None:
        raise TransportError(
            "mvmctl not found: set MVM_CLI_BIN to its path or put it on PATH"
        )
    return found


def cli_message(stderr: str) -> str:
    """The CLI's error message: its last ``mvmctl: ...`` line without the
    prefix, else the last non-empty stderr line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("mvmctl: "):
            return line[len("mvmctl: ") :]
    return lines[-1] if lines else ""


def json_error(stdout: bytes) -> Optional[Dict[str, str]]:
    """The error object a failed ``--json`` call prints on stdout
    (``{"error": {"kind", "reason", "message", ...}}``), or ``None``."""
    try:
        obj = json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("kind"), str):
        return None
    return {k: str(err.get(k) or "") for k in ("kind", "reason", "message")}


def _error_of_kind(kind: str, reason: str) -> Optional[type]:
    """The typed error of an error kind of the CLI's one error model (see
    docs/cli.md, exit codes); ``None`` leaves the choice to the exit code."""
    if reason in ("snapshot", "integrity"):
        if kind == "not_found":
            return SnapshotNotFound
        if kind in ("refused", "failed_precondition"):
            return SnapshotError
    if kind == "not_found":
        if reason == "sandbox":
            return SandboxNotFound
        if reason in ("path", "process"):
            return FileNotFound
        return CLIError
    if kind == "timeout":
        return CommandTimeout if reason == "command" else TransportError
    if kind == "refused":
        return CLIError if reason == "unsafe" else PolicyDenied
    if kind == "permission_denied" and reason == "command":
        return PolicyDenied
    if kind == "invalid_argument":
        return CLIInvalidArgument
    if kind in ("transport", "guest", "unavailable") or (
        kind == "failed_precondition" and reason == "not_running"
    ):
        return TransportError
    return None


def error_for(
    argv: Sequence[str], code: int, stderr: str, *, what: str = "", stdout: bytes = b""
) -> MvmError:
    """Map a failed CLI call to the SDK's typed errors: by the error kind of
    its ``--json`` error object when there is one, else by exit code."""
    msg = cli_message(stderr) or (
        f"{what}: mvmctl exited with code {code}" if what else f"mvmctl exited with code {code}"
    )
    kw: Dict[str, Any] = {"exit_code": code, "argv": list(argv), "stderr": stderr}
    failure = json_error(stdout) if stdout else None
    if failure is not None:
        msg = failure["message"] or msg
    if code == EXIT_USAGE and _UNSUPPORTED.search(msg):
        # An older mvmctl without this command or flag (kind invalid_argument).
        return Unsupported(msg, **kw)
    if failure is not None:
        typed = _error_of_kind(failure["kind"], failure["reason"])
        if typed is not None:
            err: MvmError = typed(msg, **kw)
            return err
    if code == EXIT_NOT_FOUND:
        return SandboxNotFound(msg, **kw)
    if code == EXIT_PATH_NOT_FOUND:
        return FileNotFound(msg, **kw)
    if code == EXIT_TIMEOUT:
        return CommandTimeout(msg, **kw)
    if code == EXIT_MVM:
        return TransportError(msg, **kw)
    if code == EXIT_CANNOT_EXEC:
        return PolicyDenied(msg, **kw)
    if _UNSUPPORTED.search(msg):
        return Unsupported(msg, **kw)
    if code == EXIT_USAGE:
        return CLIInvalidArgument(msg, **kw)
    return CLIError(msg, **kw)


@dataclass
class Completed:
    argv: List[str]
    code: int
    stdout: bytes
    stderr: str

    def json(self) -> Any:
        try:
            return json.loads(self.stdout.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise TransportError(
                f"mvmctl {' '.join(self.argv[1:3])}: output is not JSON: {exc}",
                argv=self.argv,
            ) from None


class CLI:
    """Runs ``mvmctl`` subcommands. Every call is bounded by a timeout."""

    def __init__(self, binary: Optional[str] = None) -> None:
        self._binary = binary

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = resolve_binary()
        return self._binary

    def argv(self, args: Sequence[str]) -> List[str]:
        return [self.binary, *args]

    def call(
        self,
        args: Sequence[str],
        *,
        input: Optional[bytes] = None,
        timeout: Optional[float] = None,
        ok: Sequence[int] = (0,),
        what: str = "",
        env: Optional[Mapping[str, str]] = None,
    ) -> Completed:
        """Run one CLI call; raise the mapped error unless its exit code is
        in ``ok``. The child runs in its own session so that a terminal's
        Ctrl-C reaches only this process, which then kills the child."""
        argv = self.argv(args)
        limit = call_timeout() if timeout is None else timeout
        try:
            proc = subprocess.run(
                argv,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=limit,
                start_new_session=True,
                env=dict(env) if env is not None else None,
            )
        except subprocess.TimeoutExpired:
            raise TransportError(
                f"mvmctl {' '.join(args[:2])}: no answer within {limit:g}s",
                argv=argv,
            ) from None
        except OSError as exc:
            raise TransportError(f"cannot run {argv[0]}: {exc}", argv=argv) from None
        stderr = proc.stderr.decode("utf-8", "replace")
        done = Completed(argv, proc.returncode, proc.stdout, stderr)
        if proc.returncode not in ok:
            raise error_for(argv, proc.returncode, stderr, what=what, stdout=proc.stdout)
        return done

    def popen(
        self, args: Sequence[str], *, stdin: bool = False
    ) -> "subprocess.Popen[bytes]":
        argv = self.argv(args)
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise TransportError(f"cannot run {argv[0]}: {exc}", argv=argv) from None
