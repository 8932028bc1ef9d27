"""Tests that boot nothing: validation, error mapping (against a stand-in
CLI that replays an exit code and message), record mode, CLI discovery."""

from __future__ import annotations

import datetime
import json
import os
import stat
from pathlib import Path
from typing import Dict, List, Type

import pytest

import mvm
from mvm import _cli
from mvm import _validate as v
from mvm._record import Recording

from conftest import run_script, write_script


# -- validation ---------------------------------------------------------------

@pytest.mark.parametrize(
    "path",
    ["relative/x", "", "/a/../b", "/a/./b", "//a", "/a/", "/a\x00b", "..", "/a/..", "x" * 10],
)
def test_bad_guest_paths_are_refused_on_the_host(path: str) -> None:
    with pytest.raises(mvm.InvalidArgument):
        v.guest_path(path)


@pytest.mark.parametrize("path", ["/", "/app/main.py", "/a b/c", "/tmp/.hidden", "/x..y"])
def test_good_guest_paths(path: str) -> None:
    assert v.guest_path(path) == path


def test_invalid_argument_is_a_value_error() -> None:
    assert issubclass(mvm.InvalidArgument, ValueError)
    assert issubclass(mvm.InvalidArgument, mvm.MvmError)


def test_argv_and_shell_strings() -> None:
    assert v.argv_of("echo hi") == ["sh", "-c", "echo hi"]
    assert v.argv_of(("ls", "-l")) == ["ls", "-l"]
    for bad in ([], [""], ["a", 1], "", "  ", b"ls", ["a\x00"]):
        with pytest.raises(mvm.InvalidArgument):
            v.argv_of(bad)  # type: ignore[arg-type]


def test_env_validation() -> None:
    assert v.env_of({"A_1": "x y"}) == {"A_1": "x y"}
    for bad in ({"1A": "x"}, {"A-B": "x"}, {"A": "x\x00"}, {"A": 1}):
        with pytest.raises(mvm.InvalidArgument):
            v.env_of(bad)  # type: ignore[arg-type]
    assert v.env_flags({"B": "2", "A": "1"}) == ["-e", "A=1", "-e", "B=2"]


def test_ttl_forms() -> None:
    assert v.ttl_seconds(None) == 1800
    assert v.ttl_seconds(0) == 0
    assert v.ttl_seconds("30s") == 30
    assert v.ttl_seconds("5m") == 300
    assert v.ttl_seconds(" 1h ") == 3600
    assert v.ttl_seconds("3600") == 3600
    assert v.ttl_seconds(datetime.timedelta(minutes=2)) == 120
    for bad in ("5x", "-1", "1.5h", -3, True):
        with pytest.raises(mvm.InvalidArgument):
            v.ttl_seconds(bad)


def test_workload_ids_and_names() -> None:
    assert v.workload_id(None, "python") == "python"
    assert v.workload_id(None, "./my_App/") == "my-app"
    assert v.workload_id(None, "3.11") == "w-3-11"
    assert v.workload_id("tool", "python") == "tool"
    with pytest.raises(mvm.InvalidArgument):
        v.workload_id("Tool!", "python")
    with pytest.raises(mvm.InvalidArgument):
        v.sandbox_name("Bad Name")
    assert v.duration_flag(1.5) == "1500ms"


# -- error mapping through a stand-in CLI -------------------------------------

