// sandbox.commands: run to completion (mvmctl exec --json) or start in the
// background (mvmctl proc start + proc wait for streaming).

import type { ChildProcess } from "node:child_process";
import { StringDecoder } from "node:string_decoder";
import * as cli from "./cli.js";
import { CommandTimeout, InvalidArgument, MvmError, TransportError, Unsupported } from "./errors.js";
import * as v from "./validate.js";
import type { Sandbox } from "./sandbox.js";

/** Default bound of commands.run, as in E2B. */
export const DEFAULT_RUN_TIMEOUT_MS = 60_000;
/** Default number of bytes of each stream kept in a result. */
export const DEFAULT_MAX_OUTPUT = 4 * 1024 * 1024;

/** The outcome of a command. A non-zero exitCode is a result, not an error. */
export interface CommandResult {
  argv: string[];
  exitCode: number;
  /** Text (invalid UTF-8 replaced); the raw bytes are in stdoutRaw. */
  stdout: string;
  stderr: string;
  stdoutRaw: Buffer;
  stderrRaw: Buffer;
  durationMs: number;
  timedOut: boolean;
  /** Either stream was cut at maxOutputBytes. */
  truncated: boolean;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** Bytes the command wrote (may exceed what is kept). */
  stdoutSize: number;
  stderrSize: number;
  /** The audit chain entry of this exec (from mvmctl), when the CLI reports one. */
  auditId: string | null;
  receiptId: string | null;
  /** The background-process handle (commands.start). */
  handle: string | null;
  /** True in record mode, where nothing ran. */
  recorded: boolean;
  /** exitCode === 0 && !timedOut */
  ok: boolean;
}

export function makeResult(argv: string[], fields: Partial<CommandResult> = {}): CommandResult {
  const r: CommandResult = {
    argv,
    exitCode: 0,
    stdout: "",
    stderr: "",
    stdoutRaw: Buffer.alloc(0),
    stderrRaw: Buffer.alloc(0),
    durationMs: 0,
    timedOut: false,
    truncated: false,
    stdoutTruncated: false,
    stderrTruncated: false,
    stdoutSize: 0,
    stderrSize: 0,
    auditId: null,
    receiptId: null,
    handle: null,
    recorded: false,
    ok: true,
    ...fields,
  };
  r.truncated = r.stdoutTruncated || r.stderrTruncated;
  r.ok = r.exitCode === 0 && !r.timedOut;
  return r;
}

function streamOf(obj: Record<string, unknown>, name: string): Buffer {
  const b64 = obj[`${name}_base64`];
  if (typeof b64 === "string") return Buffer.from(b64, "base64");
  const text = obj[name];
  return typeof text === "string" ? Buffer.from(text, "utf8") : Buffer.alloc(0);
}

export function resultFromJSON(argv: string[], obj: unknown): CommandResult {
  if (!obj || typeof obj !== "object" || typeof (obj as Record<string, unknown>).exit_code !== "number") {
    throw new TransportError("exec --json: result has no integer exit_code");
  }
  const o = obj as Record<string, unknown>;
  const out = streamOf(o, "stdout");
  const err = streamOf(o, "stderr");
  const str = (x: unknown): string | null => (typeof x === "string" && x ? x : null);
  return makeResult(argv, {
    exitCode: o.exit_code as number,
    stdout: out.toString("utf8"),
    stderr: err.toString("utf8"),
    stdoutRaw: out,
    stderrRaw: err,
    durationMs: Number(o.duration_ms ?? 0),
    timedOut: Boolean(o.timed_out),
    stdoutTruncated: Boolean(o.stdout_truncated),
    stderrTruncated: Boolean(o.stderr_truncated),
    stdoutSize: typeof o.stdout_bytes === "number" ? o.stdout_bytes : out.length,
    stderrSize: typeof o.stderr_bytes === "number" ? o.stderr_bytes : err.length,
    auditId: str(o.audit_id),
    receiptId: str(o.receipt_id),
  });
}

