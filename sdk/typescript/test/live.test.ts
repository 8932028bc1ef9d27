// Tests against one real sandbox shared by the whole file: commands, files,
// streaming, logs, pause/resume and error types.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import * as sdk from "../src/index.js";
import { mvmctl, sandboxNames, setupEnv } from "./helpers.js";

const haveCli = setupEnv();

describe("live sandbox", { skip: haveCli ? false : "no mvmctl: set MVM_CLI_BIN or run `make build`" }, () => {
  let sb: sdk.Sandbox;

  before(async () => {
    // No fallback: if this mvmctl cannot boot the template, the suite fails.
    const wanted = process.env.MVM_SDK_TEST_TEMPLATE || "python";
    sb = await sdk.Sandbox.create(wanted, { workloadId: "sdk-ts-test", ttl: "20m" });
  });
  after(async () => {
    await sb?.destroy();
  });

  test("run returns output and the audit id", async () => {
    const r = await sb.commands.run(["sh", "-c", "echo out; echo err >&2"]);
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, "out\n");
    assert.equal(r.stderr, "err\n");
    assert.equal(r.timedOut, false);
    assert.equal(r.truncated, false);
    assert.ok(r.ok && r.durationMs >= 0);
    // Every exec is recorded: the audit entry and the signed receipt's id
    // come through (receiptId was always null before exec --json named it).
    assert.match(r.auditId ?? "", /^\d+:[0-9a-f]{16}$/);
    assert.match(r.receiptId ?? "", /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  test("non-zero exit is a result; not found is 127", async () => {
    const r = await sb.commands.run("echo partial; exit 3");
    assert.equal(r.exitCode, 3);
    assert.equal(r.stdout, "partial\n");
    assert.equal(r.ok, false);
    const nf = await sb.commands.run(["no-such-command-xyz"]);
    assert.equal(nf.exitCode, 127);
    assert.match(nf.stderr, /not found/);
  });

  test("timeout throws CommandTimeout with the partial result", async () => {
    const t0 = Date.now();
    await assert.rejects(sb.commands.run("echo started; sleep 30", { timeoutMs: 1500 }), (e: unknown) => {
      assert.ok(e instanceof sdk.CommandTimeout);
      assert.equal(e.result?.timedOut, true);
      assert.equal(e.result?.stdout, "started\n");
      return true;
    });
    assert.ok(Date.now() - t0 < 15_000);
    const r = await sb.commands.run(["sleep", "5"], { timeoutMs: 500, raiseOnTimeout: false });
    assert.equal(r.timedOut, true);
    assert.equal(r.exitCode, 124);
  });

  test("env, cwd, stdin and bounded output", async () => {
    const r = await sb.commands.run('echo "$GREETING"; pwd', { env: { GREETING: "hi there" }, cwd: "/tmp" });
    assert.equal(r.stdout, "hi there\n/tmp\n");
    const bin = Buffer.from([0, 1, 0x62, 0xff]);
    assert.deepEqual((await sb.commands.run(["cat"], { stdin: bin })).stdoutRaw, bin);
    const big = await sb.commands.run("head -c 100000 /dev/zero | tr '\\0' a", { maxOutputBytes: 1000 });
    assert.equal(big.stdoutTruncated, true);
    assert.equal(big.stdout.length, 1000);
    assert.equal(big.stdoutSize, 100000);
  });

  test("large binary file round trip", async () => {
    const data = Buffer.concat([randomBytes(8 * 1024 * 1024), Buffer.from(Array.from({ length: 256 }, (_, i) => i))]);
    const info = await sb.files.write("/tmp/big/blob.bin", data);
    assert.equal(info.size, data.length);
    assert.ok((await sb.files.readBytes("/tmp/big/blob.bin")).equals(data));
    assert.equal((await sb.commands.run("wc -c < /tmp/big/blob.bin")).stdout.trim(), String(data.length));
    await sb.files.remove("/tmp/big", { recursive: true });
  });

  test("text files: list, remove, exists, mkdir, rename", async () => {
    const f = sb.files;
    await f.mkdir("/srv/t/sub");
    await f.write("/srv/t/a.txt", "héllo\n");
    await f.write("/srv/t/b.sh", "#!/bin/sh\necho ran\n", { mode: 0o755 });
    assert.equal(await f.read("/srv/t/a.txt"), "héllo\n");
    const entries = new Map((await f.list("/srv/t")).map((e) => [e.name, e]));
    assert.deepEqual([...entries.keys()].sort(), ["a.txt", "b.sh", "sub"]);
    assert.ok(entries.get("sub")!.isDir && entries.get("a.txt")!.isFile);
    assert.equal(entries.get("a.txt")!.size, 7);
    assert.equal(entries.get("b.sh")!.mode, "0755");
    assert.equal((await sb.commands.run(["/srv/t/b.sh"])).stdout, "ran\n");
    await f.write("/srv/t/a.txt", "more\n", { append: true });
    assert.equal(await f.read("/srv/t/a.txt"), "héllo\nmore\n");
    await f.rename("/srv/t/a.txt", "/srv/t/c.txt");
    assert.ok((await f.exists("/srv/t/c.txt")) && !(await f.exists("/srv/t/a.txt")));
    await f.remove("/srv/t/c.txt");
    assert.equal(await f.exists("/srv/t/c.txt"), false);
    await assert.rejects(f.remove("/srv/t/c.txt"), sdk.FileNotFound);
    await f.remove("/srv/t/c.txt", { missingOk: true });
    await assert.rejects(f.remove("/srv/t"), (e: unknown) => e instanceof sdk.CLIError && e.exitCode === 7);
    await f.remove("/srv/t", { recursive: true });
    assert.equal(await f.exists("/srv/t"), false);
  });

  test("file errors", async () => {
    await assert.rejects(sb.files.read("/no/such/file"), (e: unknown) => e instanceof sdk.FileNotFound && e.exitCode === 4);
    await assert.rejects(sb.files.read("/etc/../etc/passwd"), sdk.InvalidArgument);
    await assert.rejects(sb.files.write("relative.txt", "x"), sdk.InvalidArgument);
  });

  test("streaming output of a long-running process", async () => {
    const seen: [number, string][] = [];
    const errs: string[] = [];
    const h = await sb.commands.start("for i in 1 2 3 4; do echo tick$i; sleep 0.7; done; echo done >&2; exit 5", {
      onStdout: (s) => seen.push([Date.now(), s]),
      onStderr: (s) => errs.push(s),
    });
    const lines: string[] = [];
    const arrival: number[] = [];
    for await (const line of h.lines()) {
      lines.push(line);
      arrival.push(Date.now());
    }
    assert.deepEqual(lines, ["tick1", "tick2", "tick3", "tick4"]);
    assert.ok(arrival.at(-1)! - arrival[0]! > 1000, "output was streamed, not delivered at the end");
    const r = await h.wait({ timeoutMs: 30_000 });
    assert.equal(r.exitCode, 5);
    assert.equal(r.stdout, "tick1\ntick2\ntick3\ntick4\n");
    assert.equal(r.stderr, "done\n");
    assert.equal(seen.map(([, s]) => s).join(""), r.stdout);
    assert.equal(errs.join(""), "done\n");
    assert.ok(seen.at(-1)![0] - seen[0]![0] > 1000);
    assert.equal(h.exitCode, 5);
    assert.equal(await h.isRunning(), false);
  });

  test("start: stdin, kill, wait timeout", async () => {
    let h = await sb.commands.start(["cat"], { stdin: true });
    await h.sendStdin("line one\n");
    await h.sendStdin(Buffer.from("line two\n"), { close: true });
    assert.equal((await h.wait({ timeoutMs: 30_000 })).stdout, "line one\nline two\n");
    h = await sb.commands.start(["tr", "a-z", "A-Z"], { stdin: "shout\n" });
    assert.equal((await h.wait({ timeoutMs: 30_000 })).stdout, "SHOUT\n");
    h = await sb.commands.start(["sleep", "300"]);
    assert.equal(await h.isRunning(), true);
    assert.ok((await sb.commands.list()).some((p) => p.handle === h.handle && p.state === "running"));
    await assert.rejects(h.wait({ timeoutMs: 500 }), sdk.CommandTimeout);
    await h.kill();
    assert.equal((await h.wait({ timeoutMs: 30_000 })).exitCode, 137);
    await h.kill();
  });

  test("concurrent runs share the sandbox", async () => {
    const outs = await Promise.all([0, 1, 2, 3].map((i) => sb.commands.run(["echo", String(i)])));
    assert.deepEqual(outs.map((r) => r.stdout.trim()).sort(), ["0", "1", "2", "3"]);
  });

  test("logs, list, connect, info, stats", async () => {
    assert.equal(typeof (await sb.logs()), "string");
    assert.ok((await sb.logs({ lines: 1 })).split("\n").filter(Boolean).length <= 1);
    assert.ok((await sdk.Sandbox.list()).some((s) => s.name === sb.name));
    assert.ok(sandboxNames().includes(sb.name));
    const other = await sdk.Sandbox.connect(sb.name);
    assert.equal(other.id, sb.id);
    assert.equal(other.info.state, "running");
    assert.equal((await other.commands.run("echo via-connect")).stdout, "via-connect\n");
    assert.equal(await sb.isRunning(), true);
    assert.ok(typeof (await sb.stats()) === "object");
  });

  test("pause in memory and resume (pause to disk: lifecycle.test.ts)", async () => {
    assert.equal(await sb.pause({ inMemory: true }), sb.name);
    try {
      assert.equal((await sb.refresh()).state, "paused");
      await assert.rejects(sb.commands.run("true", { timeoutMs: 5000 }), sdk.MvmError);
    } finally {
      await sb.resume();
    }
    assert.equal((await sb.refresh()).state, "running");
    assert.equal((await sb.commands.run("echo back")).stdout, "back\n");
  });

  test("unknown sandboxes raise SandboxNotFound", async () => {
    await assert.rejects(sdk.Sandbox.connect("no-such-sandbox-xyz"), sdk.SandboxNotFound);
    const ghost = new sdk.Sandbox({ ...sb.info, name: "no-such-sandbox-xyz" });
    await assert.rejects(ghost.commands.run("true"), (e: unknown) => e instanceof sdk.SandboxNotFound && e.exitCode === 3);
    await assert.rejects(ghost.files.read("/etc/hostname"), sdk.SandboxNotFound);
    await ghost.destroy();
    assert.equal(mvmctl("down", "no-such-sandbox-xyz").code, 3);
  });
});