@pytest.fixture
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable replaying FAKE_CODE / FAKE_STDERR / FAKE_STDOUT and
    logging its argv to FAKE_LOG."""
    script = tmp_path / "mvmctl"
    script.write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$*" >> "$FAKE_LOG"\n'
        'printf "%s" "$FAKE_STDOUT"\n'
        'if [ -n "$FAKE_STDERR" ]; then printf "mvmctl: %s\\n" "$FAKE_STDERR" >&2; fi\n'
        'exit "${FAKE_CODE:-0}"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("MVM_CLI_BIN", str(script))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("FAKE_STDOUT", "")
    monkeypatch.setenv("FAKE_STDERR", "")
    return script


def fake_sandbox() -> mvm.Sandbox:
    info = mvm.SandboxInfo(name="fake", id="0", state="running")
    return mvm.Sandbox(info, cli=_cli.CLI())


def calls(tmp_path: Path) -> List[str]:
    return (tmp_path / "log").read_text().splitlines()


@pytest.mark.parametrize(
    "code,message,err",
    [
        (3, "sandbox not found: no sandbox named \"fake\"", mvm.SandboxNotFound),
        (4, "fs stat /x: /x: no such file or directory", mvm.FileNotFound),
        (124, "timed out", mvm.CommandTimeout),
        (125, "boot failed: deadline passed", mvm.TransportError),
        (126, "refused: sealed image", mvm.PolicyDenied),
        (7, "fs rm /a: directory not empty", mvm.CLIError),
        (2, "unknown flag: --json (see `mvmctl fs stat --help`)", mvm.Unsupported),
        (2, "accepts 1 arg(s), received 2 (see `mvmctl fs stat --help`)", mvm.CLIInvalidArgument),
        (1, "something else", mvm.CLIError),
    ],
)
def test_exit_codes_map_to_typed_errors(
    fake_cli: Path, monkeypatch: pytest.MonkeyPatch, code: int, message: str, err: Type[mvm.MvmError]
) -> None:
    monkeypatch.setenv("FAKE_CODE", str(code))
    monkeypatch.setenv("FAKE_STDERR", message)
    with pytest.raises(err) as info:
        fake_sandbox().files.stat("/x")
    assert info.value.exit_code == code
    assert info.value.message == message
    assert isinstance(info.value, mvm.MvmError)


@pytest.mark.parametrize(
    "code,kind,reason,err",
    [
        (3, "not_found", "sandbox", mvm.SandboxNotFound),
        (4, "not_found", "path", mvm.FileNotFound),
        (4, "not_found", "process", mvm.FileNotFound),
        (124, "timeout", "command", mvm.CommandTimeout),
        (125, "timeout", "", mvm.TransportError),
        (125, "transport", "", mvm.TransportError),
        (125, "guest", "", mvm.TransportError),
        (125, "failed_precondition", "not_running", mvm.TransportError),
        (126, "refused", "sealed", mvm.PolicyDenied),
        (9, "refused", "unsafe", mvm.CLIError),
        (7, "failed_precondition", "not_empty", mvm.CLIError),
        (1, "failed_precondition", "no_stdin", mvm.CLIError),
        (3, "not_found", "snapshot", mvm.SnapshotNotFound),
        (126, "refused", "integrity", mvm.SnapshotError),
        (1, "failed_precondition", "snapshot", mvm.SnapshotError),
        (2, "invalid_argument", "", mvm.CLIInvalidArgument),
    ],
)
def test_json_error_kinds_map_to_typed_errors(
    fake_cli: Path, monkeypatch: pytest.MonkeyPatch, code: int, kind: str, reason: str, err: Type[mvm.MvmError]
) -> None:
    """With --json the CLI prints its error object; the kind decides."""
    monkeypatch.setenv("FAKE_CODE", str(code))
    monkeypatch.setenv("FAKE_STDERR", "stderr text")
    error: Dict[str, object] = {"kind": kind, "message": "the message", "exit_code": code}
    if reason:
        error["reason"] = reason
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"schema_version": 1, "error": error}))
    with pytest.raises(err) as info:
        fake_sandbox().files.stat("/x")
    assert type(info.value) is err
    assert info.value.exit_code == code and info.value.message == "the message"


def test_cli_invalid_argument_is_invalid_argument(fake_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI refusing an argument (kind invalid_argument, exit 2) raises the
    same InvalidArgument as the SDK's own host-side checks, still catchable
    as a CLIError and carrying the CLI's message, exit code, argv and stderr."""
    message = '--memory "-5": invalid size "-5": want a number of MiB or a size like 512M or 1G'
    monkeypatch.setenv("FAKE_CODE", "2")
    monkeypatch.setenv("FAKE_STDERR", message)
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"schema_version": 1, "error": {
        "kind": "invalid_argument", "message": message, "exit_code": 2}}))
    with pytest.raises(mvm.InvalidArgument) as info:
        fake_sandbox().files.stat("/x")
    err = info.value
    assert isinstance(err, mvm.CLIError) and isinstance(err, ValueError) and isinstance(err, mvm.CLIInvalidArgument)
    assert not isinstance(err, (mvm.SandboxNotFound, mvm.PolicyDenied, mvm.TransportError))
    assert err.message == message and err.exit_code == 2
    assert err.argv is not None and err.argv[1:3] == ["fs", "stat"] and "--json" in err.argv
    assert err.stderr.strip() == "mvmctl: " + message
    # The SDK's own refusal is an InvalidArgument too, but not a CLIError:
    # nothing ran.
    with pytest.raises(mvm.InvalidArgument) as host:
        fake_sandbox().files.stat("relative")
    assert not isinstance(host.value, mvm.CLIError) and host.value.exit_code is None


