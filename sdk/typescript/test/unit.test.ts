// Tests that boot nothing: validation, error mapping (against a stand-in CLI
// replaying an exit code and message), record mode, CLI discovery.

import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { afterEach, beforeEach, describe, test } from "node:test";
import * as sdk from "../src/index.js";
import { Recording } from "../src/record.js";
import { sandboxInfo, snapshotInfo } from "../src/sandbox.js";
import * as v from "../src/validate.js";
import { fixture, runNode, tmpDir } from "./helpers.js";

describe("JSON of the CLI", () => {
  test("sandboxInfo and snapshotInfo read their fields; absent ones are empty", () => {
    const sb = sandboxInfo({ name: "a", id: "i", cpus: 2, memory_mib: 512, profile: "dev", created: "2026-11-30T00:00:00Z", transient: true });
    assert.deepEqual(
      { ...sb, raw: undefined },
      {
        name: "a", id: "i", state: "", image: "", imageDigest: "", imageProfile: "dev", runProfile: "", backend: "",
        cpus: 2, memoryMib: 512, created: "2026-11-30T00:00:00Z", expires: null, transient: true, raw: undefined,
      },
    );
    assert.equal(sandboxInfo({ name: "a", image_profile: "sealed", profile: "dev" }).imageProfile, "sealed");
    const sn = snapshotInfo({ tag: "t", source: "s", bytes: 7, holds_secrets: true, created: 5 });
    assert.deepEqual(
      { ...sn, raw: undefined },
      { tag: "t", created: null, source: "s", image: "", imageDigest: "", cpus: 0, memoryMib: 0, bytes: 7, holdsSecrets: true, raw: undefined },
    );
    assert.throws(() => sandboxInfo({ id: "x" }), /expected a sandbox object with a name/);
    assert.throws(() => snapshotInfo({ tag: 1 }), (e: unknown) => e instanceof sdk.TransportError && /a snapshot object with a tag/.test(e.message));
    assert.throws(() => snapshotInfo(null), sdk.TransportError);
  });
});

describe("validation", () => {
  test("bad guest paths are refused on the host", () => {
    for (const p of ["relative/x", "", "/a/../b", "/a/./b", "//a", "/a/", "/a\0b", "..", "/a/.."]) {
      assert.throws(() => v.guestPath(p), sdk.InvalidArgument, p);
    }
    for (const p of ["/", "/app/main.py", "/a b/c", "/tmp/.hidden", "/x..y"]) assert.equal(v.guestPath(p), p);
  });

  test("argv and shell strings", () => {
    assert.deepEqual(v.argvOf("echo hi"), ["sh", "-c", "echo hi"]);
    assert.deepEqual(v.argvOf(["ls", "-l"]), ["ls", "-l"]);
    for (const bad of [[], [""], ["a", 1], "", "  ", ["a\0"], 5]) assert.throws(() => v.argvOf(bad), sdk.InvalidArgument);
  });

  test("env, ttl, names", () => {
    assert.deepEqual(v.envFlags(v.envOf({ B: "2", A: "1" })), ["-e", "A=1", "-e", "B=2"]);
    for (const bad of [{ "1A": "x" }, { "A-B": "x" }, { A: "x\0" }] as Record<string, string>[]) assert.throws(() => v.envOf(bad), sdk.InvalidArgument);
    assert.equal(v.ttlSeconds(undefined), 1800);
    assert.equal(v.ttlSeconds(0), 0);
    assert.equal(v.ttlSeconds("30s"), 30);
    assert.equal(v.ttlSeconds("5m"), 300);
    assert.equal(v.ttlSeconds(" 1h "), 3600);
    assert.equal(v.ttlSeconds("3600"), 3600);
    for (const bad of ["5x", "-1", "1.5h", -3]) assert.throws(() => v.ttlSeconds(bad), sdk.InvalidArgument);
    assert.equal(v.workloadId(undefined, "python"), "python");
    assert.equal(v.workloadId(undefined, "./my_App/"), "my-app");
    assert.equal(v.workloadId(undefined, "3.11"), "w-3-11");
    assert.throws(() => v.workloadId("Tool!", "python"), sdk.InvalidArgument);
    assert.throws(() => v.sandboxName("Bad Name"), sdk.InvalidArgument);
  });
});

