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