@pytest.mark.parametrize("stdout", [True, False])
def test_cli_unknown_flag_stays_unsupported(
    fake_cli: Path, monkeypatch: pytest.MonkeyPatch, stdout: bool
) -> None:
    """An older mvmctl without a flag reports it as invalid_argument (exit 2):
    that is Unsupported, with or without the --json error object."""
    message = "unknown flag: --json (see `mvmctl fs stat --help`)"
    monkeypatch.setenv("FAKE_CODE", "2")
    monkeypatch.setenv("FAKE_STDERR", message)
    if stdout:
        monkeypatch.setenv("FAKE_STDOUT", json.dumps({"schema_version": 1, "error": {
            "kind": "invalid_argument", "message": message, "exit_code": 2}}))
    with pytest.raises(mvm.Unsupported) as info:
        fake_sandbox().files.stat("/x")
    assert not isinstance(info.value, mvm.InvalidArgument) and info.value.exit_code == 2


def test_exec_missing_sandbox_is_not_a_command_result(fake_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kind not_found with reason sandbox is the sandbox, not the command."""
    monkeypatch.setenv("FAKE_CODE", "3")
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"schema_version": 1, "sandbox": "fake", "exit_code": 3,
        "error": {"kind": "not_found", "reason": "sandbox", "message": "sandbox not found", "exit_code": 3}}))
    with pytest.raises(mvm.SandboxNotFound):
        fake_sandbox().commands.run(["ls"])


def test_exec_missing_command_is_a_result(fake_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CODE", "127")
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"schema_version": 1, "sandbox": "fake", "exit_code": 127,
        "error": {"kind": "not_found", "reason": "command", "message": "nope: command not found in the sandbox",
                  "exit_code": 127}}))
    r = fake_sandbox().commands.run(["nope"])
    assert r.exit_code == 127 and "command not found" in r.stderr


def test_exec_result_carries_the_receipt_id(fake_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"schema_version": 1, "exit_code": 0, "stdout": "", "stderr": "",
        "audit_id": "7:abc", "receipt_id": "9b2f3c1e-1d2a-4c5b-8e7f-0a1b2c3d4e5f"}))
    r = fake_sandbox().commands.run(["true"])
    assert r.receipt_id == "9b2f3c1e-1d2a-4c5b-8e7f-0a1b2c3d4e5f"


def test_exec_policy_refusal_is_policy_denied(fake_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CODE", "126")
    monkeypatch.setenv("FAKE_STDERR", "exec refused: the image is sealed")
    with pytest.raises(mvm.PolicyDenied) as info:
        fake_sandbox().commands.run(["ls"])
    assert "sealed" in info.value.message


def test_exec_not_executable_is_a_result(fake_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CODE", "126")
    monkeypatch.setenv("FAKE_STDERR", "/x: permission denied in the sandbox")
    r = fake_sandbox().commands.run(["/x"])
    assert r.exit_code == 126 and "permission denied" in r.stderr


def test_exec_flags_and_json_result(fake_cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CODE", "3")  # the guest command's own 3: JSON wins
    monkeypatch.setenv(
        "FAKE_STDOUT",
        json.dumps({"exit_code": 3, "stdout_base64": "AAH/", "stdout_bytes": 3, "stderr": "e",
                    "stderr_bytes": 9, "stderr_truncated": True, "duration_ms": 5,
                    "timed_out": False, "audit_id": "7:abc"}),
    )
    r = fake_sandbox().commands.run(
        ["cat"], env={"B": "2", "A": "1"}, cwd="/w", stdin="x", timeout=2.5, max_output_bytes=10
    )
    assert (r.exit_code, r.stdout_raw, r.stderr, r.truncated, r.audit_id) == (3, b"\x00\x01\xff", "e", True, "7:abc")
    assert r.stderr_size == 9 and not r.ok
    assert calls(tmp_path)[-1] == (
        "exec fake --json -e A=1 -e B=2 -w /w --timeout 2500ms --max-output 10 -i -- cat"
    )


def test_create_refresh_passes_up_refresh(fake_cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "mvm.toml").write_text('image = "registry.example/app:1"\n')
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"name": "sdk-refresh", "id": "1", "state": "running"}))
    # detach(): nothing to bring down at exit, the CLI is a stand-in
    mvm.Sandbox.create(str(app), name="sdk-refresh", ttl=0, refresh=True).detach()
    assert calls(tmp_path)[-1] == f"up {app} --name sdk-refresh --json --ttl 0s --refresh"
    mvm.Sandbox.create(str(app), name="sdk-refresh", ttl=0).detach()
    assert "--refresh" not in calls(tmp_path)[-1]
    with pytest.raises(mvm.InvalidArgument, match="refresh"):
        mvm.Sandbox.create(from_snapshot="x", refresh=True)


def test_garbage_output_is_a_transport_error(fake_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STDOUT", "not json")
    with pytest.raises(mvm.TransportError):
        fake_sandbox().files.stat("/x")


def test_missing_cli_is_a_transport_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MVM_CLI_BIN", str(tmp_path / "nope"))
    with pytest.raises(mvm.TransportError, match="MVM_CLI_BIN"):
        mvm.Sandbox.list()
    monkeypatch.delenv("MVM_CLI_BIN")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(mvm.TransportError, match="PATH"):
        mvm.Sandbox.list()


def test_cli_found_on_path(fake_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MVM_CLI_BIN")
    monkeypatch.setenv("PATH", str(fake_cli.parent) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("FAKE_STDOUT", "[]")
    assert mvm.Sandbox.list() == []


def test_hung_cli_is_bounded(fake_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cli.write_text("#!/bin/sh\nexec sleep 30\n")
    monkeypatch.setenv("MVM_SDK_CALL_TIMEOUT", "0.5")
    with pytest.raises(mvm.TransportError, match="no answer"):
        fake_sandbox().files.stat("/x")


def test_forward_reports_missing_cli_support(fake_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CODE", "1")
    monkeypatch.setenv("FAKE_STDERR", 'unknown command "forward" for "mvmctl"')
    with pytest.raises(mvm.Unsupported, match="mvmctl forward"):
        fake_sandbox().ports.forward(8080)


def test_forward_parses_binding(fake_cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FAKE_STDOUT",
        '[{"guest_port":8080,"host_addr":"127.0.0.1","host_port":18080,"proto":"tcp"}]',
    )
    pf = fake_sandbox().ports.forward(8080, host_port=18080)
    assert (pf.host, pf.host_port, pf.guest_port, pf.url) == (
        "127.0.0.1", 18080, 8080, "http://127.0.0.1:18080")
    assert calls(tmp_path)[-1:] == ["forward fake -p 18080:8080 --json"]


def test_network_and_ports_flags(fake_cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"name": "n3", "id": "x", "state": "running"}))
    mvm.Sandbox.create("minimal", name="n3", network=["pypi.org", "api.example.com:8443"],
                       ports=["18080:80"]).detach()
    assert calls(tmp_path)[-1].endswith(
        "--allow pypi.org --allow api.example.com:8443 -p 18080:80")
    mvm.Sandbox.create("minimal", name="n3", network="dev", ports=[8000]).detach()
    last = calls(tmp_path)[-1]
    assert "--network dev" in last and last.endswith(":8000")
    for bad in (["bad host!"], ):
        with pytest.raises(mvm.InvalidArgument):
            mvm.Sandbox.create("minimal", network=bad)
    with pytest.raises(mvm.InvalidArgument):
        mvm.Sandbox.create("minimal", ports=["x:y"])


def test_create_flags(fake_cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"name": "n1", "id": "abc", "state": "running"}))
    sb = mvm.Sandbox.create("python", name="n1", cpus=2, memory_mb=1024, env={"K": "v"}, ttl="5m")
    assert calls(tmp_path)[-1] == (
        "up --image python --name n1 --json --ttl 300s --cpus 2 --memory 1024M -e K=v"
    )
    sb.detach()  # nothing to clean up behind a stand-in
    d = tmp_path / "app"
    d.mkdir()
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"name": "n2", "id": "def", "state": "running"}))
    sb2 = mvm.Sandbox.create(str(d), name="n2")
    assert calls(tmp_path)[-1].startswith(f"up {d} --name n2 --json")
    assert sb2.workload_id == "app"
    sb2.destroy()
    assert calls(tmp_path)[-1] == "down n2"
    sb2.destroy()  # idempotent: no second call
    assert calls(tmp_path)[-1] == "down n2"
    with pytest.raises(mvm.SandboxNotFound):
        sb2.commands.run("true")


def test_create_passes_oci_references(fake_cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OCI image reference is an image name, not a build directory."""
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"name": "o1", "id": "abc", "state": "running"}))
    for ref in ("python:3.12-slim", "ghcr.io/org/app@sha256:" + "ab" * 32):
        sb = mvm.Sandbox.create(ref, name="o1")
        assert calls(tmp_path)[-1].startswith(f"up --image {ref} --name o1 --json")
        sb.detach()


