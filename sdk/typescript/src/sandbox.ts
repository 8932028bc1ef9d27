// Sandbox: the lifecycle of one microVM sandbox.

import { mountFlags, secretFlags, type Secret } from "./secrets.js";
import { randomBytes } from "node:crypto";
import { existsSync, statSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as cli from "./cli.js";
import { register, unregister } from "./cleanup.js";
import { Commands, type CommandHandle } from "./commands.js";
import { InvalidArgument, MvmError, SandboxNotFound, SnapshotNotFound, TransportError, Unsupported } from "./errors.js";
import { Files } from "./files.js";
import { Recording, literalEnv, sdkMode } from "./record.js";
import * as v from "./validate.js";

/** A sandbox as `mvmctl up/ls --json` describes it. */
export interface SandboxInfo {
  name: string;
  id: string;
  state: string;
  image: string;
  imageDigest: string;
  imageProfile: string;
  runProfile: string;
  backend: string;
  cpus: number;
  memoryMib: number;
  created: string | null;
  expires: string | null;
  transient: boolean;
  raw: Record<string, unknown>;
}

/**
 * The fields of one JSON object of the CLI's output (`up/ls --json`,
 * `snapshot save/ls --json`): it must be an object whose `key` is a string;
 * absent fields read as "", 0, false or null.
 */
function jsonFields(o: unknown, what: string, key: string) {
  if (!o || typeof o !== "object" || typeof (o as Record<string, unknown>)[key] !== "string") {
    throw new TransportError(`expected ${what} object with a ${key}`);
  }
  const r = o as Record<string, unknown>;
  return {
    raw: r,
    /** The first of keys that is present, as a string. */
    str: (...keys: string[]): string => String(keys.map((k) => r[k]).find((x) => x !== undefined && x !== null) ?? ""),
    num: (k: string): number => Number(r[k] ?? 0),
    bool: (k: string): boolean => Boolean(r[k]),
    time: (k: string): string | null => (typeof r[k] === "string" ? (r[k] as string) : null),
  };
}

export function sandboxInfo(o: unknown): SandboxInfo {
  const f = jsonFields(o, "a sandbox", "name");
  return {
    name: f.str("name"),
    id: f.str("id"),
    state: f.str("state"),
    image: f.str("image"),
    imageDigest: f.str("image_digest"),
    imageProfile: f.str("image_profile", "profile"),
    runProfile: f.str("run_profile"),
    backend: f.str("backend"),
    cpus: f.num("cpus"),
    memoryMib: f.num("memory_mib"),
    created: f.time("created"),
    expires: f.time("expires"),
    transient: f.bool("transient"),
    raw: f.raw,
  };
}

/** A snapshot as `mvmctl snapshot save/ls --json` describes it. */
export interface SnapshotInfo {
  tag: string;
  created: string | null;
  source: string;
  image: string;
  imageDigest: string;
  cpus: number;
  memoryMib: number;
  bytes: number;
  holdsSecrets: boolean;
  raw: Record<string, unknown>;
}

export function snapshotInfo(o: unknown): SnapshotInfo {
  const f = jsonFields(o, "a snapshot", "tag");
  return {
    tag: f.str("tag"),
    created: f.time("created"),
    source: f.str("source"),
    image: f.str("image"),
    imageDigest: f.str("image_digest"),
    cpus: f.num("cpus"),
    memoryMib: f.num("memory_mib"),
    bytes: f.num("bytes"),
    holdsSecrets: f.bool("holds_secrets"),
    raw: f.raw,
  };
}

/** What fromSnapshot cannot be combined with: a clone runs the snapshot's image, resources, environment, network and attachments. */
const NOT_WITH_SNAPSHOT = [
  "cpus",
  "memoryMb",
  "env",
  "network",
  "ports",
  "mounts",
  "secrets",
  "allowRwMount",
  "allowManifestMounts",
  "allowManifestSecrets",
  "allowManifestNetwork",
  "refresh",
] as const;

export interface CreateOptions {
  /** Sandbox name (default: sdk-<workloadId>-<8 hex>). */
  name?: string;
  /** ^[a-z][a-z0-9-]{0,62}$; default: derived from the template. */
  workloadId?: string;
  cpus?: number;
  memoryMb?: number;
  /** Default environment of every command. */
  env?: Record<string, string>;
  /** Seconds or "30s"/"5m"/"1h"; default 1800; 0 = no limit. Bounds the sandbox even if this process dies hard. */
  ttl?: v.TTL;
  /**
   * HOST or HOST:PORT entries allowed out, or a preset name ("agent", "dev",
   * "registries", "unrestricted"). Default: no network.
   */
  network?: string[] | string;
  /** Guest ports to publish on 127.0.0.1 (a free host port is picked), or "[ADDR:]HOSTPORT:GUESTPORT". */
  ports?: (number | string)[];
  /** Host directories (read-only unless ":rw" and allowRwMount) or volumes: ["./src:/work", "cache:/cache"]. */
  mounts?: string[];
  /** Env variables (or /run/secrets/FILE) to secret(NAME); values never pass through the SDK. */
  secrets?: Record<string, Secret>;
  allowRwMount?: boolean;
  /**
   * Grant what a build directory's mvm.toml asks for: its host directories
   * and volumes ([[mount]]), stored secrets ([secrets]) and network egress
   * (network/allow). Each is a request (`mvmctl up --allow-manifest-mounts`,
   * `--allow-manifest-secrets`, `--allow-manifest-network`, recorded in the
   * signed plan); without the grant the CLI refuses before anything is
   * created and PolicyDenied carries its message.
   */
  allowManifestMounts?: boolean;
  allowManifestSecrets?: boolean;
  allowManifestNetwork?: boolean;
  /**
   * `mvmctl up DIR --refresh`: resolve the OCI image a build directory's
   * `image = REF` names on its registry again instead of using the digest it
   * was pinned to, and boot what the tag names now (docs/declarations.md). On
   * a build directory on a template it does nothing; on anything but a build
   * directory the CLI refuses it (CLIError, exit code 2).
   */
  refresh?: boolean;
  /**
   * Start a clone of snapshot TAG (sb.snapshot(tag)) instead of booting: its
   * memory, processes and files as they were, with its own name, disk copy
   * and a fresh identity (RNG seed, clock, hostname, machine-id). Takes no
   * template and none of cpus, memoryMb, env, network, ports, mounts,
   * secrets, allowRwMount (the snapshot's apply).
   */
  fromSnapshot?: string;
}

/** A published port: host:hostPort on the host reaches guestPort in the sandbox. */
export interface PortForward {
  host: string;
  hostPort: number;
  guestPort: number;
  proto: string;
  url: string;
}

function portForward(host: string, hostPort: number, guestPort: number, proto = "tcp"): PortForward {
  return { host, hostPort, guestPort, proto, url: `http://${host}:${hostPort}` };
}

/**
 * Inbound port bindings (`mvmctl forward` / `mvmctl port`), bound to
 * 127.0.0.1. The sandbox needs a network device: create it with `ports` or
 * `network`.
 */
export class Ports {
  constructor(private readonly sb: Sandbox) {}

  /** Publish guestPort on 127.0.0.1:hostPort (default: a free host port). */
  async forward(guestPort: number, opts: { hostPort?: number } = {}): Promise<PortForward> {
    const g = v.port(guestPort, "guestPort");
    const hp = opts.hostPort === undefined ? undefined : v.port(opts.hostPort, "hostPort");
    if (this.sb._recording) {
      this.sb._recording.add({ kind: "ports_forward", guest_port: g, host_port: opts.hostPort ?? null });
      return portForward("127.0.0.1", hp ?? 0, g);
    }
    // Without a host port the supervisor picks a free one; --json returns
    // the bindings this call added.
    const spec = hp === undefined ? `${g}` : `${hp}:${g}`;
    let done: Awaited<ReturnType<typeof cli.CLI.prototype.call>>;
    try {
      done = await this.sb._cli.call(["forward", this.sb._liveName(), "-p", spec, "--json"], { what: "forward" });
    } catch (e) {
      if (e instanceof Unsupported) {
        throw new Unsupported(`ports.forward needs \`mvmctl forward NAME -p [HOST:]GUEST\`, which this mvmctl lacks (${e.message})`, {
          exitCode: e.exitCode,
          argv: e.argv,
          stderr: e.stderr,
        });
      }
      throw e;
    }
    for (const pf of portForwards(done))
      if (pf.guestPort === g && (hp === undefined || pf.hostPort === hp)) return pf;
    throw new TransportError(`forward: no binding for guest port ${g} after forwarding`);
  }

  /** The sandbox's published ports (`mvmctl port NAME --json`). */
  async list(): Promise<PortForward[]> {
    if (this.sb._recording) throw new Unsupported("ports.list() is not available in record mode");
    return portForwards(await this.sb._cli.call(["port", this.sb._liveName(), "--json"], { what: "port" }));
  }
}

/** Parse a JSON array of bindings (`port --json`, `forward --json`). */
function portForwards(done: Awaited<ReturnType<typeof cli.CLI.prototype.call>>): PortForward[] {
  if (!done.stdout.toString("utf8").trim()) return [];
  const items = cli.parseJSON(done);
  if (items === null) return [];
  if (!Array.isArray(items)) throw new TransportError("expected an array of port bindings");
  return items
    .filter((p) => p && typeof p === "object")
    .map((p: Record<string, unknown>) =>
      portForward(String(p.host_addr ?? p.host ?? "127.0.0.1"), Number(p.host_port ?? 0), Number(p.guest_port ?? 0), String(p.proto ?? "tcp")),
    );
}

function isBuildDir(template: string): boolean {
  if (/^(\/|\.\/|\.\.\/|~)/.test(template) || template === "." || template === "..") return true;
  try {
    return existsSync(template) && statSync(template).isDirectory();
  } catch {
    return false;
  }
}

/**
 * A running microVM sandbox. Sandbox.create boots one (`mvmctl up`); it is
 * destroyed by kill()/destroy(), at the end of an `await using` block, or
 * when this process exits (also on an uncaught exception, SIGINT, SIGTERM)
 * unless detach() was called. Sandbox.connect attaches without taking
 * ownership.
 */
export class Sandbox implements AsyncDisposable, Disposable {
  /** @internal */ _info: SandboxInfo;
  /** @internal */ readonly _cli: cli.CLI;
  /** @internal */ readonly _recording: Recording | null;
  /** @internal */ readonly _handles = new Set<CommandHandle>();
  readonly workloadId: string;
  readonly commands: Commands;
  readonly files: Files;
  readonly ports: Ports;
  private destroyed = false;
  private detached = false;

  constructor(
    info: SandboxInfo,
    opts: { cli?: cli.CLI; owned?: boolean; workloadId?: string; recording?: Recording | null } = {},
  ) {
    this._info = info;
    this._cli = opts.cli ?? new cli.CLI();
    this._recording = opts.recording ?? null;
    this.workloadId = opts.workloadId ?? info.name;
    this.commands = new Commands(this);
    this.files = new Files(this);
    this.ports = new Ports(this);
    if (opts.owned) register(this);
  }

  /**
   * Boot a sandbox from a template ("python", "minimal", an image name or
   * digest) or a build directory holding mvm.toml ("./app"), and wait until
   * it is ready.
   */
  static async create(template: string, opts?: CreateOptions): Promise<Sandbox>;
  /** Start a clone of a snapshot: `Sandbox.create({ fromSnapshot: "tag" })`. */
  static async create(opts: CreateOptions & { fromSnapshot: string }): Promise<Sandbox>;
  static async create(templateOrOpts: string | CreateOptions, maybeOpts: CreateOptions = {}): Promise<Sandbox> {
    const fromOpts = typeof templateOrOpts === "object" && templateOrOpts !== null;
    const opts: CreateOptions = fromOpts ? (templateOrOpts as CreateOptions) : maybeOpts;
    if (opts.fromSnapshot !== undefined) {
      const clash: string[] = fromOpts ? [] : ["template"];
      for (const k of NOT_WITH_SNAPSHOT) if (opts[k] !== undefined && opts[k] !== false) clash.push(k);
      if (clash.length > 0) {
        throw new InvalidArgument(
          `fromSnapshot cannot be combined with ${clash.join(", ")}: a clone runs the snapshot's image, resources, environment, network and secrets`,
        );
      }
      return Sandbox.createFromSnapshot(v.snapshotTag(opts.fromSnapshot), opts);
    }
    const template = templateOrOpts;
    if (typeof template !== "string" || !template.trim()) {
      throw new InvalidArgument("template: expected a non-empty template name or directory");
    }
    const wid = v.workloadId(opts.workloadId, template);
    if (opts.name !== undefined) v.sandboxName(opts.name);
    const cpus = v.positiveInt(opts.cpus, "cpus");
    const mem = v.positiveInt(opts.memoryMb, "memoryMb");
    const env = v.envOf(opts.env);
    const ttl = v.ttlSeconds(opts.ttl);
    const [preset, hosts] = v.networkOf(opts.network);
    const publish = await v.publishSpecs(opts.ports);
    const buildDir = isBuildDir(template);
    const attach = [...mountFlags(opts.mounts), ...secretFlags(opts.secrets)];
    if (opts.allowRwMount) attach.push("--allow-rw-mount");
    if (opts.allowManifestMounts) attach.push("--allow-manifest-mounts");
    if (opts.allowManifestSecrets) attach.push("--allow-manifest-secrets");
    if (opts.allowManifestNetwork) attach.push("--allow-manifest-network");
    if (opts.refresh) attach.push("--refresh");

    if (sdkMode() === "record") {
      const rec = new Recording(wid, {
        template: buildDir ? null : template,
        build_dir: buildDir ? template : null,
        name: opts.name ?? null,
        env: literalEnv(env),
        resources: { cpu_cores: cpus ?? null, memory_mb: mem ?? null },
        ttl_seconds: ttl,
        network: opts.network !== undefined ? (preset ?? hosts) : null,
        ports: publish,
      });
      const info = sandboxInfo({ name: opts.name ?? `recorded-${wid}`.slice(0, 40), state: "recorded", image: template });
      return new Sandbox(info, { workloadId: wid, recording: rec });
    }

    const c = new cli.CLI();
    const name = opts.name ?? `sdk-${wid.slice(0, 24).replace(/-+$/, "")}-${randomBytes(4).toString("hex")}`;
    const args = ["up"];
    if (buildDir) args.push(path.resolve(template.replace(/^~(?=\/|$)/, os.homedir())));
    else args.push("--image", template);
    args.push("--name", name, "--json", "--ttl", `${ttl}s`);
    if (cpus !== undefined) args.push("--cpus", String(cpus));
    if (mem !== undefined) args.push("--memory", `${mem}M`);
    args.push(...v.envFlags(env));
    if (preset !== null) args.push("--network", preset);
    for (const h of hosts) args.push("--allow", h);
    for (const p of publish) args.push("-p", p);
    args.push(...attach);
    return Sandbox.up(c, args, name, wid, (e) =>
      hosts.length > 0 && e.message.includes("--allow")
        ? "network needs `mvmctl up --allow HOST[:PORT]`, which this mvmctl lacks"
        : undefined,
    );
  }

  /**
   * Run `up` (args) for sandbox name and return it, owned. It is owned from
   * before the boot starts: an exit during `up` still runs `down`. An
   * Unsupported error is re-raised with the message lacks() gives, if any.
   */
  private static async up(
    c: cli.CLI,
    args: string[],
    name: string,
    wid: string,
    lacks: (e: Unsupported) => string | undefined,
  ): Promise<Sandbox> {
    const pending = { cleanupSync: () => void c.callSync(["down", name], 60_000) };
    register(pending);
    let done: cli.Completed;
    try {
      done = await c.call(args, { timeoutMs: cli.createTimeoutMs(), what: "up" });
    } catch (e) {
      unregister(pending);
      if (e instanceof TransportError) await c.call(["down", name], { ok: () => true }).catch(() => undefined);
      if (e instanceof Unsupported) {
        const msg = lacks(e);
        if (msg !== undefined) throw new Unsupported(msg, { exitCode: e.exitCode, argv: e.argv, stderr: e.stderr });
      }
      throw e;
    }
    unregister(pending);
    return new Sandbox(sandboxInfo(cli.parseJSON(done)), { cli: c, owned: true, workloadId: wid });
  }

  private static async createFromSnapshot(tag: string, opts: CreateOptions): Promise<Sandbox> {
    const wid = v.workloadId(opts.workloadId, tag);
    if (opts.name !== undefined) v.sandboxName(opts.name);
    const ttl = v.ttlSeconds(opts.ttl);
    if (sdkMode() === "record") throw new Unsupported("fromSnapshot is not available in record mode");
    const c = new cli.CLI();
    const name = opts.name ?? `sdk-${wid.slice(0, 24).replace(/-+$/, "")}-${randomBytes(4).toString("hex")}`;
    const args = ["up", "--from-snapshot", tag, "--name", name, "--json", "--ttl", `${ttl}s`];
    return Sandbox.up(c, args, name, wid, () => "fromSnapshot needs `mvmctl up --from-snapshot TAG`, which this mvmctl lacks");
  }

  /**
   * Resume a paused sandbox by name and return it, connected (not owned, as
   * connect(): destroy() or an `await using` block stops it). A sandbox
   * paused to disk continues where it was (processes keep running, open
   * files stay open) with its RNG reseeded and its clock set from the host.
   * Throws SandboxNotFound, or SnapshotError when the saved state fails
   * verification.
   */
  static async resume(name: string): Promise<Sandbox> {
    v.sandboxName(name);
    if (sdkMode() === "record") throw new Unsupported("Sandbox.resume() is not available in record mode");
    const c = new cli.CLI();
    const done = await c.call(["resume", name, "--json"], { timeoutMs: cli.createTimeoutMs(), what: "resume" });
    return new Sandbox(sandboxInfo(cli.parseJSON(done)), { cli: c });
  }

  /** The snapshots on this host (`mvmctl snapshot ls --json`). */
  static async listSnapshots(): Promise<SnapshotInfo[]> {
    if (sdkMode() === "record") throw new Unsupported("Sandbox.listSnapshots() is not available in record mode");
    const obj = cli.parseJSON(await new cli.CLI().call(["snapshot", "ls", "--json"], { what: "snapshot ls" }));
    const items = obj && typeof obj === "object" ? (obj as Record<string, unknown>).snapshots : undefined;
    if (!Array.isArray(items)) throw new TransportError('snapshot ls --json: expected {"snapshots": [...]}');
    return items.filter((x) => x && typeof x === "object" && !(x as Record<string, unknown>).invalid).map(snapshotInfo);
  }

  /** Remove a snapshot (sandboxes started from it are not affected). Throws SnapshotNotFound. */
  static async removeSnapshot(tag: string): Promise<void> {
    v.snapshotTag(tag);
    if (sdkMode() === "record") throw new Unsupported("Sandbox.removeSnapshot() is not available in record mode");
    try {
      await new cli.CLI().call(["snapshot", "rm", tag], { what: "snapshot rm" });
    } catch (e) {
      // exit 3 without --json: here, the snapshot
      if (e instanceof SandboxNotFound) throw new SnapshotNotFound(e.message, { exitCode: e.exitCode, argv: e.argv, stderr: e.stderr });
      throw e;
    }
  }

  /** Attach to an existing sandbox (e.g. one another process created and detached). */
  static async connect(name: string): Promise<Sandbox> {
    v.sandboxName(name);
    if (sdkMode() === "record") throw new Unsupported("Sandbox.connect() is not available in record mode");
    const c = new cli.CLI();
    for (const info of await Sandbox.ls(c, true)) if (info.name === name) return new Sandbox(info, { cli: c });
    throw new SandboxNotFound(`no sandbox named ${JSON.stringify(name)}`, { exitCode: cli.EXIT_NOT_FOUND });
  }

  /** Running sandboxes (all: also stopped and failed ones). */
  static async list(opts: { all?: boolean } = {}): Promise<SandboxInfo[]> {
    if (sdkMode() === "record") throw new Unsupported("Sandbox.list() is not available in record mode");
    return Sandbox.ls(new cli.CLI(), Boolean(opts.all));
  }

  private static async ls(c: cli.CLI, all: boolean): Promise<SandboxInfo[]> {
    const done = await c.call(["ls", "--json", ...(all ? ["-a"] : [])], { what: "ls" });
    const items = cli.parseJSON(done);
    if (items === null) return [];
    if (!Array.isArray(items)) throw new TransportError("ls --json: expected an array");
    return items.map(sandboxInfo);
  }

  get name(): string {
    return this._info.name;
  }

  get id(): string {
    return this._info.id;
  }

  /** The description from the last create/connect/refresh. */
  get info(): SandboxInfo {
    return this._info;
  }

  get recording(): boolean {
    return this._recording !== null;
  }

  /** @internal */
  _liveName(): string {
    if (this.destroyed) {
      throw new SandboxNotFound(`sandbox ${JSON.stringify(this.name)} was destroyed`, { exitCode: cli.EXIT_NOT_FOUND });
    }
    if (this._recording) throw new Unsupported("not available in record mode");
    return this.name;
  }

  /** Re-read the sandbox's state from `mvmctl ls -a`. */
  async refresh(): Promise<SandboxInfo> {
    const name = this._liveName();
    for (const info of await Sandbox.ls(this._cli, true)) {
      if (info.name === name) {
        this._info = info;
        return info;
      }
    }
    throw new SandboxNotFound(`no sandbox named ${JSON.stringify(name)}`, { exitCode: cli.EXIT_NOT_FOUND });
  }

  async isRunning(): Promise<boolean> {
    if (this.destroyed || this._recording) return false;
    try {
      return (await this.refresh()).state === "running";
    } catch (e) {
      if (e instanceof SandboxNotFound) return false;
      throw e;
    }
  }

  /** The guest console and agent log (the last `lines` lines). */
  async logs(opts: { lines?: number } = {}): Promise<string> {
    if (this._recording) throw new Unsupported("logs() is not available in record mode");
    const args = ["logs", this._liveName()];
    const n = v.positiveInt(opts.lines, "lines");
    if (n !== undefined) args.push("-n", String(n));
    return (await this._cli.call(args, { what: "logs" })).stdout.toString("utf8");
  }

  /** Guest metrics (memory, load, processes, uptime, disk). */
  async stats(): Promise<Record<string, unknown>> {
    if (this._recording) throw new Unsupported("stats() is not available in record mode");
    const obj = cli.parseJSON(await this._cli.call(["stats", this._liveName(), "--json"], { what: "stats" }));
    if (!obj || typeof obj !== "object") throw new TransportError("stats --json: expected an object");
    return obj as Record<string, unknown>;
  }

  /**
   * Pause the sandbox and return its name. By default its memory, device
   * state and disk are saved and its VM exits: a paused sandbox holds no RAM
   * or CPU, and survives this process, its supervisor and a host reboot.
   * Pausing to disk releases the sandbox from this process (as detach()
   * does) so that it is still there to resume: Sandbox.resume(name) from any
   * process, or resume() on this object. `inMemory: true` only freezes the
   * vCPUs (the VM keeps its RAM; ownership does not change). Commands fail
   * until resumed.
   */
  async pause(opts: { inMemory?: boolean } = {}): Promise<string> {
    if (this._recording) throw new Unsupported("pause() is not available in record mode");
    const args = ["pause", this._liveName(), "--json", ...(opts.inMemory ? ["--in-memory"] : [])];
    const done = await this._cli.call(args, { timeoutMs: cli.createTimeoutMs(), what: "pause" });
    this._info = sandboxInfo(cli.parseJSON(done));
    if (!opts.inMemory) this.detach();
    return this.name;
  }

  /** Resume this sandbox (paused to disk or in memory) and return it. */
  async resume(): Promise<Sandbox> {
    if (this._recording) throw new Unsupported("resume() is not available in record mode");
    const done = await this._cli.call(["resume", this._liveName(), "--json"], { timeoutMs: cli.createTimeoutMs(), what: "resume" });
    this._info = sandboxInfo(cli.parseJSON(done));
    return this;
  }

  /**
   * Save the sandbox's memory, device state and disk as snapshot `tag`
   * (`mvmctl snapshot save`); the sandbox keeps running. Start clones with
   * Sandbox.create({ fromSnapshot: tag }). A snapshot holds whatever the
   * guest's memory holds (secrets included: see holdsSecrets); it is stored
   * mode 0600 under the data directory.
   */
  async snapshot(tag: string): Promise<SnapshotInfo> {
    v.snapshotTag(tag);
    if (this._recording) throw new Unsupported("snapshot() is not available in record mode");
    const done = await this._cli.call(["snapshot", "save", this._liveName(), tag, "--json"], {
      timeoutMs: cli.createTimeoutMs(),
      what: "snapshot save",
    });
    return snapshotInfo(cli.parseJSON(done));
  }

  /** Leave the sandbox running after this process exits (its TTL still applies); returns its name. */
  detach(): string {
    this.detached = true;
    unregister(this);
    this._recording?.add({ kind: "detach" });
    for (const h of this._handles) h._stopFollowing();
    return this.name;
  }

  /** Stop the sandbox and remove its state (`mvmctl down`). Idempotent. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    unregister(this);
    for (const h of this._handles) h._stopFollowing();
    if (this._recording) {
      this._recording.add({ kind: "kill" });
      return;
    }
    try {
      await this._cli.call(["down", this.name], { ok: (c) => c === 0 || c === cli.EXIT_NOT_FOUND, what: "down" });
    } catch (e) {
      this.destroyed = false;
      throw e;
    }
    this._info.state = "destroyed";
  }

  /** E2B-style alias of destroy(). */
  kill(): Promise<void> {
    return this.destroy();
  }

  /** Synchronous destroy, for exit handlers and `using`. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    unregister(this);
    for (const h of this._handles) h._stopFollowing();
    if (this._recording) {
      this._recording.add({ kind: "kill" });
      return;
    }
    const code = this._cli.callSync(["down", this.name], cli.callTimeoutMs());
    if (code !== 0 && code !== cli.EXIT_NOT_FOUND) {
      this.destroyed = false;
      throw new MvmError(`down ${this.name}: mvmctl exited with code ${code}`, { exitCode: code });
    }
    this._info.state = "destroyed";
  }

  /** @internal exit-time cleanup of owned, undetached sandboxes */
  cleanupSync(): void {
    if (!this.detached) {
      try {
        this.destroySync();
      } catch {
        /* best effort at exit */
      }
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.detached) await this.destroy();
  }

  [Symbol.dispose](): void {
    if (!this.detached) this.destroySync();
  }
}
