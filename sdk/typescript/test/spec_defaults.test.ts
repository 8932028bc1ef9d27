// The SDK bounds SPECIFICATION.md lists: CLI call and create deadlines.

import assert from "node:assert/strict";
import { test } from "node:test";
import { callTimeoutMs, createTimeoutMs } from "../src/cli.js";
import { DEFAULT_RUN_TIMEOUT_MS } from "../src/commands.js";

test("call and create deadlines", () => {
  delete process.env.MVM_SDK_CALL_TIMEOUT;
  delete process.env.MVM_SDK_CREATE_TIMEOUT;
  assert.equal(callTimeoutMs(), 120_000);
  assert.equal(createTimeoutMs(), 900_000);
  process.env.MVM_SDK_CALL_TIMEOUT = "7";
  process.env.MVM_SDK_CREATE_TIMEOUT = "0";
  assert.equal(callTimeoutMs(), 7_000);
  assert.equal(createTimeoutMs(), 900_000);
  delete process.env.MVM_SDK_CALL_TIMEOUT;
  delete process.env.MVM_SDK_CREATE_TIMEOUT;
});

test("command timeout default", () => {
  assert.equal(DEFAULT_RUN_TIMEOUT_MS, 60_000);
});
