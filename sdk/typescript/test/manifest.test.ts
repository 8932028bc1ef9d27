// A build directory's mvm.toml asks for a host directory ([[mount]]), a
// stored secret ([secrets]) and egress (allow): each is refused through the
// SDK (PolicyDenied with the CLI's exit 126 and message, nothing created)
// until its allowManifest* option grants it; with all three the sandbox
// boots with them and its signed plan records the consents.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { CLIError, CLIInvalidArgument, InvalidArgument, PolicyDenied, Sandbox, type CreateOptions } from "../src/index.js";
import { sandboxNames, setupEnv, tmpDir } from "./helpers.js";

const haveCli = setupEnv();
const VALUE = "ts-manifest-secret-5e6f7a8b";

describe("manifest requests", { skip: haveCli ? false : "no mvmctl: set MVM_CLI_BIN or run `make build`" }, () => {
  test("[[mount]], [secrets] and allow need allowManifestMounts/Secrets/Network", async () => {
    const base = tmpDir();
    try {
      const app = path.join(base, "app");
      mkdirSync(path.join(app, "data"), { recursive: true });
      writeFileSync(path.join(app, "data", "hello.txt"), "from the manifest's directory\n");
      writeFileSync(
        path.join(app, "mvm.toml"),
        'template = "minimal"\nallow = ["ok.test:8080"]\n[files]\n"/work" = ""\n' +
          '[secrets]\nAPI_KEY = "ts-mkey"\n[[mount]]\nhost = "data"\nguest = "/data"\n',
      );
      writeFileSync(path.join(base, "hosts"), "127.0.0.1 ok.test\n");
      process.env.MVM_NET_HOSTS = path.join(base, "hosts");
      const set = spawnSync(process.env.MVM_CLI_BIN!, ["secret", "set", "ts-mkey"], { input: VALUE + "\n", encoding: "utf8", timeout: 60_000 });
      assert.equal(set.status, 0, set.stderr);

      const name = "sdk-ts-manifest-consent";
      const refused: [CreateOptions, string[]][] = [
        [{}, ["--allow-manifest-mounts", `${path.join(app, "data")}:/data:ro`]],
        [{ allowManifestMounts: true }, ["--allow-manifest-secrets", "ts-mkey:API_KEY"]],
        [{ allowManifestMounts: true, allowManifestSecrets: true }, ["--allow-manifest-network", "ok.test:8080"]],
      ];
      for (const [grants, wants] of refused) {
        await assert.rejects(Sandbox.create(app, { name, ttl: "5m", ...grants }), (e: unknown) => {
          assert.ok(e instanceof PolicyDenied, `${JSON.stringify(grants)}: ${String(e)}`);
          assert.equal(e.exitCode, 126);
          for (const w of wants) assert.ok(e.message.includes(w), `${JSON.stringify(grants)}: want ${w} in ${e.message}`);
          assert.ok(!String(e).includes(VALUE));
          return true;
        });
        assert.ok(!sandboxNames().includes(name), `${JSON.stringify(grants)}: a sandbox was left behind`);
      }

      await using sb = await Sandbox.create(app, {
        name,
        ttl: "5m",
        allowManifestMounts: true,
        allowManifestSecrets: true,
        allowManifestNetwork: true,
      });
      const r = await sb.commands.run('cat /data/hello.txt; echo "key=$API_KEY"');
      assert.equal(r.stdout, "from the manifest's directory\nkey=[secret:ts-mkey]\n");
      const plan = readFileSync(path.join(process.env.MVM_STATE_DIR!, "sb", sb.id, "plan.json"), "utf8");
      assert.ok(plan.includes('"allow_manifest_mounts":true') && plan.includes('"allow_manifest_secrets":true'), plan);
      assert.equal(plan.split('"origin":"manifest"').length - 1, 2, plan); // the mount and the secret
      assert.ok(plan.includes('"allow":["ok.test:8080"]'), plan);
      assert.ok(!plan.includes(VALUE));

      await assert.rejects(Sandbox.create({ fromSnapshot: "x", allowManifestMounts: true }), InvalidArgument);
    } finally {
      delete process.env.MVM_NET_HOSTS;
      rmSync(base, { recursive: true, force: true });
    }
  });

  test("refresh reaches up --refresh, which a template name refuses before anything is created", async () => {
    const name = "sdk-ts-refresh-refused";
    await assert.rejects(Sandbox.create("minimal", { name, ttl: "5m", refresh: true }), (e: unknown) => {
      // The CLI's refusal (kind invalid_argument, exit 2) is the SDK's
      // InvalidArgument, and still a CLIError.
      assert.ok(e instanceof CLIInvalidArgument && e instanceof InvalidArgument && e instanceof CLIError, String(e));
      assert.equal(e.exitCode, 2);
      assert.ok(e.message.includes("image pull"), e.message);
      assert.ok(e.argv?.includes("--refresh") && e.stderr.includes("image pull"), String(e.argv));
      return true;
    });
    assert.ok(!sandboxNames().includes(name));
  });
});
