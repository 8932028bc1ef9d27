"""The SDK bounds SPECIFICATION.md lists: CLI call and create deadlines."""

import pytest

from mvm import _cli


def test_call_and_create_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MVM_SDK_CALL_TIMEOUT", raising=False)
    monkeypatch.delenv("MVM_SDK_CREATE_TIMEOUT", raising=False)
    assert _cli.call_timeout() == 120
    assert _cli.create_timeout() == 900
    monkeypatch.setenv("MVM_SDK_CALL_TIMEOUT", "7")
    monkeypatch.setenv("MVM_SDK_CREATE_TIMEOUT", "0")  # not positive: the default
    assert _cli.call_timeout() == 7
    assert _cli.create_timeout() == 900


def test_command_timeout_default() -> None:
    import inspect

    from mvm import _commands

    assert _commands.DEFAULT_RUN_TIMEOUT == 60
    params = [
        p
        for name, fn in inspect.getmembers(_commands, inspect.isclass)
        for m, f in inspect.getmembers(fn, inspect.isfunction)
        if m == "run"
        for p in inspect.signature(f).parameters.values()
        if p.name == "timeout"
    ]
    assert params and all(p.default == 60 for p in params)
