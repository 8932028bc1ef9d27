"""Record mode (``MVM_SDK_MODE=record``): operations are written to
``MVM_SDK_OUT_PATH`` as JSON instead of booting anything.

The file is rewritten atomically after every operation, so it is complete
even when the script dies. Format (keys sorted, ``schema_version`` 1)::

    {"schema_version": 1,
     "sdk": "python",
     "workload_id": "tool",
     "create": {"template": "python", "build_dir": null, "name": null,
                "env": {"K": {"kind": "literal", "value": "v"}},
                "resources": {"cpu_cores": null, "memory_mb": null},
                "ttl_seconds": 1800, "network": null},
     "ops": [{"kind": "files_write", "path": "/app/main.py",
              "bytes_b64": "...", "mode": null},
             {"kind": "command_start", "argv": [...], "env": {}, "cwd": null},
             {"kind": "kill"}]}
"""

from __future__ import annotations

import os
import tempfile
import threading
import json
from typing import Any, Dict, List, Optional

from ._errors import ModeError

SCHEMA_VERSION = 1


def sdk_mode() -> str:
    mode = os.environ.get("MVM_SDK_MODE", "").strip().lower() or "live"
    if mode not in ("live", "record"):
        raise ModeError(
            f"MVM_SDK_MODE={mode!r}: expected 'live' (default) or 'record'"
        )
    return mode


def literal_env(env: Dict[str, str]) -> Dict[str, Dict[str, str]]:
    return {k: {"kind": "literal", "value": v} for k, v in env.items()}


class Recording:
    """One recorded sandbox; one per script (the v1 scope of compile)."""

    _active: Optional["Recording"] = None
    _lock = threading.Lock()

    def __init__(self, workload_id: str, create: Dict[str, Any]) -> None:
        self.workload_id: str = workload_id
        path = os.environ.get("MVM_SDK_OUT_PATH", "").strip()
        if not path:
            raise ModeError("MVM_SDK_MODE=record needs MVM_SDK_OUT_PATH (where the recording goes)")
        with Recording._lock:
            if Recording._active is not None:
                raise ModeError(
                    "record mode records one sandbox per script; "
                    f"{Recording._active.workload_id!r} is already recorded"
                )
            Recording._active = self
        self.path = path

        self.create = create
        self.ops: List[Dict[str, Any]] = []
        self._write()

    def add(self, op: Dict[str, Any]) -> None:
        with Recording._lock:
            self.ops.append(op)
            self._write()

    def document(self) -> Dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "sdk": "python",
            "workload_id": self.workload_id,
            "create": self.create,
            "ops": self.ops,
        }

    def _write(self) -> None:
        data = json.dumps(self.document(), sort_keys=True, indent=2) + "\n"
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".mvm-recording-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    @classmethod
    def _reset_for_tests(cls) -> None:
        with cls._lock:
            cls._active = None
