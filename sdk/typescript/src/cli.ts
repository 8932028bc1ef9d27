// Subprocess transport to mvmctl (JSON on stdout, "mvmctl: ..." on stderr,
// documented exit codes). Every call is bounded by a timeout.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { accessSync, constants, statSync } from "node:fs";
import * as path from "node:path";
import {
  CLIError,
  CLIInvalidArgument,
  CommandTimeout,
  FileNotFound,
  MvmError,
  PolicyDenied,
  SandboxNotFound,
  SnapshotError,
  SnapshotNotFound,
  TransportError,
  Unsupported,
  type MvmErrorOptions,
} from "./errors.js";

export const EXIT_USAGE = 2;
export const EXIT_NOT_FOUND = 3;
export const EXIT_PATH_NOT_FOUND = 4;
export const EXIT_TIMEOUT = 124;
export const EXIT_MVM = 125;
export const EXIT_CANNOT_EXEC = 126;
export const EXIT_NO_COMMAND = 127;

/** Bound of one CLI call not bounded by a command timeout. MVM_SDK_CALL_TIMEOUT (s) overrides. */
export const DEFAULT_CALL_TIMEOUT_MS = 120_000;
/** Bound of `up` (a first use of a Debian template builds it). MVM_SDK_CREATE_TIMEOUT (s) overrides. */
export const DEFAULT_CREATE_TIMEOUT_MS = 900_000;

const UNSUPPORTED = /unknown (command|flag|shorthand flag)/;

function envSeconds(name: string, fallbackMs: number): number {
  const raw = (process.env[name] ?? "").trim();
  const n = Number(raw);
  return raw && Number.isFinite(n) && n > 0 ? n * 1000 : fallbackMs;
}

export const callTimeoutMs = (): number => envSeconds("MVM_SDK_CALL_TIMEOUT", DEFAULT_CALL_TIMEOUT_MS);
export const createTimeoutMs = (): number => envSeconds("MVM_SDK_CREATE_TIMEOUT", DEFAULT_CREATE_TIMEOUT_MS);

function isExecutable(p: string): boolean {
  try {
    if (!statSync(p).isFile()) return false;
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** $MVM_CLI_BIN if set, else mvmctl on PATH. */
export function resolveBinary(): string {
  const explicit = (process.env.MVM_CLI_BIN ?? "").trim();
  if (explicit) {
    if (isExecutable(explicit)) return explicit;
    throw new TransportError(`MVM_CLI_BIN=${JSON.stringify(explicit)} is not an executable file`);
  }
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, "mvmctl");
    if (isExecutable(candidate)) return candidate;
  }
  throw new TransportError("mvmctl not found: set MVM_CLI_BIN to its path or put it on PATH");
}

/** The CLI's error message: its last "mvmctl: ..." line without the prefix. */
export function cliMessage(stderr: string): string {
  const lines = stderr.split("\n").map((l) => l.trim()).filter(Boolean);
  for (let i = lines.length - 1; i >= 0; i--) {
    if (lines[i]!.startsWith("mvmctl: ")) return lines[i]!.slice("mvmctl: ".length);
  }
  return lines.at(-1) ?? "";
}

/** The error object a failed `--json` call prints on stdout, or null. */
export function jsonError(stdout: Buffer | undefined): { kind: string; reason: string; message: string } | null {
  if (!stdout || stdout.length === 0) return null;
  let obj: unknown;
  try {
    obj = JSON.parse(stdout.toString("utf8"));
  } catch {
    return null;
  }
  const err = obj && typeof obj === "object" ? (obj as { error?: unknown }).error : undefined;
  if (!err || typeof err !== "object") return null;
  const e = err as { kind?: unknown; reason?: unknown; message?: unknown };
  if (typeof e.kind !== "string") return null;
  return {
    kind: e.kind,
    reason: typeof e.reason === "string" ? e.reason : "",
    message: typeof e.message === "string" ? e.message : "",
  };
}

type ErrorClass = new (message: string, opts: MvmErrorOptions) => MvmError;

/**
 * The typed error of an error kind of the CLI's one error model (docs/cli.md,
 * exit codes); null leaves the choice to the exit code.
 */
function errorOfKind(kind: string, reason: string): ErrorClass | null {
  if (reason === "snapshot" || reason === "integrity") {
    if (kind === "not_found") return SnapshotNotFound;
    if (kind === "refused" || kind === "failed_precondition") return SnapshotError;
  }
  switch (kind) {
    case "not_found":
      if (reason === "sandbox") return SandboxNotFound;
      if (reason === "path" || reason === "process") return FileNotFound;
      return CLIError;
    case "timeout":
      return reason === "command" ? CommandTimeout : TransportError;
    case "refused":
      return reason === "unsafe" ? CLIError : PolicyDenied;
    case "permission_denied":
      return reason === "command" ? PolicyDenied : null;
    case "invalid_argument":
      return CLIInvalidArgument;
    case "transport":
    case "guest":
    case "unavailable":
      return TransportError;
    case "failed_precondition":
      return reason === "not_running" ? TransportError : null;
  }
  return null;
}

/**
 * Map a failed CLI call to the SDK's typed errors: by the error kind of its
 * `--json` error object when there is one, else by exit code.
 */
