"""Tests against one real sandbox (the session fixture): commands, files,
streaming, logs, pause/resume and error types."""

from __future__ import annotations

import os
import re
import threading
import time
from typing import List, Tuple

import pytest

import mvm

from conftest import mvmctl, sandbox_names

pytestmark = pytest.mark.live


def test_run_returns_output_and_audit_id(sandbox: mvm.Sandbox) -> None:
    r = sandbox.commands.run(["sh", "-c", "echo out; echo err >&2"])
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out, r.truncated) == (0, "out\n", "err\n", False, False)
    assert r.ok and r.duration_ms >= 0
    # every exec is recorded: the audit entry and the signed receipt's id
    # come through (receipt_id was always None before exec --json named it)
    assert isinstance(r.audit_id, str) and re.fullmatch(r"\d+:[0-9a-f]{16}", r.audit_id), r.audit_id
    assert isinstance(r.receipt_id, str) and re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", r.receipt_id
    ), r.receipt_id


def test_non_zero_exit_is_a_result(sandbox: mvm.Sandbox) -> None:
    r = sandbox.commands.run("echo partial; exit 3")
    assert r.exit_code == 3 and r.stdout == "partial\n" and not r.ok


def test_command_not_found_is_exit_127(sandbox: mvm.Sandbox) -> None:
    r = sandbox.commands.run(["no-such-command-xyz"])
    assert r.exit_code == 127 and "not found" in r.stderr


def test_timeout_raises_with_partial_result(sandbox: mvm.Sandbox) -> None:
    t0 = time.monotonic()
    with pytest.raises(mvm.CommandTimeout) as info:
        sandbox.commands.run("echo started; sleep 30", timeout=1.5)
    assert time.monotonic() - t0 < 15
    assert info.value.result is not None and info.value.result.timed_out
    assert info.value.result.stdout == "started\n"
    r = sandbox.commands.run(["sleep", "5"], timeout=0.5, raise_on_timeout=False)
    assert r.timed_out and r.exit_code == 124


def test_env_cwd_stdin_and_bounded_output(sandbox: mvm.Sandbox) -> None:
    r = sandbox.commands.run('echo "$GREETING"; pwd', env={"GREETING": "hi there"}, cwd="/tmp")
    assert r.stdout == "hi there\n/tmp\n"
    r = sandbox.commands.run(["cat"], stdin=b"\x00\x01binary\xff")
    assert r.stdout_raw == b"\x00\x01binary\xff"
    r = sandbox.commands.run("head -c 100000 /dev/zero | tr '\\0' a", max_output_bytes=1000)
    assert r.stdout_truncated and r.truncated and len(r.stdout) == 1000 and r.stdout_size == 100000


def test_large_binary_file_round_trip(sandbox: mvm.Sandbox) -> None:
    data = os.urandom(8 * 1024 * 1024) + bytes(range(256))
    info = sandbox.files.write("/tmp/big/blob.bin", data)
    assert info.size == len(data)
    assert sandbox.files.read_bytes("/tmp/big/blob.bin") == data
    r = sandbox.commands.run(["sh", "-c", "wc -c < /tmp/big/blob.bin"])
    assert r.stdout.strip() == str(len(data))
    sandbox.files.remove("/tmp/big", recursive=True)


def test_text_files_list_remove_exists_mkdir(sandbox: mvm.Sandbox) -> None:
    f = sandbox.files
    f.mkdir("/srv/t/sub")
    f.write("/srv/t/a.txt", "héllo\n")
    f.write("/srv/t/b.sh", "#!/bin/sh\necho ran\n", mode=0o755)
    assert f.read("/srv/t/a.txt") == "héllo\n"
    entries = {e.name: e for e in f.list("/srv/t")}
    assert set(entries) == {"a.txt", "b.sh", "sub"}
    assert entries["sub"].is_dir and entries["a.txt"].is_file and entries["a.txt"].size == 7
    assert entries["b.sh"].mode == "0755"
    assert sandbox.commands.run(["/srv/t/b.sh"]).stdout == "ran\n"
    f.write("/srv/t/a.txt", "more\n", append=True)
    assert f.read("/srv/t/a.txt") == "héllo\nmore\n"
    f.rename("/srv/t/a.txt", "/srv/t/c.txt")
    assert f.exists("/srv/t/c.txt") and not f.exists("/srv/t/a.txt")
    f.remove("/srv/t/c.txt")
    assert not f.exists("/srv/t/c.txt")
    with pytest.raises(mvm.FileNotFound):
        f.remove("/srv/t/c.txt")
    f.remove("/srv/t/c.txt", missing_ok=True)
    with pytest.raises(mvm.CLIError) as info:  # a non-empty directory
        f.remove("/srv/t")
    assert info.value.exit_code == 7
    f.remove("/srv/t", recursive=True)
    assert not f.exists("/srv/t")


