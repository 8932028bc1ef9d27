"""Host directories and secrets through the SDK: one real sandbox."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import mvm

from conftest import requires_cli

pytestmark = pytest.mark.live

VALUE = "sdk-secret-0a1b2c3d4e5f"


def test_secret_refs_are_names_only() -> None:
    assert mvm._secrets.secret_flags({"OPENAI_API_KEY": mvm.secret("openai")}) == ["--secret", "openai:OPENAI_API_KEY"]
    with pytest.raises(mvm.InvalidArgument):
        mvm._secrets.secret_flags({"OPENAI_API_KEY": "sk-raw-value"})  # type: ignore[dict-item]
    with pytest.raises(mvm.InvalidArgument):
        mvm.secret("../x")
    with pytest.raises(mvm.InvalidArgument):
        mvm._secrets.mount_flags("/a:/b")  # a str is refused, though it is a Sequence[str]


def test_mounts_and_secrets(tmp_path: Path) -> None:
    requires_cli()
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello.txt").write_text("from the host\n")
    subprocess.run([os.environ["MVM_CLI_BIN"], "secret", "set", "sdk-key"], input=VALUE + "\n",
                   text=True, check=True, capture_output=True, timeout=60)
    with mvm.Sandbox.create("minimal", workload_id="attach", mounts=[f"{share}:/work"],
                            secrets={"API_KEY": mvm.secret("sdk-key")}) as sb:
        r = sb.commands.run('cat /work/hello.txt; echo "key=$API_KEY"; touch /work/x || echo ro')
        assert r.stdout == "from the host\nkey=[secret:sdk-key]\nro\n", r
        assert VALUE not in repr(r)
    assert not (share / "x").exists()


def _manifest_app(tmp_path: Path, port: int) -> Path:
    """A build directory whose mvm.toml asks for a host directory, a stored
    secret and egress: three requests, each needing its own consent."""
    app = tmp_path / "app"
    (app / "data").mkdir(parents=True)
    (app / "data" / "hello.txt").write_text("from the manifest's directory\n")
    (app / "mvm.toml").write_text(
        'template = "minimal"\n'
        f'allow = ["ok.test:{port}"]\n'
        '[files]\n"/work" = ""\n'
        '[secrets]\nAPI_KEY = "sdk-mkey"\n'
        '[[mount]]\nhost = "data"\nguest = "/data"\n'
    )
    return app


def test_manifest_requests_need_consent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build directory's [[mount]], [secrets] and allow are refused through
    the SDK (PolicyDenied, the CLI's exit 126 and message naming what was
    asked and the flag that grants it, nothing created) until the matching
    allow_manifest_* option is given; with all three the sandbox boots with
    them and its signed plan records the consents."""
    requires_cli()
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 ok.test\n")
    monkeypatch.setenv("MVM_NET_HOSTS", str(hosts))
    app = _manifest_app(tmp_path, 8080)
    subprocess.run([os.environ["MVM_CLI_BIN"], "secret", "set", "sdk-mkey"], input=VALUE + "\n",
                   text=True, check=True, capture_output=True, timeout=60)
    name = "sdk-manifest-consent"
    # (mounts, secrets) granted -> what the refusal must name
    refused = [
        ((False, False), ["--allow-manifest-mounts", f"{app / 'data'}:/data:ro"]),
        ((True, False), ["--allow-manifest-secrets", "sdk-mkey:API_KEY"]),
        ((True, True), ["--allow-manifest-network", "ok.test:8080"]),
    ]
    for grants, wants in refused:
        with pytest.raises(mvm.PolicyDenied) as ei:
            mvm.Sandbox.create(str(app), name=name, ttl="5m", allow_manifest_mounts=grants[0],
                               allow_manifest_secrets=grants[1])
        assert ei.value.exit_code == 126, (grants, ei.value)
        for want in wants:
            assert want in ei.value.message, (grants, want, ei.value.message)
        assert VALUE not in str(ei.value)
        assert name not in [s.name for s in mvm.Sandbox.list(all=True)], grants

    with mvm.Sandbox.create(str(app), name=name, ttl="5m", allow_manifest_mounts=True,
                            allow_manifest_secrets=True, allow_manifest_network=True) as sb:
        r = sb.commands.run('cat /data/hello.txt; echo "key=$API_KEY"')
        assert r.stdout == "from the manifest's directory\nkey=[secret:sdk-mkey]\n", r
        plan = (Path(os.environ["MVM_STATE_DIR"]) / "sb" / sb.info.id / "plan.json").read_text()
        assert '"allow_manifest_mounts":true' in plan and '"allow_manifest_secrets":true' in plan, plan
        assert plan.count('"origin":"manifest"') == 2 and '"allow":["ok.test:8080"]' in plan, plan
        assert VALUE not in plan

    with pytest.raises(mvm.InvalidArgument):
        mvm.Sandbox.create(from_snapshot="x", allow_manifest_mounts=True)


def test_refresh_is_refused_off_a_build_directory() -> None:
    """refresh=True reaches `mvmctl up --refresh`, which applies only to a
    build directory: on a template name it is refused before anything is
    created. The CLI's refusal (kind invalid_argument, exit 2) is an
    InvalidArgument, as the SDK's own checks raise, and still a CLIError."""
    requires_cli()
    name = "sdk-refresh-refused"
    with pytest.raises(mvm.InvalidArgument) as ei:
        mvm.Sandbox.create("minimal", name=name, ttl="5m", refresh=True)
    assert isinstance(ei.value, mvm.CLIInvalidArgument) and isinstance(ei.value, mvm.CLIError), ei.value
    assert ei.value.exit_code == 2 and "image pull" in ei.value.message, ei.value
    assert ei.value.argv is not None and "--refresh" in ei.value.argv and "image pull" in ei.value.stderr
    assert name not in [s.name for s in mvm.Sandbox.list(all=True)]