export interface RunOptions {
  /** Kill the command after this long (default 60 000; null = no limit). */
  timeoutMs?: number | null;
  env?: Record<string, string>;
  cwd?: string;
  stdin?: string | Uint8Array;
  maxOutputBytes?: number;
  /** Default true: a timeout throws CommandTimeout (with .result). */
  raiseOnTimeout?: boolean;
}

export interface StartOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** true keeps stdin open for sendStdin(); a string/bytes is sent and stdin closed. */
  stdin?: boolean | string | Uint8Array;
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  maxOutputBytes?: number;
}

export interface OutputChunk {
  stream: "stdout" | "stderr";
  data: Buffer;
  readonly text: string;
}

function chunk(stream: "stdout" | "stderr", data: Buffer): OutputChunk {
  return {
    stream,
    data,
    get text() {
      return data.toString("utf8");
    },
  };
}

/** A background process as `mvmctl proc ls --json` describes it. */
export interface ProcessInfo {
  handle: string;
  pid: number;
  argv: string[];
  state: string;
  exitCode: number | null;
  signal: number | null;
  started: string | null;
  exited: string | null;
  stdinOpen: boolean;
  raw: Record<string, unknown>;
}

function processInfo(o: Record<string, unknown>): ProcessInfo {
  return {
    handle: String(o.handle ?? ""),
    pid: Number(o.pid ?? 0),
    argv: Array.isArray(o.argv) ? o.argv.map(String) : [],
    state: String(o.state ?? ""),
    exitCode: typeof o.exit_code === "number" ? o.exit_code : null,
    signal: typeof o.signal === "number" ? o.signal : null,
    started: typeof o.started === "string" ? o.started : null,
    exited: typeof o.exited === "string" ? o.exited : null,
    stdinOpen: Boolean(o.stdin_open),
    raw: o,
  };
}

export class Commands {
  constructor(private readonly sb: Sandbox) {}

  /**
   * Run `cmd` (an argv array, or a shell string run with `sh -c`) to
   * completion. A non-zero exit is a result; a timeout throws CommandTimeout
   * with the partial result in `.result` unless raiseOnTimeout is false.
   */
  async run(cmd: v.Command, opts: RunOptions = {}): Promise<CommandResult> {
    const argv = v.argvOf(cmd);
    const env = v.envOf(opts.env);
    const cwd = opts.cwd !== undefined ? v.guestPath(opts.cwd, "cwd") : undefined;
    const limit = opts.timeoutMs === null ? undefined : v.positiveMs(opts.timeoutMs ?? DEFAULT_RUN_TIMEOUT_MS);
    const cap = v.positiveInt(opts.maxOutputBytes, "maxOutputBytes");
    const input = opts.stdin !== undefined ? v.toBuffer(opts.stdin, "stdin") : undefined;
    const rec = this.sb._recording;
    if (rec) {
      rec.add({
        kind: "command_run",
        argv,
        env,
        cwd: cwd ?? null,
        timeout_seconds: limit !== undefined ? limit / 1000 : null,
        stdin_b64: input ? input.toString("base64") : null,
      });
      return makeResult(argv, { recorded: true });
    }
    const args = ["exec", this.sb._liveName(), "--json", ...v.envFlags(env)];
    if (cwd !== undefined) args.push("-w", cwd);
    if (limit !== undefined) args.push("--timeout", `${Math.max(1, Math.round(limit))}ms`);
    if (cap !== undefined) args.push("--max-output", String(cap));
    if (input !== undefined) args.push("-i");
    args.push("--", ...argv);
    const done = await this.sb._cli.call(args, {
      input,
      timeoutMs: limit === undefined ? null : limit + cli.callTimeoutMs(),
      ok: () => true,
      what: "exec",
    });
    let parsed: unknown = null;
    if (done.stdout.toString("utf8").trim()) parsed = cli.parseJSON(done);
    const failure =
      parsed && typeof parsed === "object" && "error" in parsed
        ? ((parsed as { error?: { kind?: string; reason?: string; message?: string } }).error ?? null)
        : null;
    if (parsed && typeof parsed === "object" && "exit_code" in parsed && !failure) {
      const result = resultFromJSON(argv, parsed);
      if (result.timedOut && opts.raiseOnTimeout !== false) {
        throw new CommandTimeout(`${argv[0]}: timed out after ${(limit ?? 0) / 1000}s`, {
          argv: done.argv,
          stderr: done.stderr,
          result,
        });
      }
      return result;
    }
    // An error object (or nothing): the CLI could not run the command.
    const kind = failure?.kind ?? "";
    const reason = failure?.reason ?? "";
    const msg = failure?.message || cli.cliMessage(done.stderr);
    if (
      ((kind === "not_found" || kind === "permission_denied") && reason === "command") ||
      (!kind && done.code === cli.EXIT_NO_COMMAND) ||
      (!kind && done.code === cli.EXIT_CANNOT_EXEC && msg.includes("permission denied in the sandbox"))
    ) {
      const err = Buffer.from(msg + "\n");
      return makeResult(argv, { exitCode: done.code, stderr: err.toString(), stderrRaw: err, stderrSize: err.length });
    }
    if (done.code === 0) throw new TransportError("exec --json: no result on stdout", { argv: done.argv });
    throw cli.errorFor(done.argv, done.code, done.stderr, "exec", done.stdout);
  }

