"""Lifecycle tests, each in its own Python process with its own sandbox:
the README snippet, cleanup on an exception and on SIGINT (no QEMU left
behind), detach in one process then connect from another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

import mvm

from conftest import (
    CHILD_TIMEOUT,
    child_env,
    mvmctl,
    qemu_running,
    requires_cli,
    run_script,
    sandbox_names,
    write_script,
)

pytestmark = pytest.mark.live

SNIPPET = """\
import mvm
with mvm.Sandbox.create("python", workload_id="tool") as sandbox:
    sandbox.files.write("/app/main.py", "print('hello')")
    sandbox.commands.start(["python", "/app/main.py"])
"""


def wait_gone(name: str, sandbox_id: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if name not in sandbox_names() and not qemu_running(sandbox_id):
            return
        time.sleep(0.2)
    assert name not in sandbox_names(), f"{name} still listed"
    assert not qemu_running(sandbox_id), f"qemu of {name} still running"


def test_readme_snippet_as_written(tmp_path: Path) -> None:
    requires_cli()
    before = set(sandbox_names())
    script = write_script(tmp_path, "snippet.py", SNIPPET)
    res = run_script(script)
    assert res.returncode == 0, res.stderr
    assert set(sandbox_names()) <= before  # destroyed when the block ended


def test_snippet_shape_and_cleanup_on_exception(tmp_path: Path, template: str) -> None:
    """No `with` block: the atexit hook destroys the sandbox when an
    uncaught exception ends the script."""
    script = write_script(tmp_path, "boom.py", """
        import json, sys
        import mvm
        sandbox = mvm.Sandbox.create(sys.argv[1], workload_id="tool")
        print(json.dumps({"name": sandbox.name, "id": sandbox.id}), flush=True)
        sandbox.files.write("/app/main.sh", "echo hello")
        h = sandbox.commands.start(["sh", "/app/main.sh"])
        assert h.wait(timeout=60).stdout == "hello\\n"
        raise RuntimeError("boom")
        """)
    res = run_script(script, template)
    assert res.returncode == 1 and "RuntimeError: boom" in res.stderr, res.stderr
    info = json.loads(res.stdout.splitlines()[0])
    wait_gone(info["name"], info["id"])


def test_cleanup_on_sigint(tmp_path: Path, template: str) -> None:
    script = write_script(tmp_path, "sigint.py", """
        import json, sys
        import mvm
        with mvm.Sandbox.create(sys.argv[1], workload_id="sigint") as sandbox:
            print(json.dumps({"name": sandbox.name, "id": sandbox.id}), flush=True)
            sandbox.commands.run(["sleep", "120"], timeout=150)
        """)
    proc = subprocess.Popen(
        [sys.executable, str(script), template],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(), stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        info = json.loads(line)
        assert info["name"] in sandbox_names() and qemu_running(info["id"])
        time.sleep(1.0)  # let the long command start in the guest
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err
    wait_gone(info["name"], info["id"])


def test_detach_then_connect_from_a_second_process(tmp_path: Path, template: str) -> None:
    first = write_script(tmp_path, "first.py", """
        import sys
        import mvm
        with mvm.Sandbox.create(sys.argv[1], workload_id="keep", ttl="10m") as sandbox:
            sandbox.files.write("/work/state.txt", "from the first process")
            h = sandbox.commands.start(["sh", "-c", "echo background; sleep 300"])
            print(sandbox.detach(), h.handle, flush=True)
        """)
    res = run_script(first, template)
    assert res.returncode == 0, res.stderr
    name, handle = res.stdout.split()
    try:
        assert name in sandbox_names(all=False)
        second = write_script(tmp_path, "second.py", """
            import sys
            import mvm
            sandbox = mvm.Sandbox.connect(sys.argv[1])
            print(sandbox.files.read("/work/state.txt"))
            h = sandbox.commands.connect(sys.argv[2])
            assert h.is_running()
            h.kill()
            assert h.wait(timeout=30).stdout == "background\\n"
            sandbox.destroy()
            """)
        res2 = run_script(second, name, handle)
        assert res2.returncode == 0, res2.stderr
        assert res2.stdout == "from the first process\n"
        assert name not in sandbox_names()
    finally:
        subprocess.run([os.environ["MVM_CLI_BIN"], "down", name], capture_output=True, timeout=60)


def test_ports_forward_reaches_a_guest_server(template: str) -> None:
    """A sandbox with a network device (published port at create), a
    server in the guest, a second port forwarded at run time."""
    import mvm
    import urllib.request

    with mvm.Sandbox.create(template, workload_id="ports", ports=[8000]) as sb:
        published = sb.ports.list()
        assert [p.guest_port for p in published] == [8000]
        sb.files.write("/tmp/www/index.html", "hello from the guest\n")
        server = sb.commands.start(
            "cd /tmp/www && if command -v python3 >/dev/null; then exec python3 -m http.server 8001; "
            "else exec busybox httpd -f -p 8001 -h /tmp/www; fi"
        )
        pf = sb.ports.forward(8001)
        assert pf.guest_port == 8001 and pf.host == "127.0.0.1" and pf.host_port > 0
        assert {p.guest_port for p in sb.ports.list()} == {8000, 8001}
        body = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(pf.url + "/index.html", timeout=5) as resp:
                    body = resp.read()
                break
            except OSError:
                time.sleep(0.3)
        assert body == b"hello from the guest\n"
        server.kill()


def test_create_from_a_build_dir(tmp_path: Path) -> None:
    """A directory holding mvm.toml is built, then booted (`up DIR`)."""
    import mvm

    requires_cli()
    app = tmp_path / "app"
    app.mkdir()
    (app / "mvm.toml").write_text('template = "minimal"\n[env]\nGREETING = "from the manifest"\n')
    (app / "data.txt").write_text("shipped with the image\n")
    with mvm.Sandbox.create(str(app), ttl="5m") as sb:
        assert sb.workload_id == "app"
        assert sb.files.read("/work/data.txt") == "shipped with the image\n"
        assert sb.commands.run('echo "$GREETING"').stdout == "from the manifest\n"


def test_snapshot_clone_pause_to_disk_and_resume(template: str) -> None:
    """snapshot(tag) → create(from_snapshot=tag) gives a clone with the
    source's files and its own identity; pause() saves to disk and releases
    the sandbox; Sandbox.resume(name) brings it back where it was; missing
    snapshots and clashing arguments are typed errors."""
    tag = f"sdk-{os.getpid()}"
    src = mvm.Sandbox.create(template, workload_id="sdk-snap", ttl="20m")
    clone: Optional[mvm.Sandbox] = None
    resumed: Optional[mvm.Sandbox] = None
    try:
        src.files.write("/root/mark", "before-snapshot\n")
        info = src.snapshot(tag)
        assert info.tag == tag and info.bytes > 0 and not info.holds_secrets
        assert tag in [s.tag for s in mvm.Sandbox.list_snapshots()]

        clone = mvm.Sandbox.create(from_snapshot=tag, ttl="10m")
        assert clone.name != src.name and clone.info.state == "running"
        assert clone.files.read("/root/mark") == "before-snapshot\n"
        ids = [sb.commands.run("hostname; cat /etc/machine-id").stdout for sb in (src, clone)]
        assert ids[1].split("\n")[0] == clone.name and ids[0] != ids[1], ids

        # pause to disk: released from this process, state "paused"
        src.commands.run("echo during > /root/during")
        name = src.pause()
        assert name == src.name and src.refresh().state == "paused"
        assert src.info.raw.get("paused_to") == "disk", src.info.raw
        assert src.name in sandbox_names()
        resumed = mvm.Sandbox.resume(name)
        assert resumed.info.state == "running"
        assert resumed.commands.run("cat /root/mark /root/during").stdout == "before-snapshot\nduring\n"

        with pytest.raises(mvm.SnapshotNotFound):
            mvm.Sandbox.create(from_snapshot="no-such-snapshot-xyz")
        with pytest.raises(mvm.InvalidArgument):
            mvm.Sandbox.create(template, from_snapshot=tag)
        mvm.Sandbox.remove_snapshot(tag)
        with pytest.raises(mvm.SnapshotNotFound):
            mvm.Sandbox.remove_snapshot(tag)
    finally:
        for sb in (clone, resumed, src):
            if sb is not None:
                sb.destroy()
        mvmctl("snapshot", "rm", tag)
