// Host-side validation: nothing malformed leaves the host.

import { createServer } from "node:net";
import * as path from "node:path";
import { InvalidArgument } from "./errors.js";

export const MAX_PATH = 4096;
export const DEFAULT_TTL_SECONDS = 1800;

const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const TTL_RE = /^\s*(\d+)\s*(s|m|h)?\s*$/;
const WORKLOAD_ID = /^[a-z][a-z0-9-]{0,62}$/;
const NAME = /^[a-z0-9][a-z0-9-]{0,39}$/;
const HOST = /^[A-Za-z0-9*][A-Za-z0-9.*-]{0,252}(:[0-9]{1,5})?$/;

/** An argv array, or a shell string run with `sh -c`. */
export type Command = string | readonly string[];
/** Seconds, or "30s" / "5m" / "1h" / "3600". 0 = no limit. */
export type TTL = number | string;

/** An absolute, clean guest path (no NUL, "..", ".", doubled or trailing slash). */
export function guestPath(p: unknown, what = "path"): string {
  if (typeof p !== "string") throw new InvalidArgument(`${what}: guest paths are strings, not ${typeof p}`);
  if (p === "") throw new InvalidArgument(`${what}: empty guest path`);
  if (p.includes("\0")) throw new InvalidArgument(`${what} ${JSON.stringify(p)}: contains NUL`);
  if (Buffer.byteLength(p) > MAX_PATH) throw new InvalidArgument(`${what}: longer than ${MAX_PATH} bytes`);
  if (!p.startsWith("/")) throw new InvalidArgument(`${what} ${JSON.stringify(p)}: guest paths must be absolute`);
  if (p.includes("//")) throw new InvalidArgument(`${what} ${JSON.stringify(p)}: doubled slash in guest path`);
  if (p.split("/").includes("..")) {
    throw new InvalidArgument(`${what} ${JSON.stringify(p)}: '..' is not allowed in guest paths`);
  }
  if (p !== "/" && path.posix.normalize(p) !== p) {
    throw new InvalidArgument(`${what} ${JSON.stringify(p)}: not a clean path (use ${JSON.stringify(path.posix.normalize(p))})`);
  }
  if (p !== "/" && p.endsWith("/")) throw new InvalidArgument(`${what} ${JSON.stringify(p)}: trailing slash`);
  return p;
}

export function argvOf(cmd: unknown): string[] {
  if (typeof cmd === "string") {
    if (cmd.trim() === "") throw new InvalidArgument("empty command");
    if (cmd.includes("\0")) throw new InvalidArgument("command contains NUL");
    return ["sh", "-c", cmd];
  }
  if (!Array.isArray(cmd)) throw new InvalidArgument("command must be a string or an array of strings");
  if (cmd.length === 0) throw new InvalidArgument("empty argv");
  cmd.forEach((a, i) => {
    if (typeof a !== "string") throw new InvalidArgument(`argv[${i}] is ${typeof a}, not string`);
    if (a.includes("\0")) throw new InvalidArgument(`argv[${i}] contains NUL`);
  });
  if (cmd[0] === "") throw new InvalidArgument("argv[0] is empty");
  return [...(cmd as string[])];
}

export function envOf(env: Record<string, string> | undefined | null): Record<string, string> {
  const out: Record<string, string> = {};
  if (env == null) return out;
  for (const [k, v] of Object.entries(env)) {
    if (!ENV_KEY.test(k)) throw new InvalidArgument(`env name ${JSON.stringify(k)}: use [A-Za-z_][A-Za-z0-9_]*`);
    if (typeof v !== "string") throw new InvalidArgument(`env ${k}: value is ${typeof v}, not string`);
    if (v.includes("\0")) throw new InvalidArgument(`env ${k}: value contains NUL`);
    out[k] = v;
  }
  return out;
}

export function envFlags(env: Record<string, string>): string[] {
  return Object.keys(env)
    .sort()
    .flatMap((k) => ["-e", `${k}=${env[k]}`]);
}

