"""Typed errors of the mvm SDK.

Every error the SDK raises is an :class:`MvmError`. Failures reported by the
``mvmctl`` CLI carry its message (``mvmctl: ...`` on stderr, without the
prefix) and its exit code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ._commands import CommandResult


class MvmError(Exception):
    """Base class of every error raised by the SDK."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: Optional[int] = None,
        argv: Optional[Sequence[str]] = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.argv = list(argv) if argv is not None else None
        self.stderr = stderr

    def __str__(self) -> str:
        if self.exit_code is None:
            return self.message
        return f"{self.message} (mvmctl exit {self.exit_code})"


class CLIError(MvmError):
    """``mvmctl`` failed; ``message`` and ``exit_code`` are the CLI's."""


class SandboxNotFound(CLIError):
    """No sandbox of that name exists (CLI exit 3)."""


class CommandTimeout(CLIError):
    """A command ran past its timeout (CLI exit 124).

    ``result`` holds what the command printed before it was killed (for
    ``commands.run``) or ``None`` (for ``CommandHandle.wait``, where the
    process keeps running).
    """

    def __init__(
        self,
        message: str,
        *,
        exit_code: Optional[int] = 124,
        argv: Optional[Sequence[str]] = None,
        stderr: str = "",
        result: Optional["CommandResult"] = None,
    ) -> None:
        super().__init__(message, exit_code=exit_code, argv=argv, stderr=stderr)
        self.result = result


class PolicyDenied(CLIError):
    """The sandbox's policy refused the operation (CLI exit 126: a sealed
    image refusing ad-hoc exec or file writes, a network rule, ...)."""


class SnapshotNotFound(CLIError):
    """No snapshot of that tag exists (``mvmctl snapshot ls`` lists them)."""


class SnapshotError(CLIError):
    """A snapshot (or a sandbox paused to disk) cannot be restored: it failed
    verification (tampered or truncated: refused, never restored) or it does
    not match this host (another QEMU, kernel or image)."""


class TransportError(MvmError):
    """The SDK could not talk to the sandbox: ``mvmctl`` is missing or hung,
    its output was not what the contract says, or mvm itself failed (CLI
    exit 125: boot, guest channel)."""


class FileNotFound(CLIError, FileNotFoundError):
    """A guest path does not exist (CLI exit 4)."""


class InvalidArgument(MvmError, ValueError):
    """An argument was rejected: on the host before anything was sent (bad
    guest path, env name, argv, ttl, ...), or by ``mvmctl`` itself
    (:class:`CLIInvalidArgument`)."""


class CLIInvalidArgument(InvalidArgument, CLIError):
    """``mvmctl`` refused an argument (error kind ``invalid_argument``, exit
    2): an :class:`InvalidArgument` that is also a :class:`CLIError`, with
    the CLI's message, exit code, argv and stderr."""


class Unsupported(MvmError):
    """The operation is not available: the installed ``mvmctl`` lacks the
    command or flag, or the current SDK mode (record) cannot perform it."""


class ModeError(MvmError):
    """``MVM_SDK_MODE`` / ``MVM_SDK_OUT_PATH`` are invalid or inconsistent."""


__all__ = [
    "MvmError",
    "CLIError",
    "SandboxNotFound",
    "SnapshotNotFound",
    "SnapshotError",
    "CommandTimeout",
    "PolicyDenied",
    "TransportError",
    "FileNotFound",
    "InvalidArgument",
    "CLIInvalidArgument",
    "Unsupported",
    "ModeError",
]
