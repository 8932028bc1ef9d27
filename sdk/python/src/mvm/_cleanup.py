"""Sandboxes created by this process are destroyed when it exits — normal
exit, uncaught exception, Ctrl-C (KeyboardInterrupt) or SIGTERM/SIGHUP —
unless they were detached."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Dict, List, Optional

if TYPE_CHECKING:  # pragma: no cover
    from ._sandbox import Sandbox

_lock = threading.Lock()
_owned: Dict[int, "Sandbox"] = {}
_installed = False


def install() -> None:
    """Install the atexit hook and signal handlers (once). Called before
    a boot starts, so that a SIGTERM during ``up`` unwinds too."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    atexit.register(cleanup_all)
    _install_signal_handlers()


def register(sb: "Sandbox") -> None:
    install()
    with _lock:
        _owned[id(sb)] = sb


def unregister(sb: "Sandbox") -> None:
    with _lock:
        _owned.pop(id(sb), None)


def cleanup_all() -> None:
    with _lock:
        victims: List["Sandbox"] = list(_owned.values())
        _owned.clear()
    for sb in victims:
        try:
            sb._cleanup()
        except BaseException:  # never let cleanup of one hide the others
            pass


def _exit_on_signal(signum: int, frame: Optional[FrameType]) -> None:
    # Unwind like an exception so that `with` blocks and atexit run.
    raise SystemExit(128 + signum)


def _install_signal_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _exit_on_signal)
        except (ValueError, OSError):  # not the main interpreter
            pass
    try:  # SIGINT normally raises KeyboardInterrupt; keep a custom handler
        if signal.getsignal(signal.SIGINT) == signal.SIG_DFL:
            signal.signal(signal.SIGINT, _exit_on_signal)
    except (ValueError, OSError):
        pass


def run_uninterrupted(argv: List[str], timeout: float) -> int:
    """Run a cleanup command to completion even if Ctrl-C arrives meanwhile
    (the child is in its own session, so the terminal's SIGINT does not
    reach it). Returns its exit code, or -1 if it timed out."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError:
        return -1
    deadline = time.monotonic() + timeout
    interrupted: Optional[BaseException] = None
    while True:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            break
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            return -1
        except (KeyboardInterrupt, SystemExit) as exc:
            interrupted = interrupted or exc
            continue
    if proc.stderr is not None:
        proc.stderr.close()
    if interrupted is not None:
        raise interrupted
    return proc.returncode
