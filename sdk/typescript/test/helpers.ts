// Shared helpers of the SDK tests. Live tests drive the project's own mvmctl
// (MVM_CLI_BIN, else bin/mvmctl of this repository) against real microVMs,
// in temp MVM_STATE_DIR/MVM_DATA_DIR unless the caller chose them.

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url)); // dist/test
export const PKG = path.resolve(here, "..", "..");
export const REPO = path.resolve(PKG, "..", "..");
/** Bound of every helper subprocess a test starts. */
export const CHILD_TIMEOUT_MS = 300_000;

const made: string[] = [];
let cleanupInstalled = false;

export function setupEnv(): boolean {
  if (!process.env.MVM_CLI_BIN) {
    const local = path.join(REPO, "bin", "mvmctl");
    if (existsSync(local)) process.env.MVM_CLI_BIN = local;
  }
  for (const [v, prefix] of [
    ["MVM_STATE_DIR", "mvs-"],
    ["MVM_DATA_DIR", "mvd-"],
  ] as const) {
    if (!process.env[v]) {
      process.env[v] = mkdtempSync(path.join(os.tmpdir(), prefix));
      made.push(process.env[v]!);
    }
  }
  if (made.length > 0 && !cleanupInstalled) {
    cleanupInstalled = true;
    // after the SDK's own exit hook (registered later, runs later): down
    // whatever is left in the temp state dir, then drop the dirs
    process.on("exit", () => {
      if (process.env.MVM_CLI_BIN) spawnSync(process.env.MVM_CLI_BIN, ["down", "--all"], { stdio: "ignore", timeout: 120_000 });
      for (const d of made) rmSync(d, { recursive: true, force: true });
    });
  }
  delete process.env.MVM_SDK_MODE;
  return Boolean(process.env.MVM_CLI_BIN);
}

export function mvmctl(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.env.MVM_CLI_BIN!, args, { encoding: "utf8", timeout: 120_000, stdio: ["ignore", "pipe", "pipe"] });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export function sandboxNames(all = true): string[] {
  const r = mvmctl("ls", "--json", ...(all ? ["-a"] : []));
  if (r.code !== 0) throw new Error(r.stderr);
  return (JSON.parse(r.stdout || "[]") as { name: string }[]).map((s) => s.name);
}

/** Whether a QEMU process of this sandbox id is alive. */
export function qemuRunning(id: string): boolean {
  const needle = `mvm-${id}`;
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    let cmd: string;
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, "latin1");
    } catch {
      continue;
    }
    if (cmd.includes("qemu") && cmd.split("\0").includes(needle)) return true;
  }
  return false;
}

export async function waitGone(name: string, id: string, withinMs = 30_000): Promise<void> {
  const deadline = Date.now() + withinMs;
  while (Date.now() < deadline) {
    if (!sandboxNames().includes(name) && !qemuRunning(id)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  if (sandboxNames().includes(name)) throw new Error(`${name} still listed`);
  if (qemuRunning(id)) throw new Error(`qemu of ${name} still running`);
}

/** A compiled child-process fixture (test/fixtures/NAME.ts). */
export function fixture(name: string): string {
  return path.join(here, "fixtures", `${name}.js`);
}

export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function runNode(file: string, args: string[] = [], env: Record<string, string> = {}): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [file, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b: Buffer) => (stdout += b.toString()));
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), CHILD_TIMEOUT_MS);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

export function tmpDir(): string {
  return mkdtempSync(path.join(os.tmpdir(), "mvm-sdk-ts-"));
}