# -- record mode --------------------------------------------------------------

def test_record_mode_writes_the_recording_without_booting(tmp_path: Path) -> None:
    out = tmp_path / "rec.json"
    script = write_script(tmp_path, "rec.py", """
        import mvm
        with mvm.Sandbox.create("python", workload_id="tool", env={"MODE": "x"}, ttl="5m") as sandbox:
            sandbox.files.write("/app/main.py", "print('hello')")
            r = sandbox.commands.run("echo hi", timeout=5)
            assert r.recorded and r.exit_code == 0
            sandbox.files.mkdir("/data")
            sandbox.commands.start(["python", "/app/main.py"])
        """)
    res = run_script(script, extra_env={
        "MVM_SDK_MODE": "record", "MVM_SDK_OUT_PATH": str(out), "MVM_CLI_BIN": "/nonexistent"})
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 1 and doc["workload_id"] == "tool"
    assert doc["create"]["template"] == "python"
    assert doc["create"]["env"] == {"MODE": {"kind": "literal", "value": "x"}}
    assert doc["create"]["ttl_seconds"] == 300
    kinds = [op["kind"] for op in doc["ops"]]
    assert kinds == ["files_write", "command_run", "files_mkdir", "command_start", "kill"]
    assert doc["ops"][0]["bytes_b64"] == "cHJpbnQoJ2hlbGxvJyk="
    assert doc["ops"][3]["argv"] == ["python", "/app/main.py"]