def test_file_errors(sandbox: mvm.Sandbox) -> None:
    with pytest.raises(mvm.FileNotFound) as info:
        sandbox.files.read("/no/such/file")
    assert isinstance(info.value, FileNotFoundError) and info.value.exit_code == 4
    with pytest.raises(mvm.InvalidArgument):
        sandbox.files.read("/etc/../etc/passwd")
    with pytest.raises(mvm.InvalidArgument):
        sandbox.files.write("relative.txt", "x")


def test_streaming_output_of_a_long_running_process(sandbox: mvm.Sandbox) -> None:
    seen: List[Tuple[float, str]] = []
    errs: List[str] = []
    h = sandbox.commands.start(
        "for i in 1 2 3 4; do echo tick$i; sleep 0.7; done; echo done >&2; exit 5",
        on_stdout=lambda s: seen.append((time.monotonic(), s)),
        on_stderr=errs.append,
    )
    lines = []
    arrival = []
    for line in h.iter_lines(timeout=30):
        lines.append(line)
        arrival.append(time.monotonic())
    assert lines == ["tick1", "tick2", "tick3", "tick4"]
    # streamed: the first line arrived well before the last one
    assert arrival[-1] - arrival[0] > 1.0
    r = h.wait(timeout=30)
    assert r.exit_code == 5 and r.stdout == "tick1\ntick2\ntick3\ntick4\n" and r.stderr == "done\n"
    assert "".join(s for _, s in seen) == r.stdout and "".join(errs) == "done\n"
    assert seen[-1][0] - seen[0][0] > 1.0
    assert h.exit_code == 5 and not h.is_running()


def test_start_stdin_kill_and_wait_timeout(sandbox: mvm.Sandbox) -> None:
    h = sandbox.commands.start(["cat"], stdin=True)
    h.send_stdin("line one\n")
    h.send_stdin(b"line two\n", close=True)
    assert h.wait(timeout=30).stdout == "line one\nline two\n"

    h = sandbox.commands.start(["tr", "a-z", "A-Z"], stdin="shout\n")
    assert h.wait(timeout=30).stdout == "SHOUT\n"

    h = sandbox.commands.start(["sleep", "300"])
    assert h.is_running()
    assert any(p.handle == h.handle and p.state == "running" for p in sandbox.commands.list())
    with pytest.raises(mvm.CommandTimeout):
        h.wait(timeout=0.5)
    h.kill()
    assert h.wait(timeout=30).exit_code == 137
    h.kill()  # killing an exited process is fine


def test_concurrent_runs_share_the_sandbox(sandbox: mvm.Sandbox) -> None:
    results: List[str] = []

    def work(i: int) -> None:
        results.append(sandbox.commands.run(["echo", str(i)]).stdout.strip())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == ["0", "1", "2", "3"]


def test_logs_list_connect_and_info(sandbox: mvm.Sandbox) -> None:
    assert isinstance(sandbox.logs(), str)
    assert len(sandbox.logs(lines=1).splitlines()) <= 1
    assert sandbox.name in [s.name for s in mvm.Sandbox.list()]
    assert sandbox.name in sandbox_names()
    other = mvm.Sandbox.connect(sandbox.name)
    assert other.id == sandbox.id and other.info.state == "running"
    assert other.commands.run("echo via-connect").stdout == "via-connect\n"
    assert sandbox.is_running()
    assert sandbox.stats().get("mem_total_bytes", 1) > 0


def test_pause_in_memory_and_resume(sandbox: mvm.Sandbox) -> None:
    """in_memory=True: the vCPUs freeze, ownership stays (pause to disk is
    in test_lifecycle.py)."""
    assert sandbox.pause(in_memory=True) == sandbox.name
    try:
        assert sandbox.refresh().state == "paused"
        with pytest.raises(mvm.MvmError):
            sandbox.commands.run("true", timeout=5)
    finally:
        sandbox.resume()
    assert sandbox.refresh().state == "running"
    assert sandbox.commands.run("echo back").stdout == "back\n"


def test_unknown_sandbox_errors() -> None:
    with pytest.raises(mvm.SandboxNotFound):
        mvm.Sandbox.connect("no-such-sandbox-xyz")
    ghost = mvm.Sandbox(mvm.SandboxInfo(name="no-such-sandbox-xyz", id="", state="running"))
    with pytest.raises(mvm.SandboxNotFound) as info:
        ghost.commands.run("true")
    assert info.value.exit_code == 3 and "no-such-sandbox-xyz" in info.value.message
    with pytest.raises(mvm.SandboxNotFound):
        ghost.files.read("/etc/hostname")
    ghost.destroy()  # destroying what is gone is not an error
    out = mvmctl("down", "no-such-sandbox-xyz")
    assert out.returncode == 3
