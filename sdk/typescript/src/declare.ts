/**
 * Declaration helpers: `export const worker = mvm.app({...})(async () => "ok")`.
 *
 * `mvmctl compile` reads these calls statically (the module is never run);
 * at run time they are inert: `app({...})(fn)` returns `fn` unchanged and
 * the helpers return plain objects describing what they declare. See
 * docs/declarations.md. `workload("worker").remote(...)` calls a booted
 * workload's function through `mvmctl invoke`.
 */
import { CLI, EXIT_MVM, callTimeoutMs } from "./cli.js";
import { InvalidArgument, MvmError } from "./errors.js";
import type { Secret } from "./secrets.js";

export type Decl = Record<string, unknown>;
export type EnvValue = string | Secret;

export interface AppOptions {
  name?: string;
  source?: Decl;
  image?: Decl;
  resources?: Decl;
  network?: Decl;
  env?: Record<string, EnvValue>;
  entrypoint?: Decl;
  entrypoints?: Decl[];
  hooks?: Decl;
  before_start?: string[][];
  after_start?: string[][];
  before_stop?: string[][];
}

/** Declare a workload; returns the function unchanged. */
// eslint-disable-next-line @typescript-eslint/no-unused-vars
export function app(_opts: AppOptions = {}): <F extends (...args: never[]) => unknown>(fn: F) => F {
  return (fn) => fn;
}

export function local_path(path: string, opts: { include?: string[]; exclude?: string[] } = {}): Decl {
  return { kind: "local_path", path, include: opts.include ?? ["**"], exclude: opts.exclude ?? [] };
}
export function nix_packages(packages: string[]): Decl {
  return { kind: "nix_packages", packages: [...packages] };
}
export function debian_packages(packages: string[], opts: { release?: 12 | 13 } = {}): Decl {
  return { kind: "debian_packages", packages: [...packages], release: opts.release ?? 12 };
}
export function python_image(version = "3.13", opts: { packages?: string[] } = {}): Decl {
  return { kind: "python_image", version, packages: opts.packages ?? [] };
}
export function node_image(version = "20"): Decl {
  return { kind: "node_image", version };
}
export function template(name: string): Decl {
  return { kind: "template", name };
}
/** An OCI image (python:3.12-slim, ghcr.io/org/app@sha256:...), pulled at build; pin it by digest. */
export function oci_image(ref: string): Decl {
  return { kind: "oci_image", ref };
}
export function resources(opts: { cpu_cores?: number; memory_mb?: number; disk_mb?: number } = {}): Decl {
  return { cpu_cores: opts.cpu_cores ?? 1, memory_mb: opts.memory_mb ?? 512, disk_mb: opts.disk_mb ?? 4096 };
}
export function network(opts: { mode?: "deny" | "allow"; allow?: string[]; ports?: (number | { guest: number; host?: number })[] } = {}): Decl {
  return { mode: opts.mode ?? "deny", allow: opts.allow ?? [], ports: opts.ports ?? [] };
}
export function entrypoint(command: string[], opts: { working_dir?: string; env?: Record<string, string> } = {}): Decl {
  return { kind: "command", command: [...command], working_dir: opts.working_dir ?? "/app", env: opts.env ?? {} };
}
export function entrypoint_function(
  opts: { module?: string; function?: string; working_dir?: string; env?: Record<string, string>; warm?: boolean } = {},
): Decl {
  return { kind: "function", working_dir: "/app", env: {}, warm: false, ...opts };
}
export function hooks(opts: { before_start?: string[][]; after_start?: string[][]; before_stop?: string[][] } = {}): Decl {
  return { before_start: opts.before_start ?? [], after_start: opts.after_start ?? [], before_stop: opts.before_stop ?? [] };
}
export const localPath = local_path;
export const nixPackages = nix_packages;
export const debianPackages = debian_packages;
export const pythonImage = python_image;
export const nodeImage = node_image;
export const ociImage = oci_image;
export const entrypointFunction = entrypoint_function;

/** The workload's function raised: its type, message and guest traceback. */
export class RemoteError extends MvmError {
  readonly type: string;
  readonly remoteMessage: string;
  readonly traceback: string;
  constructor(type: string, message: string, traceback: string, opts: { exitCode?: number; argv?: string[] } = {}) {
    super(`${type}: ${message}`, opts);
    this.name = "RemoteError";
    this.type = type;
    this.remoteMessage = message;
    this.traceback = traceback;
  }
}

/** Exit code of `mvmctl invoke` when the function raised. */
export const EXIT_RAISED = 1;

/** A booted declared workload (its sandbox name). */
export class Workload {
  readonly name: string;
  private cli: CLI;
  constructor(name: string, cli?: CLI) {
    if (typeof name !== "string" || name === "") throw new InvalidArgument("workload name: expected a non-empty string");
    this.name = name;
    this.cli = cli ?? new CLI();
  }

  /**
   * Call the function with JSON arguments (positional; the JavaScript
   * runner passes an object argument as is) and resolve with its JSON
   * result. Rejects with RemoteError when it threw.
   */
  async remote(...args: unknown[]): Promise<unknown> {
    let input: string;
    try {
      input = JSON.stringify(args);
    } catch (e) {
      throw new InvalidArgument(`remote: arguments are not JSON: ${(e as Error).message}`);
    }
    const done = await this.cli.call(["invoke", this.name, "--json", "--input", "-"], {
      input: Buffer.from(input),
      timeoutMs: callTimeoutMs(),
      ok: (c) => c === 0 || c === EXIT_RAISED,
      what: "invoke",
    });
    let reply: { ok?: boolean; result?: unknown; error?: { type?: string; message?: string; traceback?: string } };
    try {
      reply = JSON.parse(done.stdout.toString("utf8"));
    } catch {
      throw new MvmError("invoke: the reply is not JSON", { exitCode: EXIT_MVM, argv: done.argv });
    }
    if (reply.ok) return reply.result ?? null;
    const err = reply.error ?? {};
    throw new RemoteError(err.type ?? "Error", err.message ?? "", err.traceback ?? "", { exitCode: done.code, argv: done.argv });
  }

  /** Alias of remote. */
  invoke(...args: unknown[]): Promise<unknown> {
    return this.remote(...args);
  }
}

export function workload(name: string): Workload {
  return new Workload(name);
}