export function ttlSeconds(ttl: TTL | undefined | null): number {
  if (ttl == null) return DEFAULT_TTL_SECONDS;
  let secs: number;
  if (typeof ttl === "number") {
    secs = ttl;
  } else if (typeof ttl === "string") {
    const m = TTL_RE.exec(ttl);
    if (!m) throw new InvalidArgument(`ttl ${JSON.stringify(ttl)}: expected e.g. "30s", "5m", "1h" or "3600"`);
    secs = Number(m[1]) * ({ s: 1, m: 60, h: 3600 } as Record<string, number>)[m[2] ?? "s"]!;
  } else {
    throw new InvalidArgument("ttl: expected seconds or a duration string");
  }
  if (!Number.isFinite(secs) || secs < 0) throw new InvalidArgument("ttl must be a non-negative number");
  return Math.floor(secs);
}

export function workloadId(value: string | undefined | null, template: string): string {
  if (value != null) {
    if (typeof value !== "string" || !WORKLOAD_ID.test(value)) {
      throw new InvalidArgument(`workloadId ${JSON.stringify(value)}: use ^[a-z][a-z0-9-]{0,62}$`);
    }
    return value;
  }
  const base = path.posix.basename(template.replace(/\/+$/, "")) || "sandbox";
  let slug = base.toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "");
  if (!slug || !/^[a-z]/.test(slug)) slug = "w-" + slug;
  return slug.slice(0, 63).replace(/-+$/, "") || "sandbox";
}

const TAG = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export function snapshotTag(tag: unknown): string {
  if (typeof tag !== "string" || !TAG.test(tag)) {
    throw new InvalidArgument(
      `snapshot tag ${JSON.stringify(tag)}: use 1-63 lowercase letters, digits, '.', '_' and '-', starting with a letter or digit`,
    );
  }
  return tag;
}

export function sandboxName(name: unknown): string {
  if (typeof name !== "string" || !NAME.test(name)) {
    throw new InvalidArgument(
      `sandbox name ${JSON.stringify(name)}: use 1-40 lowercase letters, digits and '-', starting with a letter or digit`,
    );
  }
  return name;
}

export function positiveInt(value: number | undefined | null, what: string): number | undefined {
  if (value == null) return undefined;
  if (!Number.isInteger(value) || value <= 0) throw new InvalidArgument(`${what}: expected a positive integer, got ${value}`);
  return value;
}

export function positiveMs(value: number | undefined | null, what = "timeoutMs"): number | undefined {
  if (value == null) return undefined;
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new InvalidArgument(`${what}: expected a positive number of milliseconds, got ${value}`);
  }
  return value;
}

export function networkHosts(network: readonly string[] | string | undefined | null): string[] {
  if (network == null) return [];
  const list = typeof network === "string" ? [network] : [...network];
  for (const h of list) {
    if (typeof h !== "string" || !HOST.test(h)) throw new InvalidArgument(`network: ${JSON.stringify(h)} is not HOST or HOST:PORT`);
  }
  return list;
}

export const NETWORK_PRESETS = ["none", "unrestricted", "agent", "dev", "registries"];
const PUBLISH = /^(?:[0-9.]+:)?[0-9]{1,5}:[0-9]{1,5}$/;

/** [preset, allowed hosts]: a preset name, or HOST[:PORT] entries. */
export function networkOf(network: readonly string[] | string | undefined | null): [string | null, string[]] {
  if (typeof network === "string" && NETWORK_PRESETS.includes(network)) return [network, []];
  return [null, networkHosts(network)];
}

/** A TCP port free on 127.0.0.1 right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const p = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(p));
    });
  });
}

export async function publishSpecs(ports: readonly (number | string)[] | undefined | null): Promise<string[]> {
  const out: string[] = [];
  for (const p of ports ?? []) {
    if (typeof p === "number") out.push(`${await freePort()}:${port(p, "ports")}`);
    else if (typeof p === "string" && PUBLISH.test(p)) out.push(p);
    else throw new InvalidArgument(`ports: ${JSON.stringify(p)} is not a guest port or "[ADDR:]HOSTPORT:GUESTPORT"`);
  }
  return out;
}

export function port(value: unknown, what: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > 65535) {
    throw new InvalidArgument(`${what}: expected a port 1-65535, got ${String(value)}`);
  }
  return value;
}

export function toBuffer(data: unknown, what = "data"): Buffer {
  if (typeof data === "string") return Buffer.from(data, "utf8");
  if (data instanceof Uint8Array) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer) return Buffer.from(data);
  throw new InvalidArgument(`${what}: expected a string or bytes`);
}