describe("stand-in CLI", () => {
  let dir: string;
  let saved: NodeJS.ProcessEnv;

  beforeEach(() => {
    saved = { ...process.env };
    dir = tmpDir();
    const fake = path.join(dir, "mvmctl");
    writeFileSync(
      fake,
      '#!/bin/sh\nprintf "%s\\n" "$*" >> "$FAKE_LOG"\nprintf "%s" "$FAKE_STDOUT"\n' +
        'if [ -n "$FAKE_STDERR" ]; then printf "mvmctl: %s\\n" "$FAKE_STDERR" >&2; fi\nexit "${FAKE_CODE:-0}"\n',
    );
    chmodSync(fake, 0o755);
    Object.assign(process.env, { MVM_CLI_BIN: fake, FAKE_LOG: path.join(dir, "log"), FAKE_STDOUT: "", FAKE_STDERR: "", FAKE_CODE: "0" });
  });
  afterEach(() => {
    process.env = saved;
  });

  const fakeSandbox = () =>
    new sdk.Sandbox({
      name: "fake", id: "0", state: "running", image: "", imageDigest: "", imageProfile: "", runProfile: "", backend: "", cpus: 0, memoryMib: 0,
      created: null, expires: null, transient: false, raw: {},
    });
  const lastCall = () => readFileSync(path.join(dir, "log"), "utf8").trim().split("\n").at(-1);

  const cases: [number, string, new (...a: never[]) => sdk.MvmError][] = [
    [3, 'sandbox not found: no sandbox named "fake"', sdk.SandboxNotFound],
    [4, "fs stat /x: /x: no such file or directory", sdk.FileNotFound],
    [124, "timed out", sdk.CommandTimeout],
    [125, "boot failed: deadline passed", sdk.TransportError],
    [126, "refused: sealed image", sdk.PolicyDenied],
    [7, "fs rm /a: directory not empty", sdk.CLIError],
    [2, "unknown flag: --json (see `mvmctl fs stat --help`)", sdk.Unsupported],
    [2, "accepts 1 arg(s), received 2 (see `mvmctl fs stat --help`)", sdk.CLIInvalidArgument],
    [1, "something else", sdk.CLIError],
  ];
  for (const [code, message, cls] of cases) {
    test(`exit ${code} maps to ${cls.name}`, async () => {
      Object.assign(process.env, { FAKE_CODE: String(code), FAKE_STDERR: message });
      await assert.rejects(fakeSandbox().files.stat("/x"), (e: unknown) => {
        assert.ok(e instanceof cls && e instanceof sdk.MvmError);
        assert.equal((e as sdk.MvmError).exitCode, code);
        assert.equal((e as sdk.MvmError).message, message);
        return true;
      });
    });
  }

  const kindCases: [number, string, string, new (...a: never[]) => sdk.MvmError][] = [
    [3, "not_found", "sandbox", sdk.SandboxNotFound],
    [4, "not_found", "path", sdk.FileNotFound],
    [4, "not_found", "process", sdk.FileNotFound],
    [124, "timeout", "command", sdk.CommandTimeout],
    [125, "timeout", "", sdk.TransportError],
    [125, "transport", "", sdk.TransportError],
    [125, "guest", "", sdk.TransportError],
    [125, "failed_precondition", "not_running", sdk.TransportError],
    [126, "refused", "sealed", sdk.PolicyDenied],
    [9, "refused", "unsafe", sdk.CLIError],
    [7, "failed_precondition", "not_empty", sdk.CLIError],
    [1, "failed_precondition", "no_stdin", sdk.CLIError],
    [3, "not_found", "snapshot", sdk.SnapshotNotFound],
    [126, "refused", "integrity", sdk.SnapshotError],
    [1, "failed_precondition", "snapshot", sdk.SnapshotError],
    [2, "invalid_argument", "", sdk.CLIInvalidArgument],
  ];
  for (const [code, kind, reason, cls] of kindCases) {
    test(`--json error kind ${kind}/${reason || "-"} maps to ${cls.name}`, async () => {
      const error: Record<string, unknown> = { kind, message: "the message", exit_code: code };
      if (reason) error.reason = reason;
      Object.assign(process.env, {
        FAKE_CODE: String(code),
        FAKE_STDERR: "stderr text",
        FAKE_STDOUT: JSON.stringify({ schema_version: 1, error }),
      });
      await assert.rejects(fakeSandbox().files.stat("/x"), (e: unknown) => {
        assert.ok(e instanceof sdk.MvmError);
        assert.equal((e as object).constructor, cls);
        assert.equal((e as sdk.MvmError).exitCode, code);
        assert.equal((e as sdk.MvmError).message, "the message");
        return true;
      });
    });
  }

  test("the CLI refusing an argument is an InvalidArgument, still a CLIError", async () => {
    const message = '--memory "-5": invalid size "-5": want a number of MiB or a size like 512M or 1G';
    Object.assign(process.env, {
      FAKE_CODE: "2",
      FAKE_STDERR: message,
      FAKE_STDOUT: JSON.stringify({ schema_version: 1, error: { kind: "invalid_argument", message, exit_code: 2 } }),
    });
    await assert.rejects(fakeSandbox().files.stat("/x"), (e: unknown) => {
      assert.ok(e instanceof sdk.InvalidArgument && e instanceof sdk.CLIInvalidArgument, String(e));
      assert.ok(e instanceof sdk.CLIError && e instanceof sdk.MvmError, String(e));
      assert.ok(!(e instanceof sdk.SandboxNotFound) && !(e instanceof sdk.PolicyDenied) && !(e instanceof sdk.TransportError));
      assert.equal(e.message, message);
      assert.equal(e.exitCode, 2);
      assert.deepEqual(e.argv?.slice(1, 3), ["fs", "stat"]);
      assert.ok(e.argv?.includes("--json"));
      assert.equal(e.stderr.trim(), `mvmctl: ${message}`);
      return true;
    });
    // The SDK's own refusal is an InvalidArgument too, but not a CLIError: nothing ran.
    await assert.rejects(fakeSandbox().files.stat("relative"), (e: unknown) => {
      assert.ok(e instanceof sdk.InvalidArgument && !(e instanceof sdk.CLIError), String(e));
      assert.equal((e as sdk.MvmError).exitCode, null);
      return true;
    });
    assert.ok(!(new sdk.CLIError("x") instanceof sdk.InvalidArgument));
  });

  for (const withJSON of [true, false]) {
    test(`an unknown flag (invalid_argument, exit 2) stays Unsupported (${withJSON ? "with" : "without"} --json error)`, async () => {
      const message = "unknown flag: --json (see `mvmctl fs stat --help`)";
      Object.assign(process.env, {
        FAKE_CODE: "2",
        FAKE_STDERR: message,
        FAKE_STDOUT: withJSON
          ? JSON.stringify({ schema_version: 1, error: { kind: "invalid_argument", message, exit_code: 2 } })
          : "",
      });
      await assert.rejects(fakeSandbox().files.stat("/x"), (e: unknown) => {
        assert.ok(e instanceof sdk.Unsupported && !(e instanceof sdk.InvalidArgument), String(e));
        assert.equal(e.exitCode, 2);
        return true;
      });
    });
  }

  test("exec: a missing sandbox is an error, a missing command a result", async () => {
    const obj = (reason: string, code: number) =>
      JSON.stringify({ schema_version: 1, sandbox: "fake", exit_code: code,
        error: { kind: "not_found", reason, message: `${reason} not found`, exit_code: code } });
    Object.assign(process.env, { FAKE_CODE: "3", FAKE_STDOUT: obj("sandbox", 3) });
    await assert.rejects(fakeSandbox().commands.run(["ls"]), sdk.SandboxNotFound);
    Object.assign(process.env, { FAKE_CODE: "127", FAKE_STDOUT: obj("command", 127) });
    const r = await fakeSandbox().commands.run(["nope"]);
    assert.equal(r.exitCode, 127);
    assert.match(r.stderr, /command not found/);
  });

  test("exec result carries the receipt id", async () => {
    Object.assign(process.env, {
      FAKE_STDOUT: JSON.stringify({ schema_version: 1, exit_code: 0, stdout: "", stderr: "", audit_id: "7:abc",
        receipt_id: "9b2f3c1e-1d2a-4c5b-8e7f-0a1b2c3d4e5f" }),
    });
    const r = await fakeSandbox().commands.run(["true"]);
    assert.equal(r.receiptId, "9b2f3c1e-1d2a-4c5b-8e7f-0a1b2c3d4e5f");
  });

  test("exec: policy refusal vs not-executable", async () => {
    Object.assign(process.env, { FAKE_CODE: "126", FAKE_STDERR: "exec refused: the image is sealed" });
    await assert.rejects(fakeSandbox().commands.run(["ls"]), sdk.PolicyDenied);
    Object.assign(process.env, { FAKE_STDERR: "/x: permission denied in the sandbox" });
    const r = await fakeSandbox().commands.run(["/x"]);
    assert.equal(r.exitCode, 126);
  });

  test("exec flags and JSON result", async () => {
    Object.assign(process.env, {
      FAKE_CODE: "3",
      FAKE_STDOUT: JSON.stringify({
        exit_code: 3, stdout_base64: "AAH/", stdout_bytes: 3, stderr: "e", stderr_bytes: 9, stderr_truncated: true,
        duration_ms: 5, timed_out: false, audit_id: "7:abc",
      }),
    });
    const r = await fakeSandbox().commands.run(["cat"], {
      env: { B: "2", A: "1" }, cwd: "/w", stdin: "x", timeoutMs: 2500, maxOutputBytes: 10,
    });
    assert.equal(r.exitCode, 3);
    assert.deepEqual([...r.stdoutRaw], [0, 1, 255]);
    assert.equal(r.stderr, "e");
    assert.equal(r.truncated, true);
    assert.equal(r.auditId, "7:abc");
    assert.equal(r.ok, false);
    assert.equal(lastCall(), "exec fake --json -e A=1 -e B=2 -w /w --timeout 2500ms --max-output 10 -i -- cat");
  });

  test("garbage output is a TransportError; a hung CLI is bounded", async () => {
    process.env.FAKE_STDOUT = "not json";
    await assert.rejects(fakeSandbox().files.stat("/x"), sdk.TransportError);
    writeFileSync(process.env.MVM_CLI_BIN!, "#!/bin/sh\nexec sleep 30\n");
    process.env.MVM_SDK_CALL_TIMEOUT = "0.5";
    const t0 = Date.now();
    await assert.rejects(fakeSandbox().files.stat("/x"), /no answer/);
    assert.ok(Date.now() - t0 < 10_000);
  });

  test("missing CLI is a TransportError; PATH lookup works", async () => {
    const fake = process.env.MVM_CLI_BIN!;
    process.env.MVM_CLI_BIN = path.join(dir, "nope");
    await assert.rejects(sdk.Sandbox.list(), /MVM_CLI_BIN/);
    delete process.env.MVM_CLI_BIN;
    const savedPath = process.env.PATH;
    process.env.PATH = path.join(dir, "empty");
    await assert.rejects(sdk.Sandbox.list(), /PATH/);
    process.env.PATH = `${path.dirname(fake)}${path.delimiter}${savedPath}`;
    process.env.FAKE_STDOUT = "[]";
    assert.deepEqual(await sdk.Sandbox.list(), []);
  });

  test("ports.forward: missing CLI support and a binding", async () => {
    Object.assign(process.env, { FAKE_CODE: "1", FAKE_STDERR: 'unknown command "forward" for "mvmctl"' });
    await assert.rejects(fakeSandbox().ports.forward(8080), (e: unknown) => e instanceof sdk.Unsupported && /mvmctl forward/.test(e.message));
    Object.assign(process.env, {
      FAKE_CODE: "0",
      FAKE_STDERR: "",
      FAKE_STDOUT: '[{"guest_port":8080,"host_addr":"127.0.0.1","host_port":18080,"proto":"tcp"}]',
    });
    assert.deepEqual(await fakeSandbox().ports.forward(8080, { hostPort: 18080 }), {
      host: "127.0.0.1", hostPort: 18080, guestPort: 8080, proto: "tcp", url: "http://127.0.0.1:18080",
    });
    const log = readFileSync(path.join(dir, "log"), "utf8").trim().split("\n");
    assert.deepEqual(log.slice(-1), ["forward fake -p 18080:8080 --json"]);
  });

  test("network and ports flags", async () => {
    process.env.FAKE_STDOUT = JSON.stringify({ name: "n3", id: "x", state: "running" });
    (await sdk.Sandbox.create("minimal", { name: "n3", network: ["pypi.org", "api.example.com:8443"], ports: ["18080:80"] })).detach();
    assert.ok(lastCall()!.endsWith("--allow pypi.org --allow api.example.com:8443 -p 18080:80"));
    (await sdk.Sandbox.create("minimal", { name: "n3", network: "dev", ports: [8000] })).detach();
    assert.ok(lastCall()!.includes("--network dev") && lastCall()!.endsWith(":8000"));
    await assert.rejects(sdk.Sandbox.create("minimal", { network: ["bad host!"] }), sdk.InvalidArgument);
    await assert.rejects(sdk.Sandbox.create("minimal", { ports: ["x:y"] }), sdk.InvalidArgument);
  });

  test("snapshot, pause, resume and fromSnapshot argv", async () => {
    const sb = fakeSandbox();
    const snap = { tag: "t1", created: "2026-11-30T01:00:00Z", source: "fake", image: "minimal", cpus: 1, memory_mib: 256, bytes: 1234, holds_secrets: false };
    process.env.FAKE_STDOUT = JSON.stringify(snap);
    const info = await sb.snapshot("t1");
    assert.deepEqual([info.tag, info.bytes, info.memoryMib, info.holdsSecrets], ["t1", 1234, 256, false]);
    process.env.FAKE_STDOUT = JSON.stringify({ schema_version: 1, snapshots: [snap] });
    assert.deepEqual((await sdk.Sandbox.listSnapshots()).map((s) => s.tag), ["t1"]);
    process.env.FAKE_STDOUT = JSON.stringify({ name: "fake", id: "0", state: "paused" });
    assert.equal(await sb.pause({ inMemory: true }), "fake");
    assert.equal(sb.info.state, "paused");
    assert.equal(await sb.pause(), "fake");
    process.env.FAKE_STDOUT = JSON.stringify({ name: "fake", id: "0", state: "running" });
    assert.equal(await sb.resume(), sb);
    assert.equal(sb.info.state, "running");
    const other = await sdk.Sandbox.resume("fake");
    assert.ok(other instanceof sdk.Sandbox && other !== sb);
    process.env.FAKE_STDOUT = "";
    await sdk.Sandbox.removeSnapshot("t1");
    process.env.FAKE_STDOUT = JSON.stringify({ name: "c1", id: "1", state: "running" });
    const clone = await sdk.Sandbox.create({ fromSnapshot: "t1", name: "c1", ttl: "5m" });
    clone.detach();
    assert.deepEqual(readFileSync(path.join(dir, "log"), "utf8").trim().split("\n"), [
      "snapshot save fake t1 --json",
      "snapshot ls --json",
      "pause fake --json --in-memory",
      "pause fake --json",
      "resume fake --json",
      "resume fake --json",
      "snapshot rm t1",
      "up --from-snapshot t1 --name c1 --json --ttl 300s",
    ]);
  });

  test("snapshot arguments are checked on the host", async () => {
    for (const bad of ["", "Tag", "-t", "a/b", "a b", "x".repeat(64)]) {
      await assert.rejects(fakeSandbox().snapshot(bad), sdk.InvalidArgument);
      await assert.rejects(sdk.Sandbox.create({ fromSnapshot: bad }), sdk.InvalidArgument);
      await assert.rejects(sdk.Sandbox.removeSnapshot(bad), sdk.InvalidArgument);
    }
    const clashes: sdk.CreateOptions[] = [
      { cpus: 2 }, { memoryMb: 512 }, { env: { A: "b" } }, { network: ["x.org"] }, { ports: [80] }, { mounts: ["./a:/a"] }, { allowRwMount: true },
    ];
    for (const o of clashes) {
      await assert.rejects(sdk.Sandbox.create({ ...o, fromSnapshot: "t1" }), /fromSnapshot cannot be combined/);
    }
    await assert.rejects(sdk.Sandbox.create("minimal", { fromSnapshot: "t1" }), /template/);
    await assert.rejects(sdk.Sandbox.resume("Bad Name"), sdk.InvalidArgument);
    assert.ok(!existsSync(path.join(dir, "log"))); // nothing reached the CLI
  });

  test("a missing snapshot is SnapshotNotFound", async () => {
    Object.assign(process.env, { FAKE_CODE: "3", FAKE_STDERR: 'snapshot "nope": snapshot not found' });
    await assert.rejects(sdk.Sandbox.removeSnapshot("nope"), sdk.SnapshotNotFound);
    process.env.FAKE_STDOUT = JSON.stringify({ error: { kind: "not_found", reason: "snapshot", message: "no snapshot nope" } });
    await assert.rejects(sdk.Sandbox.create({ fromSnapshot: "nope" }), sdk.SnapshotNotFound);
    Object.assign(process.env, {
      FAKE_CODE: "126",
      FAKE_STDOUT: JSON.stringify({ error: { kind: "refused", reason: "integrity", message: "failed verification" } }),
    });
    await assert.rejects(sdk.Sandbox.resume("fake"), sdk.SnapshotError);
  });

  test("create flags, build dirs, idempotent destroy", async () => {
    process.env.FAKE_STDOUT = JSON.stringify({ name: "n1", id: "abc", state: "running" });
    const sb = await sdk.Sandbox.create("python", { name: "n1", cpus: 2, memoryMb: 1024, env: { K: "v" }, ttl: "5m" });
    assert.equal(lastCall(), "up --image python --name n1 --json --ttl 300s --cpus 2 --memory 1024M -e K=v");
    sb.detach();
    const d = path.join(dir, "app");
    mkdirSync(d);
    process.env.FAKE_STDOUT = JSON.stringify({ name: "n2", id: "def", state: "running" });
    const sb2 = await sdk.Sandbox.create(d, { name: "n2" });
    assert.ok(lastCall()!.startsWith(`up ${d} --name n2 --json`));
    assert.equal(sb2.workloadId, "app");
    await sb2.destroy();
    assert.equal(lastCall(), "down n2");
    await sb2.destroy();
    assert.equal(lastCall(), "down n2");
    await assert.rejects(sb2.commands.run("true"), sdk.SandboxNotFound);
  });

  test("create refresh: passes up DIR --refresh", async () => {
    const d = path.join(dir, "app");
    mkdirSync(d);
    writeFileSync(path.join(d, "mvm.toml"), 'image = "registry.example/app:1"\n');
    process.env.FAKE_STDOUT = JSON.stringify({ name: "n3", id: "ghi", state: "running" });
    (await sdk.Sandbox.create(d, { name: "n3", ttl: 0, refresh: true })).detach();
    assert.equal(lastCall(), `up ${d} --name n3 --json --ttl 0s --refresh`);
    (await sdk.Sandbox.create(d, { name: "n3", ttl: 0 })).detach();
    assert.ok(!lastCall()!.includes("--refresh"));
    await assert.rejects(sdk.Sandbox.create({ fromSnapshot: "x", refresh: true }), sdk.InvalidArgument);
  });

  test("create passes an OCI reference through as up --image", async () => {
    process.env.FAKE_STDOUT = JSON.stringify({ name: "o1", id: "abc", state: "running" });
    for (const ref of ["python:3.12-slim", "ghcr.io/org/app@sha256:" + "ab".repeat(32)]) {
      const sb = await sdk.Sandbox.create(ref, { name: "o1" });
      assert.ok(lastCall()!.startsWith(`up --image ${ref} --name o1 --json`), lastCall());
      sb.detach();
    }
  });
});