  /** Start `cmd` in the background; output streams to the callbacks and the handle's iterator. */
  async start(cmd: v.Command, opts: StartOptions = {}): Promise<CommandHandle> {
    const argv = v.argvOf(cmd);
    const env = v.envOf(opts.env);
    const cwd = opts.cwd !== undefined ? v.guestPath(opts.cwd, "cwd") : undefined;
    const cap = v.positiveInt(opts.maxOutputBytes, "maxOutputBytes") ?? DEFAULT_MAX_OUTPUT;
    const stdin = opts.stdin ?? false;
    if (typeof stdin !== "boolean" && typeof stdin !== "string" && !(stdin instanceof Uint8Array)) {
      throw new InvalidArgument("stdin: expected boolean, string or bytes");
    }
    const rec = this.sb._recording;
    if (rec) {
      rec.add({ kind: "command_start", argv, env, cwd: cwd ?? null });
      return CommandHandle.recorded(this.sb, argv);
    }
    const args = ["proc", "start", this.sb._liveName(), "--json", ...v.envFlags(env)];
    if (cwd !== undefined) args.push("-w", cwd);
    if (stdin !== false) args.push("-i");
    args.push("--", ...argv);
    const done = await this.sb._cli.call(args, { what: "proc start" });
    const info = cli.parseJSON(done) as Record<string, unknown> | null;
    if (!info || typeof info.handle !== "string") {
      throw new TransportError("proc start --json: no handle in the result", { argv: done.argv });
    }
    const handle = new CommandHandle(this.sb, info.handle, argv, Number(info.pid ?? 0), opts, cap);
    if (typeof stdin === "string" || stdin instanceof Uint8Array) await handle.sendStdin(stdin, { close: true });
    return handle;
  }

  /** Background processes of this sandbox (running and recently exited). */
  async list(): Promise<ProcessInfo[]> {
    if (this.sb._recording) throw new Unsupported("commands.list() is not available in record mode");
    const done = await this.sb._cli.call(["proc", "ls", this.sb._liveName(), "--json"], { what: "proc ls" });
    const items = cli.parseJSON(done);
    if (!Array.isArray(items)) throw new TransportError("proc ls --json: expected an array");
    return items.filter((x) => x && typeof x === "object").map(processInfo);
  }

