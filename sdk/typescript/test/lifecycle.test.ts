// Lifecycle tests, each in its own Node process with its own sandbox: the
// README snippet, cleanup on an uncaught exception and on SIGINT (no QEMU
// left behind), detach in one process then connect from another.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, test } from "node:test";
import { InvalidArgument, Sandbox, SnapshotNotFound } from "../src/index.js";
import { CHILD_TIMEOUT_MS, mvmctl, qemuRunning, fixture, runNode, sandboxNames, setupEnv, waitGone } from "./helpers.js";

const haveCli = setupEnv();
// Lifecycle tests need only a shell: the built-in image boots fastest.
const TEMPLATE = process.env.MVM_SDK_TEST_TEMPLATE || "minimal";

describe("lifecycle", { skip: haveCli ? false : "no mvmctl: set MVM_CLI_BIN or run `make build`" }, () => {
  test("the README snippet, as written", async () => {
    const before = new Set(sandboxNames());
    const res = await runNode(fixture("snippet"));
    assert.equal(res.code, 0, res.stderr);
    assert.ok(sandboxNames().every((n) => before.has(n)), "destroyed when the block ended");
  });

  test("cleanup on an uncaught exception (no await using)", async () => {
    const res = await runNode(fixture("boom"), [TEMPLATE]);
    assert.equal(res.code, 1, res.stderr);
    assert.match(res.stderr, /Error: boom/);
    const info = JSON.parse(res.stdout.split("\n")[0]!);
    await waitGone(info.name, info.id);
  });

  test("cleanup on SIGINT", async () => {
        const child = spawn(process.execPath, [fixture("sigint"), TEMPLATE], { stdio: ["ignore", "pipe", "pipe"] });
    const killer = setTimeout(() => child.kill("SIGKILL"), CHILD_TIMEOUT_MS);
    let stderr = "";
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
    const line = await new Promise<string>((resolve, reject) => {
      let buf = "";
      child.stdout.on("data", (b: Buffer) => {
        buf += b.toString();
        if (buf.includes("\n")) resolve(buf.split("\n")[0]!);
      });
      child.on("close", () => reject(new Error(`child exited early: ${stderr}`)));
    });
    const info = JSON.parse(line);
    assert.ok(sandboxNames().includes(info.name) && qemuRunning(info.id));
    await new Promise((r) => setTimeout(r, 1000));
    child.kill("SIGINT");
    const code = await exited;
    clearTimeout(killer);
    assert.equal(code, 130, stderr);
    await waitGone(info.name, info.id);
  });

  test("detach, then connect from a second process", async () => {
    const res = await runNode(fixture("detach-first"), [TEMPLATE]);
    assert.equal(res.code, 0, res.stderr);
    const [name, handle] = res.stdout.trim().split(/\s+/) as [string, string];
    try {
      assert.ok(sandboxNames(false).includes(name));
      const res2 = await runNode(fixture("detach-second"), [name, handle]);
      assert.equal(res2.code, 0, res2.stderr);
      assert.equal(res2.stdout, "from the first process\n");
      assert.ok(!sandboxNames().includes(name));
    } finally {
      mvmctl("down", name);
    }
  });

  test("ports.forward reaches a guest server", async () => {
    await using sb = await Sandbox.create(TEMPLATE, { workloadId: "ports", ports: [8000] });
    const published = await sb.ports.list();
    assert.deepEqual(published.map((p) => p.guestPort), [8000]);
    await sb.files.write("/tmp/www/index.html", "hello from the guest\n");
    const server = await sb.commands.start(
      "cd /tmp/www && if command -v python3 >/dev/null; then exec python3 -m http.server 8001; " +
        "else exec busybox httpd -f -p 8001 -h /tmp/www; fi",
    );
    const pf = await sb.ports.forward(8001);
    assert.equal(pf.guestPort, 8001);
    assert.equal(pf.host, "127.0.0.1");
    assert.deepEqual(new Set((await sb.ports.list()).map((p) => p.guestPort)), new Set([8000, 8001]));
    let body = "";
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      try {
        const res = await fetch(`${pf.url}/index.html`, { signal: AbortSignal.timeout(5000) });
        body = await res.text();
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 300));
      }
    }
    assert.equal(body, "hello from the guest\n");
    await server.kill();
  });
  test("snapshot, clone, pause to disk, resume by name", async () => {
    const tag = `sdk-ts-${process.pid}`;
    const src = await Sandbox.create(TEMPLATE, { workloadId: "sdk-snap", ttl: "20m" });
    const made: Sandbox[] = [src];
    try {
      await src.files.write("/root/mark", "before-snapshot\n");
      const info = await src.snapshot(tag);
      assert.ok(info.tag === tag && info.bytes > 0 && !info.holdsSecrets);
      assert.ok((await Sandbox.listSnapshots()).some((s) => s.tag === tag));

      const clone = await Sandbox.create({ fromSnapshot: tag, ttl: "10m" });
      made.push(clone);
      assert.notEqual(clone.name, src.name);
      assert.equal(await clone.files.read("/root/mark"), "before-snapshot\n");
      const ids = await Promise.all([src, clone].map(async (sb) => (await sb.commands.run("hostname; cat /etc/machine-id")).stdout));
      assert.equal(ids[1]!.split("\n")[0], clone.name);
      assert.notEqual(ids[0], ids[1]);

      await src.commands.run("echo during > /root/during");
      const name = await src.pause();
      assert.equal((await src.refresh()).state, "paused");
      assert.equal(src.info.raw.paused_to, "disk");
      const resumed = await Sandbox.resume(name);
      made.push(resumed);
      assert.equal(resumed.info.state, "running");
      assert.equal((await resumed.commands.run("cat /root/mark /root/during")).stdout, "before-snapshot\nduring\n");

      await assert.rejects(Sandbox.create({ fromSnapshot: "no-such-snapshot-xyz" }), SnapshotNotFound);
      await assert.rejects(Sandbox.create(TEMPLATE, { fromSnapshot: tag }), InvalidArgument);
      await Sandbox.removeSnapshot(tag);
      await assert.rejects(Sandbox.removeSnapshot(tag), SnapshotNotFound);
    } finally {
      for (const sb of made.reverse()) await sb.destroy().catch(() => undefined);
      mvmctl("snapshot", "rm", tag);
    }
  });
});
