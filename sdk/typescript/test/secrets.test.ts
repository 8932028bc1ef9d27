// Secret references and mounts become mvmctl flags; values are refused.

import assert from "node:assert/strict";
import { test } from "node:test";
import * as sdk from "../src/index.js";
import { mountFlags, secretFlags } from "../src/secrets.js";

test("secrets are names, never values", () => {
  assert.deepEqual(secretFlags({ OPENAI_API_KEY: sdk.secret("openai"), "/run/secrets/k": sdk.secret("k") }), [
    "--secret", "openai:OPENAI_API_KEY", "--secret", "k:/run/secrets/k",
  ]);
  assert.throws(() => secretFlags({ OPENAI_API_KEY: "sk-raw" as unknown as sdk.Secret }), sdk.InvalidArgument);
  assert.throws(() => secretFlags({ "1BAD": sdk.secret("x") }), sdk.InvalidArgument);
  assert.throws(() => sdk.secret("../x"), sdk.InvalidArgument);
});

test("mounts become -v flags", () => {
  assert.deepEqual(mountFlags(["./src:/work", "cache:/cache:ro"]), ["-v", "./src:/work", "-v", "cache:/cache:ro"]);
  assert.throws(() => mountFlags(["/nocolon"]), sdk.InvalidArgument);
  assert.throws(() => mountFlags("/a:/b" as unknown as string[]), sdk.InvalidArgument);
});