  /** Attach to a background process started earlier (possibly by another process). */
  async connect(handle: string, opts: Pick<StartOptions, "onStdout" | "onStderr"> = {}): Promise<CommandHandle> {
    for (const info of await this.list()) {
      if (info.handle === handle) return new CommandHandle(this.sb, handle, info.argv, info.pid, opts, DEFAULT_MAX_OUTPUT);
    }
    throw cli.errorFor([], cli.EXIT_PATH_NOT_FOUND, `mvmctl: no process ${JSON.stringify(handle)} in this sandbox`);
  }
}

type Waiter = () => void;

/** A background process. Its output is followed by one `mvmctl proc wait` child. */
export class CommandHandle implements AsyncIterable<OutputChunk> {
  private follower: ChildProcess | null = null;
  private readonly bufs: Record<"stdout" | "stderr", Buffer[]> = { stdout: [], stderr: [] };
  private readonly kept: Record<"stdout" | "stderr", number> = { stdout: 0, stderr: 0 };
  private readonly sizes: Record<"stdout" | "stderr", number> = { stdout: 0, stderr: 0 };
  private readonly chunks: OutputChunk[] = [];
  private waiters: Waiter[] = [];
  private ended = false;
  private readonly exited: Promise<number>;
  private result: CommandResult | null = null;
  private readonly startedAt = Date.now();
  private callbackError: unknown = null;

  constructor(
    private readonly sb: Sandbox,
    readonly handle: string,
    readonly argv: string[],
    readonly pid: number,
    opts: Pick<StartOptions, "onStdout" | "onStderr"> = {},
    private readonly cap = DEFAULT_MAX_OUTPUT,
    follow = true,
  ) {
    if (!follow) {
      this.ended = true;
      this.exited = Promise.resolve(0);
      return;
    }
    const child = sb._cli.follow(["proc", "wait", sb._liveName(), handle]);
    this.follower = child;
    sb._handles.add(this);
    for (const name of ["stdout", "stderr"] as const) {
      const cb = name === "stdout" ? opts.onStdout : opts.onStderr;
      const decoder = new StringDecoder("utf8");
      const stream = child[name]!;
      stream.on("data", (b: Buffer) => {
        this.sizes[name] += b.length;
        const room = this.cap - this.kept[name];
        if (room > 0) {
          const part = b.length > room ? b.subarray(0, room) : b;
          this.bufs[name].push(part);
          this.kept[name] += part.length;
        }
        this.push(chunk(name, b));
        if (cb) this.call(cb, decoder.write(b));
      });
      stream.on("end", () => {
        if (cb) this.call(cb, decoder.end());
      });
    }
    this.exited = new Promise<number>((resolve) => {
      child.on("close", (code) => {
        this.ended = true;
        this.wake();
        resolve(code ?? -1);
      });
      child.on("error", () => {
        this.ended = true;
        this.wake();
        resolve(-1);
      });
    });
  }

  static recorded(sb: Sandbox, argv: string[]): CommandHandle {
    const h = new CommandHandle(sb, "recorded", argv, 0, {}, DEFAULT_MAX_OUTPUT, false);
    h.result = makeResult(argv, { recorded: true });
    return h;
  }

  private call(cb: (s: string) => void, text: string): void {
    if (!text) return;
    try {
      cb(text);
    } catch (e) {
      this.callbackError ??= e;
    }
  }

