// Typed errors of the mvm SDK. Every error the SDK throws is an MvmError;
// failures reported by mvmctl carry its message (without the "mvmctl: "
// prefix) and its exit code.

import type { CommandResult } from "./commands.js";

export interface MvmErrorOptions {
  exitCode?: number | null;
  argv?: string[] | null;
  stderr?: string;
}

export class MvmError extends Error {
  readonly exitCode: number | null;
  readonly argv: string[] | null;
  readonly stderr: string;

  constructor(message: string, opts: MvmErrorOptions = {}) {
    super(message);
    this.name = new.target.name;
    this.exitCode = opts.exitCode ?? null;
    this.argv = opts.argv ?? null;
    this.stderr = opts.stderr ?? "";
  }
}

/**
 * mvmctl failed; `message` and `exitCode` are the CLI's. A CLIInvalidArgument
 * (an InvalidArgument the CLI raised) is a CLIError too: `instanceof
 * CLIError` says so, as Python's multiple inheritance does.
 */
export class CLIError extends MvmError {
  static override [Symbol.hasInstance](value: unknown): boolean {
    if (Function.prototype[Symbol.hasInstance].call(this, value)) return true;
    return this === CLIError && value instanceof CLIInvalidArgument;
  }
}

/** No sandbox of that name exists (CLI exit 3). */
export class SandboxNotFound extends CLIError {}

/** No snapshot of that tag exists (`mvmctl snapshot ls` lists them). */
export class SnapshotNotFound extends CLIError {}

/**
 * A snapshot (or a sandbox paused to disk) cannot be restored: it failed
 * verification (tampered or truncated: refused, never restored) or it does
 * not match this host (another QEMU, kernel or image).
 */
export class SnapshotError extends CLIError {}

/**
 * A command ran past its timeout (CLI exit 124). `result` holds what the
 * command printed before it was killed (commands.run), or null
 * (CommandHandle.wait, where the process keeps running).
 */
export class CommandTimeout extends CLIError {
  readonly result: CommandResult | null;
  constructor(message: string, opts: MvmErrorOptions & { result?: CommandResult | null } = {}) {
    super(message, { exitCode: 124, ...opts });
    this.result = opts.result ?? null;
  }
}

/** The sandbox's policy refused the operation (CLI exit 126: sealed image, network rule, ...). */
export class PolicyDenied extends CLIError {}

/**
 * The SDK could not talk to the sandbox: mvmctl missing or hung, output
 * not as the contract says, or mvm itself failed (CLI exit 125).
 */
export class TransportError extends MvmError {}

/** A guest path does not exist (CLI exit 4). */
export class FileNotFound extends CLIError {
  readonly code = "ENOENT";
}

/**
 * An argument was rejected: on the host before anything was sent, or by
 * mvmctl itself (CLIInvalidArgument).
 */
export class InvalidArgument extends MvmError {}

/**
 * mvmctl refused an argument (error kind `invalid_argument`, exit 2): an
 * InvalidArgument that is also `instanceof CLIError`, with the CLI's
 * message, exitCode, argv and stderr.
 */
export class CLIInvalidArgument extends InvalidArgument {}

/** The installed mvmctl lacks the command or flag, or record mode cannot do it. */
export class Unsupported extends MvmError {}

/** MVM_SDK_MODE / MVM_SDK_OUT_PATH are invalid or inconsistent. */
export class ModeError extends MvmError {}
