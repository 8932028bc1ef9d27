// Sandboxes created by this process are destroyed when it exits — normal
// exit, uncaught exception, SIGINT, SIGTERM or SIGHUP — unless detached.
// Node runs only synchronous code at exit, so cleanup uses spawnSync.

import { killChild, liveChildren } from "./cli.js";

export interface Owned {
  cleanupSync(): void;
}

const owned = new Set<Owned>();
let installed = false;

const SIGNALS: Record<string, number> = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 };

export function cleanupAll(): void {
  for (const child of [...liveChildren]) killChild(child);
  const victims = [...owned];
  owned.clear();
  for (const sb of victims) {
    try {
      sb.cleanupSync();
    } catch {
      /* never let one hide the others */
    }
  }
}

function onSignal(signal: NodeJS.Signals): void {
  cleanupAll();
  // If we are the only listener, behave as the default action would: exit.
  if (process.listenerCount(signal) <= 1) process.exit(128 + (SIGNALS[signal] ?? 0));
}

export function register(sb: Owned): void {
  owned.add(sb);
  if (installed) return;
  installed = true;
  process.on("exit", cleanupAll);
  for (const sig of Object.keys(SIGNALS) as NodeJS.Signals[]) process.on(sig, onSignal);
}

export function unregister(sb: Owned): void {
  owned.delete(sb);
}
