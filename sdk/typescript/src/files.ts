// sandbox.files: guest files through `mvmctl fs` (bytes stream over the
// CLI's stdin/stdout; paths are validated on the host first).

import * as cli from "./cli.js";
import { FileNotFound, InvalidArgument, TransportError, Unsupported } from "./errors.js";
import * as v from "./validate.js";
import type { Sandbox } from "./sandbox.js";

/** A guest path as `mvmctl fs stat/ls --json` describes it. */
export interface EntryInfo {
  name: string;
  path: string;
  /** "file", "dir", "symlink", ... */
  type: string;
  size: number;
  /** Octal permission bits, e.g. "0644". */
  mode: string;
  mtime: string | null;
  uid: number;
  gid: number;
  isDir: boolean;
  isFile: boolean;
  raw: Record<string, unknown>;
}

export function entryInfo(o: Record<string, unknown>): EntryInfo {
  const type = String(o.type ?? "");
  return {
    name: String(o.name ?? ""),
    path: String(o.path ?? ""),
    type,
    size: Number(o.size ?? 0),
    mode: String(o.mode ?? ""),
    mtime: typeof o.mtime === "string" ? o.mtime : null,
    uid: Number(o.uid ?? 0),
    gid: Number(o.gid ?? 0),
    isDir: type === "dir" || type === "directory",
    isFile: type === "file",
    raw: o,
  };
}

function modeFlag(mode: number | undefined): string[] {
  if (mode === undefined) return [];
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw new InvalidArgument(`mode: expected permission bits such as 0o644, got ${mode}`);
  }
  return ["--mode", mode.toString(8).padStart(4, "0")];
}

// the call bound plus a generous 1 s per MiB (TCG guests are slow)
const ioTimeout = (size: number): number => cli.callTimeoutMs() + size / 1024;

export interface WriteOptions {
  /** Permission bits, e.g. 0o755. */
  mode?: number;
  /** Create missing parent directories (default true). */
  parents?: boolean;
  append?: boolean;
}

export class Files {
  constructor(private readonly sb: Sandbox) {}

  private live(op: string): string {
    if (this.sb._recording) throw new Unsupported(`files.${op}() is not available in record mode`);
    return this.sb._liveName();
  }

  /** The contents of a guest file. Throws FileNotFound. */
  async readBytes(path: string): Promise<Buffer> {
    const p = v.guestPath(path);
    const done = await this.sb._cli.call(["fs", "read", this.live("read"), p], { what: `read ${p}` });
    return done.stdout;
  }

  /** The contents of a guest file as UTF-8 text. */
  async read(path: string): Promise<string> {
    return (await this.readBytes(path)).toString("utf8");
  }

  /** Write data (strings are UTF-8) to a guest file, creating parents unless parents: false. */
  async write(path: string, data: string | Uint8Array, opts: WriteOptions = {}): Promise<EntryInfo> {
    const p = v.guestPath(path);
    const payload = v.toBuffer(data, "files.write");
    const flags = modeFlag(opts.mode);
    const rec = this.sb._recording;
    if (rec) {
      rec.add({
        kind: "files_write",
        path: p,
        bytes_b64: payload.toString("base64"),
        mode: opts.mode !== undefined ? opts.mode.toString(8).padStart(4, "0") : null,
        append: Boolean(opts.append),
      });
      return entryInfo({ name: p.split("/").pop(), path: p, type: "file", size: payload.length });
    }
    const args = ["fs", "write", this.sb._liveName(), p, "--json", ...flags];
    if (opts.parents !== false) args.push("-p");
    if (opts.append) args.push("--append");
    const done = await this.sb._cli.call(args, { input: payload, timeoutMs: ioTimeout(payload.length), what: `write ${p}` });
    const obj = cli.parseJSON(done);
    if (!obj || typeof obj !== "object") throw new TransportError("fs write --json: expected an object");
    return entryInfo(obj as Record<string, unknown>);
  }

  /** The entries of a guest directory. */
  async list(path: string): Promise<EntryInfo[]> {
    const p = v.guestPath(path);
    const done = await this.sb._cli.call(["fs", "ls", this.live("list"), p, "--json"], { what: `list ${p}` });
    const obj = cli.parseJSON(done) as { entries?: unknown } | unknown[] | null;
    const entries = Array.isArray(obj) ? obj : obj?.entries;
    if (!Array.isArray(entries)) throw new TransportError("fs ls --json: expected entries");
    return entries.filter((e) => e && typeof e === "object").map((e) => entryInfo(e as Record<string, unknown>));
  }

  /** Describe a guest path (symlinks are not followed). */
  async stat(path: string): Promise<EntryInfo> {
    const p = v.guestPath(path);
    const done = await this.sb._cli.call(["fs", "stat", this.live("stat"), p, "--json"], { what: `stat ${p}` });
    const obj = cli.parseJSON(done);
    if (!obj || typeof obj !== "object") throw new TransportError("fs stat --json: expected an object");
    return entryInfo(obj as Record<string, unknown>);
  }

  async exists(path: string): Promise<boolean> {
    try {
      await this.stat(path);
      return true;
    } catch (e) {
      if (e instanceof FileNotFound) return false;
      throw e;
    }
  }

  /** Remove a file, symlink or empty directory (recursive: a tree). */
  async remove(path: string, opts: { recursive?: boolean; missingOk?: boolean } = {}): Promise<void> {
    const p = v.guestPath(path);
    if (p === "/") throw new InvalidArgument("refusing to remove '/'");
    const rec = this.sb._recording;
    if (rec) {
      rec.add({ kind: "files_remove", path: p, recursive: Boolean(opts.recursive) });
      return;
    }
    const args = ["fs", "rm", this.sb._liveName(), p];
    if (opts.recursive) args.push("-r");
    if (opts.missingOk) args.push("-f");
    await this.sb._cli.call(args, { what: `remove ${p}` });
  }

  /** Create a guest directory (parents, default true: missing parents too and no error if it exists). */
  async mkdir(path: string, opts: { parents?: boolean; mode?: number } = {}): Promise<void> {
    const p = v.guestPath(path);
    const flags = modeFlag(opts.mode);
    const rec = this.sb._recording;
    if (rec) {
      rec.add({ kind: "files_mkdir", path: p, parents: opts.parents !== false });
      return;
    }
    const args = ["fs", "mkdir", this.sb._liveName(), p, ...flags];
    if (opts.parents !== false) args.push("-p");
    await this.sb._cli.call(args, { what: `mkdir ${p}` });
  }

  /** Move a guest path (into dst when it is a directory). */
  async rename(src: string, dst: string): Promise<void> {
    const a = v.guestPath(src, "src");
    const b = v.guestPath(dst, "dst");
    const rec = this.sb._recording;
    if (rec) {
      rec.add({ kind: "files_rename", src: a, dst: b });
      return;
    }
    await this.sb._cli.call(["fs", "mv", this.sb._liveName(), a, b], { what: `rename ${a}` });
  }
}
