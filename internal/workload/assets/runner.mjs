// mvm function runner for Node (shipped at /usr/lib/mvm/runner.mjs); same
// protocol as runner.py: `call MODULE FUNCTION` or `serve MODULE FUNCTION DIR`.
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { pathToFileURL } from "node:url";

const [mode, module, fn, dir] = process.argv.slice(2);
const out = fs.createWriteStream(null, { fd: fs.openSync("/proc/self/fd/1", "w") });
console.log = (...a) => console.error(...a);

async function load() {
  const base = path.join(process.cwd(), module.split(".").join("/"));
  for (const ext of [".mjs", ".js", ".cjs"]) {
    if (fs.existsSync(base + ext)) {
      const mod = await import(pathToFileURL(base + ext).href);
      const f = mod[fn] ?? mod.default?.[fn];
      if (typeof f !== "function") throw new TypeError(`${module}.${fn} is not an exported function`);
      return f;
    }
  }
  throw new Error(`no ${module}.mjs/.js/.cjs in ${process.cwd()} (compile TypeScript to JavaScript before building)`);
}

function failure(e) {
  return { ok: false, error: { type: e?.constructor?.name ?? "Error", message: String(e?.message ?? e), traceback: String(e?.stack ?? "") } };
}

async function call(f, req) {
  try {
    const args = Array.isArray(req.args) ? req.args : [];
    const kwargs = req.kwargs && typeof req.kwargs === "object" ? req.kwargs : {};
    if (Object.keys(kwargs).length) args.push(kwargs);
    const r = await f(...args);
    return { ok: true, result: r === undefined ? null : r };
  } catch (e) {
    return failure(e);
  }
}

function encode(reply) {
  try {
    return JSON.stringify(reply);
  } catch (e) {
    return JSON.stringify({ ok: false, error: { type: "ResultNotJSON", message: String(e), traceback: "" } });
  }
}

function write(s) {
  return new Promise((res) => out.write(s, res));
}

let f;
try {
  f = await load();
} catch (e) {
  if (mode === "call") {
    await write(encode(failure(e)) + "\n");
    process.exit(0);
  }
  throw e;
}
if (mode === "call") {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  const text = Buffer.concat(chunks).toString("utf8");
  await write(encode(await call(f, text ? JSON.parse(text) : {})) + "\n");
  process.exit(0);
} else {
  await write("ready\n");
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const id = line.trim();
    if (!id || id.includes("/") || id.startsWith(".")) continue;
    const req = JSON.parse(fs.readFileSync(path.join(dir, id + ".in"), "utf8") || "{}");
    const data = encode(await call(f, req));
    const tmp = path.join(dir, "." + id + ".tmp");
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, path.join(dir, id + ".out"));
    await write("done " + id + "\n");
  }
}
