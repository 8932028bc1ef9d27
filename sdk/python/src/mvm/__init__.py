"""mvm — runtime SDK for mvm microVM sandboxes.

    import mvm
    with mvm.Sandbox.create("python", workload_id="tool") as sandbox:
        sandbox.files.write("/app/main.py", "print('hello')")
        sandbox.commands.start(["python", "/app/main.py"])

The SDK drives the ``mvmctl`` CLI (``$MVM_CLI_BIN``, else ``PATH``) over
subprocess + JSON. ``MVM_SDK_MODE=record`` records operations to
``$MVM_SDK_OUT_PATH`` instead of booting anything.
"""

from ._commands import (
    CommandHandle,
    CommandResult,
    Commands,
    OutputChunk,
    ProcessInfo,
)
from ._errors import (
    CLIError,
    CLIInvalidArgument,
    CommandTimeout,
    FileNotFound,
    InvalidArgument,
    ModeError,
    MvmError,
    PolicyDenied,
    SandboxNotFound,
    SnapshotError,
    SnapshotNotFound,
    TransportError,
    Unsupported,
)
from ._declare import (
    RemoteError,
    Workload,
    app,
    debian_packages,
    entrypoint,
    entrypoint_function,
    hooks,
    local_path,
    network,
    nix_packages,
    node_image,
    oci_image,
    python_image,
    resources,
    template,
    workload,
)
from ._files import EntryInfo, Files
from ._secrets import Secret, secret
from ._sandbox import PortForward, Ports, Sandbox, SandboxInfo, SnapshotInfo

__version__ = "0.1.0"

__all__ = [
    "Sandbox",
    "Secret",
    "secret",
    "SandboxInfo",
    "SnapshotInfo",
    "Commands",
    "CommandResult",
    "CommandHandle",
    "OutputChunk",
    "ProcessInfo",
    "Files",
    "EntryInfo",
    "Ports",
    "PortForward",
    "MvmError",
    "CLIError",
    "SandboxNotFound",
    "SnapshotNotFound",
    "SnapshotError",
    "CommandTimeout",
    "PolicyDenied",
    "TransportError",
    "FileNotFound",
    "InvalidArgument",
    "CLIInvalidArgument",
    "Unsupported",
    "ModeError",
    "app",
    "local_path",
    "nix_packages",
    "debian_packages",
    "python_image",
    "node_image",
    "template",
    "oci_image",
    "resources",
    "network",
    "secret",
    "entrypoint",
    "entrypoint_function",
    "hooks",
    "workload",
    "Workload",
    "RemoteError",
    "__version__",
]
