// The declaration helpers: inert at run time, read statically by `mvmctl
// compile`, and `workload(NAME).remote(...)` through `mvmctl invoke`
// against a real microVM.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import * as mvm from "../src/index.js";
import { setupEnv } from "./helpers.js";

setupEnv();
const mvmctl = (...args: string[]) => spawnSync(process.env.MVM_CLI_BIN ?? "mvmctl", args, { encoding: "utf8", timeout: 900_000 });

export const worker = mvm.app({
  name: "tslocal",
  source: mvm.local_path(".", { include: ["*.js"] }),
  image: mvm.node_image("20"),
  network: mvm.network({ mode: "deny" }),
})(async (x: number): Promise<number> => x + 1);

test("app returns the function unchanged; helpers are inert", async () => {
  assert.equal(await worker(1), 2);
  assert.deepEqual(mvm.nix_packages(["nodejs_20"]), { kind: "nix_packages", packages: ["nodejs_20"] });
  assert.deepEqual(mvm.oci_image("node:20-slim"), { kind: "oci_image", ref: "node:20-slim" });
  assert.equal(mvm.ociImage, mvm.oci_image);
  assert.ok(mvm.secret("t") instanceof mvm.Secret && mvm.secret("t").name === "t"); // one helper for declarations and Sandbox.create
});

test("workload(NAME).remote calls the function in the microVM", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "mvm-decl-"));
  writeFileSync(
    path.join(dir, "calc.mjs"),
    `import * as mvm from "mvm-sdk";
export const calc = mvm.app({ name: "tscalc", image: mvm.node_image("20"), entrypoint: mvm.entrypoint_function({ warm: true }) })(
  async (a, b = 0) => { if (a < 0) throw new RangeError("negative"); return a + b; });
`,
  );
  const up = mvmctl("up", path.join(dir, "calc.mjs"));
  assert.equal(up.status, 0, up.stderr);
  try {
    const calc = mvm.workload("tscalc");
    assert.equal(await calc.remote(2, 3), 5);
    await assert.rejects(calc.remote(-1), (e: unknown) => {
      assert.ok(e instanceof mvm.RemoteError);
      assert.equal(e.type, "RangeError");
      assert.equal(e.remoteMessage, "negative");
      return true;
    });
  } finally {
    mvmctl("down", "tscalc");
  }
});