  private push(c: OutputChunk): void {
    this.chunks.push(c);
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Output chunks in arrival order until the process exits (one consumer). */
  async *[Symbol.asyncIterator](): AsyncIterator<OutputChunk> {
    for (;;) {
      const next = this.chunks.shift();
      if (next) {
        yield next;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  /** Complete lines (without "\n") of one stream. */
  async *lines(stream: "stdout" | "stderr" = "stdout"): AsyncGenerator<string> {
    const decoder = new StringDecoder("utf8");
    let partial = "";
    for await (const c of this) {
      if (c.stream !== stream) continue;
      partial += decoder.write(c.data);
      const parts = partial.split("\n");
      partial = parts.pop()!;
      yield* parts;
    }
    partial += decoder.end();
    if (partial) yield partial;
  }

  /** Output received so far (bounded by maxOutputBytes). */
  get stdout(): string {
    return Buffer.concat(this.bufs.stdout).toString("utf8");
  }

  get stderr(): string {
    return Buffer.concat(this.bufs.stderr).toString("utf8");
  }

  /** The exit code once wait() returned, else null. */
  get exitCode(): number | null {
    return this.result ? this.result.exitCode : null;
  }

  /**
   * Wait until the process exits. Throws CommandTimeout after timeoutMs (the
   * process keeps running; kill() stops it).
   */
  async wait(opts: { timeoutMs?: number } = {}): Promise<CommandResult> {
    if (this.result) return this.result;
    const limit = v.positiveMs(opts.timeoutMs);
    let code: number;
    if (limit === undefined) {
      code = await this.exited;
    } else {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<null>((r) => {
        timer = setTimeout(() => r(null), limit);
      });
      const got = await Promise.race([this.exited, timeout]);
      clearTimeout(timer);
      if (got === null) throw new CommandTimeout(`${this.argv[0]}: still running after ${limit / 1000}s`, { exitCode: null });
      code = got;
    }
    const info = await this.status();
    if (info && info.state === "exited" && info.exitCode !== null) code = info.exitCode;
    const out = Buffer.concat(this.bufs.stdout);
    const err = Buffer.concat(this.bufs.stderr);
    this.result = makeResult(this.argv, {
      exitCode: code,
      stdout: out.toString("utf8"),
      stderr: err.toString("utf8"),
      stdoutRaw: out,
      stderrRaw: err,
      durationMs: Date.now() - this.startedAt,
      stdoutTruncated: this.sizes.stdout > out.length,
      stderrTruncated: this.sizes.stderr > err.length,
      stdoutSize: this.sizes.stdout,
      stderrSize: this.sizes.stderr,
      handle: this.handle,
    });
    this.sb._handles.delete(this);
    if (this.callbackError !== null) {
      const e = this.callbackError;
      this.callbackError = null;
      throw e;
    }
    return this.result;
  }

  private async status(): Promise<ProcessInfo | null> {
    for (const info of await this.sb.commands.list()) if (info.handle === this.handle) return info;
    return null;
  }

  async isRunning(): Promise<boolean> {
    if (this.result) return false;
    const info = await this.status();
    return info !== null && info.state === "running";
  }

  /** SIGKILL the process and its group. Killing an exited process is not an error. */
  async kill(): Promise<void> {
    if (this.result?.recorded) return;
    try {
      await this.sb._cli.call(["proc", "kill", this.sb._liveName(), this.handle], { what: "proc kill" });
    } catch (e) {
      let gone = false;
      try {
        const info = await this.status();
        gone = info !== null && info.state !== "running";
      } catch {
        /* report the original error */
      }
      if (!gone || !(e instanceof MvmError)) throw e;
    }
  }

  /** Send a signal ("TERM", "INT", 9, ...) to the process group. */
  async signal(sig: string | number): Promise<void> {
    await this.sb._cli.call(["proc", "signal", this.sb._liveName(), this.handle, String(sig)], { what: "proc signal" });
  }

  /** Write to the process's stdin (start it with stdin: true). */
  async sendStdin(data: string | Uint8Array, opts: { close?: boolean } = {}): Promise<void> {
    const args = ["proc", "stdin", this.sb._liveName(), this.handle];
    if (opts.close) args.push("--close");
    await this.sb._cli.call(args, { input: v.toBuffer(data, "stdin"), what: "proc stdin" });
  }

  async closeStdin(): Promise<void> {
    await this.sendStdin(Buffer.alloc(0), { close: true });
  }

  /** Stop following (the sandbox goes away or is detached). */
  _stopFollowing(): void {
    if (this.follower) cli.killChild(this.follower);
  }
}