describe("record mode", () => {
  test("writes the recording without booting", async () => {
    const dir = tmpDir();
    const out = path.join(dir, "rec.json");
    const res = await runNode(fixture("record"), [], { MVM_SDK_MODE: "record", MVM_SDK_OUT_PATH: out, MVM_CLI_BIN: "/nonexistent" });
    assert.equal(res.code, 0, res.stderr);
    const doc = JSON.parse(readFileSync(out, "utf8"));
    assert.equal(doc.schema_version, 1);
    assert.equal(doc.sdk, "typescript");
    assert.equal(doc.workload_id, "tool");
    assert.equal(doc.create.template, "python");
    assert.deepEqual(doc.create.env, { MODE: { kind: "literal", value: "x" } });
    assert.equal(doc.create.ttl_seconds, 300);
    assert.deepEqual(
      doc.ops.map((o: { kind: string }) => o.kind),
      ["files_write", "command_run", "files_mkdir", "command_start", "kill"],
    );
    assert.equal(doc.ops[0].bytes_b64, "cHJpbnQoJ2hlbGxvJyk=");
  });

  test("refuses reads, second sandboxes and bad modes", async () => {
    const saved = { ...process.env };
    try {
      process.env.MVM_SDK_MODE = "record";
      process.env.MVM_SDK_OUT_PATH = path.join(tmpDir(), "r.json");
      Recording.resetForTests();
      const sb = await sdk.Sandbox.create("minimal");
      await assert.rejects(sb.files.read("/etc/hostname"), sdk.Unsupported);
      await assert.rejects(sdk.Sandbox.create("minimal"), sdk.ModeError);
      await sb.destroy();
      Recording.resetForTests();
      process.env.MVM_SDK_MODE = "plan";
      await assert.rejects(sdk.Sandbox.create("minimal"), sdk.ModeError);
      process.env.MVM_SDK_MODE = "record";
      delete process.env.MVM_SDK_OUT_PATH;
      await assert.rejects(sdk.Sandbox.create("minimal"), /MVM_SDK_OUT_PATH/);
    } finally {
      process.env = saved;
      Recording.resetForTests();
    }
  });
});
