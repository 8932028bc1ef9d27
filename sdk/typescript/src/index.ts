// mvm-sdk: runtime SDK for mvm microVM sandboxes. Drives the mvmctl CLI
// ($MVM_CLI_BIN, else PATH) over subprocess + JSON.
//
//   await using sandbox = await Sandbox.create("python", { workloadId: "tool" });
//   await sandbox.files.write("/app/main.py", "print('hello')");
//   await sandbox.commands.start(["python", "/app/main.py"]);

export { Sandbox, Ports, type SandboxInfo, type SnapshotInfo, type CreateOptions, type PortForward } from "./sandbox.js";
export {
  Commands,
  CommandHandle,
  type CommandResult,
  type OutputChunk,
  type ProcessInfo,
  type RunOptions,
  type StartOptions,
} from "./commands.js";
export { Files, type EntryInfo, type WriteOptions } from "./files.js";
export {
  MvmError,
  CLIError,
  SandboxNotFound,
  SnapshotNotFound,
  SnapshotError,
  CommandTimeout,
  PolicyDenied,
  TransportError,
  FileNotFound,
  InvalidArgument,
  CLIInvalidArgument,
  Unsupported,
  ModeError,
} from "./errors.js";
export type { Command, TTL } from "./validate.js";
export { Secret, secret } from "./secrets.js";
export const VERSION = "0.1.0";
export {
  app, local_path, localPath, nix_packages, nixPackages, debian_packages, debianPackages, python_image, pythonImage,
  node_image, nodeImage, oci_image, ociImage, template, resources, network, entrypoint, entrypoint_function, entrypointFunction,
  hooks, workload, Workload, RemoteError, EXIT_RAISED, type AppOptions, type Decl, type EnvValue,
} from "./declare.js";