def test_record_mode_refuses_reads_and_bad_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_SDK_MODE", "record")
    monkeypatch.setenv("MVM_SDK_OUT_PATH", str(tmp_path / "r.json"))
    Recording._reset_for_tests()
    try:
        sb = mvm.Sandbox.create("minimal")
        with pytest.raises(mvm.Unsupported):
            sb.files.read("/etc/hostname")
        with pytest.raises(mvm.ModeError):
            mvm.Sandbox.create("minimal")  # one sandbox per recording
        sb.destroy()
    finally:
        Recording._reset_for_tests()
    monkeypatch.setenv("MVM_SDK_MODE", "plan")
    with pytest.raises(mvm.ModeError):
        mvm.Sandbox.create("minimal")
    monkeypatch.setenv("MVM_SDK_MODE", "record")
    monkeypatch.delenv("MVM_SDK_OUT_PATH")
    with pytest.raises(mvm.ModeError, match="MVM_SDK_OUT_PATH"):
        mvm.Sandbox.create("minimal")


# -- snapshots, pause and resume (argv and errors against the stand-in CLI) ---

SANDBOX_JSON = json.dumps({"name": "fake", "id": "0", "state": "running"})
SNAPSHOT_JSON = json.dumps({"tag": "t1", "created": "2026-11-30T01:00:00Z", "source": "fake", "image": "minimal",
                            "image_digest": "sha256:ab", "cpus": 1, "memory_mib": 256, "bytes": 1234,
                            "holds_secrets": False})