export function errorFor(argv: string[], code: number, stderr: string, what = "", stdout?: Buffer): MvmError {
  let msg = cliMessage(stderr) || (what ? `${what}: mvmctl exited with code ${code}` : `mvmctl exited with code ${code}`);
  const opts: MvmErrorOptions = { exitCode: code, argv, stderr };
  const failure = jsonError(stdout);
  if (failure) msg = failure.message || msg;
  // An older mvmctl without this command or flag (kind invalid_argument).
  if (code === EXIT_USAGE && UNSUPPORTED.test(msg)) return new Unsupported(msg, opts);
  if (failure) {
    const typed = errorOfKind(failure.kind, failure.reason);
    if (typed) return new typed(msg, opts);
  }
  switch (code) {
    case EXIT_NOT_FOUND:
      return new SandboxNotFound(msg, opts);
    case EXIT_PATH_NOT_FOUND:
      return new FileNotFound(msg, opts);
    case EXIT_TIMEOUT:
      return new CommandTimeout(msg, opts);
    case EXIT_MVM:
      return new TransportError(msg, opts);
    case EXIT_CANNOT_EXEC:
      return new PolicyDenied(msg, opts);
  }
  if (UNSUPPORTED.test(msg)) return new Unsupported(msg, opts);
  if (code === EXIT_USAGE) return new CLIInvalidArgument(msg, opts);
  return new CLIError(msg, opts);
}

export interface Completed {
  argv: string[];
  code: number;
  stdout: Buffer;
  stderr: string;
}

export function parseJSON(done: Completed): unknown {
  try {
    return JSON.parse(done.stdout.toString("utf8"));
  } catch (e) {
    throw new TransportError(`mvmctl ${done.argv.slice(1, 3).join(" ")}: output is not JSON: ${(e as Error).message}`, {
      argv: done.argv,
    });
  }
}

export interface CallOptions {
  input?: Buffer;
  /** null = unbounded */
  timeoutMs?: number | null;
  ok?: (code: number) => boolean;
  what?: string;
}

/** Children running right now; killed if this process is interrupted. */
export const liveChildren = new Set<ChildProcess>();

export function killChild(child: ChildProcess): void {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  try {
    process.kill(-child.pid, "SIGKILL"); // its own process group
  } catch {
    try {
      child.kill("SIGKILL");
    } catch {
      /* gone */
    }
  }
}

export class CLI {
  private bin: string | null;

  constructor(binary?: string) {
    this.bin = binary ?? null;
  }

  get binary(): string {
    if (this.bin === null) this.bin = resolveBinary();
    return this.bin;
  }

  /**
   * Run one CLI call; reject with the mapped error unless its exit code is
   * accepted by `ok` (default: 0). The child gets its own process group so a
   * terminal's Ctrl-C reaches only this process, whose handler cleans up.
   */
  call(args: string[], opts: CallOptions = {}): Promise<Completed> {
    const argv = [this.binary, ...args];
    const limit = opts.timeoutMs === undefined ? callTimeoutMs() : opts.timeoutMs;
    const ok = opts.ok ?? ((c: number) => c === 0);
    return new Promise<Completed>((resolve, reject) => {
      let child: ChildProcess;
      try {
        child = spawn(argv[0]!, argv.slice(1), {
          stdio: [opts.input !== undefined ? "pipe" : "ignore", "pipe", "pipe"],
          detached: true,
        });
      } catch (e) {
        reject(new TransportError(`cannot run ${argv[0]}: ${(e as Error).message}`, { argv }));
        return;
      }
      liveChildren.add(child);
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let timedOut = false;
      const timer =
        limit === null
          ? null
          : setTimeout(() => {
              timedOut = true;
              killChild(child);
            }, limit);
      child.stdout!.on("data", (b: Buffer) => out.push(b));
      child.stderr!.on("data", (b: Buffer) => err.push(b));
      child.on("error", (e) => {
        if (timer) clearTimeout(timer);
        liveChildren.delete(child);
        reject(new TransportError(`cannot run ${argv[0]}: ${e.message}`, { argv }));
      });
      child.on("close", (code, signal) => {
        if (timer) clearTimeout(timer);
        liveChildren.delete(child);
        if (timedOut) {
          reject(new TransportError(`mvmctl ${args.slice(0, 2).join(" ")}: no answer within ${limit! / 1000}s`, { argv }));
          return;
        }
        const stderr = Buffer.concat(err).toString("utf8");
        const rc = code ?? 128 + (signal ? 9 : 0);
        const done: Completed = { argv, code: rc, stdout: Buffer.concat(out), stderr };
        if (!ok(rc)) reject(errorFor(argv, rc, stderr, opts.what, done.stdout));
        else resolve(done);
      });
      if (opts.input !== undefined) {
        child.stdin!.on("error", () => {
          /* the CLI may exit before reading everything; its exit code tells */
        });
        child.stdin!.end(opts.input);
      }
    });
  }

  /** A long-running child (proc wait) with piped stdout/stderr. */
  follow(args: string[]): ChildProcess {
    const argv = [this.binary, ...args];
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"], detached: true });
    liveChildren.add(child);
    child.on("close", () => liveChildren.delete(child));
    child.on("error", () => liveChildren.delete(child));
    return child;
  }

  /** Synchronous call, for exit-time cleanup only. */
  callSync(args: string[], timeoutMs: number): number {
    const res = spawnSync(this.binary, args, { stdio: "ignore", timeout: timeoutMs });
    return res.status ?? -1;
  }
}
