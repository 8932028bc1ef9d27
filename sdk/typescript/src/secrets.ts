import { InvalidArgument } from "./errors.js";

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const ENV = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
const FILE = /^\/run\/secrets\/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** A reference to a secret stored with `mvmctl secret set NAME`; the value never passes through the SDK. */
export class Secret {
  constructor(readonly name: string) {
    if (typeof name !== "string" || !NAME.test(name)) {
      throw new InvalidArgument(`secret name ${JSON.stringify(name)}: 1-64 of [A-Za-z0-9_.-], starting with a letter or digit`);
    }
  }
  toString(): string {
    return `mvm.secret(${JSON.stringify(this.name)})`;
  }
}

/** Reference the stored secret `name`. */
export function secret(name: string): Secret {
  return new Secret(name);
}

/** {OPENAI_API_KEY: secret("openai")} -> ["--secret", "openai:OPENAI_API_KEY"]; a /run/secrets/FILE key is a file. */
export function secretFlags(secrets: Record<string, Secret> | undefined): string[] {
  if (secrets === undefined) return [];
  if (secrets === null || typeof secrets !== "object") {
    throw new InvalidArgument("secrets: expected an object of ENV_VAR (or /run/secrets/FILE) to secret(NAME)");
  }
  const out: string[] = [];
  for (const [target, ref] of Object.entries(secrets)) {
    if (!(ref instanceof Secret)) {
      throw new InvalidArgument(`secrets[${JSON.stringify(target)}]: expected secret(NAME), not a value; store values with \`mvmctl secret set NAME\``);
    }
    if (!ENV.test(target) && !FILE.test(target)) {
      throw new InvalidArgument(`secrets: ${JSON.stringify(target)} is not an environment variable name nor /run/secrets/FILE`);
    }
    out.push("--secret", `${ref.name}:${target}`);
  }
  return out;
}

/** ["./src:/work", "cache:/cache:ro"] -> -v flags (mvmctl checks them). */
export function mountFlags(mounts: string[] | undefined): string[] {
  if (mounts === undefined) return [];
  if (!Array.isArray(mounts)) throw new InvalidArgument("mounts: expected an array of 'HOST_DIR:GUEST_PATH[:ro|:rw]' or 'VOLUME:GUEST_PATH[:ro|:rw]'");
  const out: string[] = [];
  for (const m of mounts) {
    const n = typeof m === "string" ? m.split(":").length - 1 : 0;
    if (n < 1 || n > 2) throw new InvalidArgument(`mounts: ${JSON.stringify(m)}: expected 'HOST_DIR:GUEST_PATH[:ro|:rw]' or 'VOLUME:GUEST_PATH[:ro|:rw]'`);
    out.push("-v", m);
  }
  return out;
}
