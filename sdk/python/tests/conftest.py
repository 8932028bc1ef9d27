"""Fixtures shared by the SDK tests.

Live tests drive the project's own ``mvmctl`` (``MVM_CLI_BIN``, else
``bin/mvmctl`` of this repository, else ``PATH``) against real microVMs.
Boots are few: one session sandbox serves most tests; the lifecycle tests
boot their own (cleanup, detach/connect, the README snippet).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

import mvm

REPO = Path(__file__).resolve().parents[3]
SRC = Path(__file__).resolve().parents[1] / "src"

#: Bound of every helper subprocess a test starts.
CHILD_TIMEOUT = 300.0


def _find_cli() -> Optional[str]:
    explicit = os.environ.get("MVM_CLI_BIN")
    if explicit:
        return explicit
    local = REPO / "bin" / "mvmctl"
    if local.is_file():
        return str(local)
    return None


def pytest_configure(config: pytest.Config) -> None:
    cli = _find_cli()
    if cli:
        os.environ["MVM_CLI_BIN"] = cli
    # Temp state/data dirs unless the caller chose them (the shared cache
    # of kernels and templates is kept). Short paths: unix sockets live
    # under the state dir.
    for var, prefix in (("MVM_STATE_DIR", "mvs"), ("MVM_DATA_DIR", "mvd")):
        if not os.environ.get(var):
            os.environ[var] = tempfile.mkdtemp(prefix=f"{prefix}-")
            _made_dirs.append(os.environ[var])
    os.environ.pop("MVM_SDK_MODE", None)


_made_dirs: List[str] = []


def pytest_unconfigure(config: pytest.Config) -> None:
    """Bring down what the run left behind and drop the temp dirs it made."""
    from mvm import _cleanup

    _cleanup.cleanup_all()
    if _made_dirs and os.environ.get("MVM_CLI_BIN"):
        try:
            mvmctl("down", "--all")
        except (OSError, subprocess.SubprocessError):
            pass
    for d in _made_dirs:
        shutil.rmtree(d, ignore_errors=True)


def mvmctl(*args: str, timeout: float = 120) -> "subprocess.CompletedProcess[str]":
    """Run the CLI directly (to check the SDK from outside)."""
    return subprocess.run(
        [os.environ["MVM_CLI_BIN"], *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def sandbox_names(all: bool = True) -> List[str]:
    out = mvmctl("ls", "--json", *(["-a"] if all else []))
    assert out.returncode == 0, out.stderr
    return [s["name"] for s in json.loads(out.stdout or "[]")]


def qemu_running(sandbox_id: str) -> bool:
    """Whether a QEMU process of this sandbox id is alive."""
    needle = f"mvm-{sandbox_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu" in cmdline and needle in cmdline.split(b"\0"):
            return True
    return False


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def write_script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def run_script(
    path: Path, *args: str, extra_env: Optional[Dict[str, str]] = None
) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env=child_env(extra_env),
        stdin=subprocess.DEVNULL,
    )


_template: Optional[str] = None


def _boot(template: str) -> mvm.Sandbox:
    return mvm.Sandbox.create(template, workload_id="sdk-test", ttl="20m")


def bootable_template() -> str:
    """``MVM_SDK_TEST_TEMPLATE``, else ``python`` (the README's template).
    There is no fallback: if this mvmctl cannot boot it, the tests fail
    rather than quietly testing something else."""
    global _template
    if _template is None:
        _template = os.environ.get("MVM_SDK_TEST_TEMPLATE") or "python"
    return _template


def requires_cli() -> None:
    if not os.environ.get("MVM_CLI_BIN"):
        pytest.skip("no mvmctl: set MVM_CLI_BIN or run `make build`")


@pytest.fixture(scope="session")
def template() -> str:
    requires_cli()
    return bootable_template()


@pytest.fixture(scope="session")
def sandbox(template: str) -> Iterator[mvm.Sandbox]:
    """One sandbox shared by the tests that only need a running guest."""
    sb = _boot(template)
    try:
        yield sb
    finally:
        sb.destroy()
