"""The declaration helpers: inert at run time, read statically by
``mvmctl compile``, and ``mvm.workload(NAME).invoke`` through ``mvmctl
invoke`` against a real microVM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mvm

from conftest import mvmctl


@mvm.app(
    name="local",
    source=mvm.local_path("."),
    image=mvm.python_image("3.13"),
    network=mvm.network(mode="deny"),
    env={"K": "v", "T": mvm.secret("token")},
)
def local_fn(x: int) -> int:
    return x + 1


def test_app_returns_the_function_unchanged() -> None:
    assert local_fn(1) == 2
    assert local_fn.__name__ == "local_fn"
    assert mvm.nix_packages(["python313"]) == {"kind": "nix_packages", "packages": ["python313"]}
    assert mvm.secret("token") == mvm.Secret("token")  # one helper for declarations and Sandbox.create
    assert mvm.entrypoint_function(warm=True)["warm"] is True
    assert mvm.oci_image("python:3.12-slim") == {"kind": "oci_image", "ref": "python:3.12-slim"}


def test_this_file_compiles_statically() -> None:
    out = mvmctl("compile", __file__, "--json")
    assert out.returncode == 0, out.stderr
    ir = json.loads(out.stdout)["ir"]
    assert ir["name"] == "local" and ir["entrypoints"][0]["function"] == "local_fn"
    assert ir["env"]["T"] == {"kind": "secret", "name": "token"}


def test_invoke_needs_one_argument_style() -> None:
    with pytest.raises(mvm.InvalidArgument):
        mvm.workload("x").invoke(1, b=2)


@pytest.mark.live
def test_workload_invoke_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "calc.py").write_text(
        "import mvm\n\n"
        "@mvm.app(name=\"calc\", image=mvm.python_image(\"3.13\"),\n"
        "         entrypoint=mvm.entrypoint_function(warm=True))\n"
        "def add(a: int, b: int = 0) -> int:\n"
        "    if a < 0:\n"
        "        raise ValueError('negative')\n"
        "    return a + b\n"
    )
    up = mvmctl("up", str(tmp_path / "calc.py"), timeout=900)
    assert up.returncode == 0, up.stderr
    try:
        calc = mvm.workload("calc")
        assert calc.invoke(2, 3) == 5
        assert calc.invoke(a=4) == 4
        with pytest.raises(mvm.RemoteError) as e:
            calc.invoke(-1)
        assert e.value.type == "ValueError" and e.value.remote_message == "negative"
        assert "calc.py" in e.value.traceback
        with pytest.raises(mvm.SandboxNotFound):
            mvm.workload("no-such-workload").invoke()
    finally:
        mvmctl("down", "calc")
