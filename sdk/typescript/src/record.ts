// Record mode (MVM_SDK_MODE=record): operations are written to
// MVM_SDK_OUT_PATH as JSON instead of booting anything. The file is
// rewritten atomically after every operation. Same format as the Python SDK
// (see docs/sdk-python.md, "Record mode"), with "sdk": "typescript".

import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { ModeError } from "./errors.js";

export const SCHEMA_VERSION = 1;

export function sdkMode(): "live" | "record" {
  const mode = (process.env.MVM_SDK_MODE ?? "").trim().toLowerCase() || "live";
  if (mode !== "live" && mode !== "record") {
    throw new ModeError(`MVM_SDK_MODE=${JSON.stringify(mode)}: expected "live" (default) or "record"`);
  }
  return mode;
}

export function literalEnv(env: Record<string, string>): Record<string, { kind: "literal"; value: string }> {
  const out: Record<string, { kind: "literal"; value: string }> = {};
  for (const [k, v] of Object.entries(env)) out[k] = { kind: "literal", value: v };
  return out;
}

/** JSON with keys sorted at every level (a stable, diffable recording). */
export function sortedJSON(value: unknown): string {
  const norm = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(norm);
    if (v && typeof v === "object") {
      const o: Record<string, unknown> = {};
      for (const k of Object.keys(v as object).sort()) o[k] = norm((v as Record<string, unknown>)[k]);
      return o;
    }
    return v;
  };
  return JSON.stringify(norm(value), null, 2) + "\n";
}

let active: Recording | null = null;

export class Recording {
  readonly path: string;
  readonly ops: Record<string, unknown>[] = [];

  constructor(
    readonly workloadId: string,
    readonly create: Record<string, unknown>,
  ) {
    const p = (process.env.MVM_SDK_OUT_PATH ?? "").trim();
    if (!p) throw new ModeError("MVM_SDK_MODE=record needs MVM_SDK_OUT_PATH (where the recording goes)");
    if (active !== null) {
      throw new ModeError(`record mode records one sandbox per script; ${JSON.stringify(active.workloadId)} is already recorded`);
    }
    active = this;
    this.path = p;
    this.write();
  }

  add(op: Record<string, unknown>): void {
    this.ops.push(op);
    this.write();
  }

  document(): Record<string, unknown> {
    return {
      schema_version: SCHEMA_VERSION,
      sdk: "typescript",
      workload_id: this.workloadId,
      create: this.create,
      ops: this.ops,
    };
  }

  private write(): void {
    const dir = path.dirname(path.resolve(this.path));
    mkdirSync(dir, { recursive: true });
    const tmp = path.join(dir, `.mvm-recording-${process.pid}-${Date.now()}`);
    writeFileSync(tmp, sortedJSON(this.document()));
    renameSync(tmp, this.path);
  }

  /** For tests: forget the active recording. */
  static resetForTests(): void {
    active = null;
  }
}