def test_snapshot_pause_resume_argv(fake_cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = fake_sandbox()
    monkeypatch.setenv("FAKE_STDOUT", SNAPSHOT_JSON)
    snap = sb.snapshot("t1")
    assert (snap.tag, snap.bytes, snap.memory_mib, snap.holds_secrets) == ("t1", 1234, 256, False)
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"schema_version": 1, "snapshots": [json.loads(SNAPSHOT_JSON)]}))
    assert [s.tag for s in mvm.Sandbox.list_snapshots()] == ["t1"]
    monkeypatch.setenv("FAKE_STDOUT", SANDBOX_JSON.replace("running", "paused"))
    assert sb.pause(in_memory=True) == "fake" and sb.info.state == "paused"
    assert sb.pause() == "fake"
    monkeypatch.setenv("FAKE_STDOUT", SANDBOX_JSON)
    assert sb.resume() is sb and sb.info.state == "running"
    other = mvm.Sandbox.resume("fake")
    assert isinstance(other, mvm.Sandbox) and other is not sb and other.info.state == "running"
    monkeypatch.setenv("FAKE_STDOUT", "")
    mvm.Sandbox.remove_snapshot("t1")
    monkeypatch.setenv("FAKE_STDOUT", SANDBOX_JSON)
    clone = mvm.Sandbox.create(from_snapshot="t1", name="c1", ttl="5m")
    clone.detach()
    assert calls(tmp_path) == [
        "snapshot save fake t1 --json",
        "snapshot ls --json",
        "pause fake --json --in-memory",
        "pause fake --json",
        "resume fake --json",
        "resume fake --json",
        "snapshot rm t1",
        "up --from-snapshot t1 --name c1 --json --ttl 300s",
    ]


def test_snapshot_arguments_are_checked_on_the_host(fake_cli: Path, tmp_path: Path) -> None:
    for bad in ("", "Tag", "-t", "a/b", "a b", "x" * 64):
        with pytest.raises(mvm.InvalidArgument):
            fake_sandbox().snapshot(bad)
        with pytest.raises(mvm.InvalidArgument):
            mvm.Sandbox.create(from_snapshot=bad)
        with pytest.raises(mvm.InvalidArgument):
            mvm.Sandbox.remove_snapshot(bad)
    for kw in ({"cpus": 2}, {"memory_mb": 512}, {"env": {"A": "b"}}, {"network": ["x.org"]},
               {"ports": [80]}, {"mounts": ["./a:/a"]}, {"allow_rw_mount": True}):
        with pytest.raises(mvm.InvalidArgument, match="from_snapshot cannot be combined"):
            mvm.Sandbox.create(from_snapshot="t1", **kw)
    with pytest.raises(mvm.InvalidArgument, match="template"):
        mvm.Sandbox.create("minimal", from_snapshot="t1")
    with pytest.raises(mvm.InvalidArgument):
        mvm.Sandbox.resume("Bad Name")
    assert not (tmp_path / "log").exists()  # nothing reached the CLI


def test_snapshot_not_found_is_typed(fake_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CODE", "3")
    monkeypatch.setenv("FAKE_STDERR", 'snapshot "nope": snapshot not found')
    with pytest.raises(mvm.SnapshotNotFound):  # exit 3 of `snapshot rm` (no --json) is the snapshot
        mvm.Sandbox.remove_snapshot("nope")
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"error": {"kind": "not_found", "reason": "snapshot",
                                                            "message": "no snapshot nope"}}))
    with pytest.raises(mvm.SnapshotNotFound):
        mvm.Sandbox.create(from_snapshot="nope")
    monkeypatch.setenv("FAKE_CODE", "126")
    monkeypatch.setenv("FAKE_STDOUT", json.dumps({"error": {"kind": "refused", "reason": "integrity",
                                                            "message": "failed verification"}}))
    with pytest.raises(mvm.SnapshotError):
        mvm.Sandbox.resume("fake")
