"""mvm function runner (shipped into workload images at /usr/lib/mvm/runner.py).

    runner.py call MODULE FUNCTION          one call: request on stdin, reply on stdout
    runner.py serve MODULE FUNCTION DIR     warm worker: "ID\\n" lines on stdin name
                                            DIR/ID.in; the reply goes to DIR/ID.out and
                                            "done ID" is printed

A request is {"args": [...], "kwargs": {...}}. A reply is {"ok": true, "result": X}
or {"ok": false, "error": {"type", "message", "traceback"}}. The user's own prints go
to stderr so they never mix with replies.
"""
import asyncio
import inspect
import json
import os
import sys
import traceback
import types


def _stub_mvm():
    try:
        import mvm  # noqa: F401
        if hasattr(mvm, "app"):
            return
    except Exception:
        pass
    m = types.ModuleType("mvm")

    def app(*a, **k):
        if len(a) == 1 and callable(a[0]) and not k:
            return a[0]
        return lambda f: f

    def _helper(name):
        def h(*a, **k):
            return {"helper": name, "args": list(a), "kwargs": k}
        return h

    m.app = app
    m.__getattr__ = _helper  # every other helper is inert at run time
    sys.modules["mvm"] = m


def load(module, function):
    sys.path.insert(0, os.getcwd())
    _stub_mvm()
    mod = __import__(module, fromlist=["_"])
    fn = getattr(mod, function)
    return fn


def call(fn, req):
    args = req.get("args", [])
    kwargs = req.get("kwargs", {})
    try:
        r = fn(*args, **kwargs)
        if inspect.isawaitable(r):
            r = asyncio.run(_await(r))
        return {"ok": True, "result": r}
    except BaseException as e:  # noqa: BLE001 - every failure is reported
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"ok": False, "error": {"type": type(e).__name__, "message": str(e),
                                       "traceback": traceback.format_exc()}}


async def _await(r):
    return await r


def encode(reply):
    try:
        return json.dumps(reply, allow_nan=False)
    except (TypeError, ValueError) as e:
        return json.dumps({"ok": False, "error": {"type": "ResultNotJSON", "message": str(e),
                                                  "traceback": ""}})


def main():
    mode, module, function = sys.argv[1], sys.argv[2], sys.argv[3]
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        fn = load(module, function)
    except BaseException as e:  # noqa: BLE001
        reply = {"ok": False, "error": {"type": type(e).__name__, "message": "cannot load %s.%s: %s" % (module, function, e),
                                        "traceback": traceback.format_exc()}}
        if mode == "call":
            out.write(encode(reply) + "\n")
            out.flush()
            return
        raise
    if mode == "call":
        req = json.loads(sys.stdin.buffer.read() or b"{}")
        out.write(encode(call(fn, req)) + "\n")
        out.flush()
        return
    d = sys.argv[4]
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        rid = line.strip()
        if not rid or "/" in rid or rid.startswith("."):
            continue
        with open(os.path.join(d, rid + ".in"), "rb") as f:
            req = json.loads(f.read() or b"{}")
        data = encode(call(fn, req))
        tmp = os.path.join(d, "." + rid + ".tmp")
        with open(tmp, "w") as f:
            f.write(data)
        os.rename(tmp, os.path.join(d, rid + ".out"))
        out.write("done " + rid + "\n")
        out.flush()


if __name__ == "__main__":
    main()
