package mcp

// The one place where a failure becomes the tool error a model reads:
// by its kind and reason (internal/errdefs), never by its text. Each
// sentence says what failed and what the model can do next, and none names
// a CLI flag (a model has no command line).

import (
	"errors"
	"fmt"
	"strings"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
)

// op is what a failed call was doing.
type op struct {
	boot     bool   // starting a sandbox (sandbox_create, a transient run)
	template string // boot: the template asked for
	prog     string // running a command: argv[0]
	file     string // a file operation: "read", "write", "list"
	path     string // file operations: the guest path
	handle   string // destroying: the sandbox handle
}

// toolError explains err for a model; see op.
func toolError(o op, err error) error {
	kind, reason := errdefs.KindOf(err), errdefs.ReasonOf(err)
	msg := describe(err)
	if o.boot {
		return bootError(o, kind, msg)
	}
	switch kind {
	case errdefs.KindCanceled:
		if o.prog != "" {
			return errors.New("cancelled; the command was killed")
		}
		return errors.New("cancelled")
	case errdefs.KindRefused:
		if reason == errdefs.ReasonSealed {
			return fmt.Errorf("refused by the sandbox's image (sealed: it runs only what it was built with): %s", msg)
		}
		return fmt.Errorf("refused: %s", msg)
	case errdefs.KindNotFound:
		switch {
		case reason == errdefs.ReasonSandbox:
			return fmt.Errorf("the sandbox no longer exists: %s; sandbox_list shows the live ones", msg)
		case o.prog != "":
			return fmt.Errorf("%s: command not found in the sandbox (does its template have it? run_code python needs the python template, node the node template)", o.prog)
		}
	case errdefs.KindPermissionDenied:
		if o.prog != "" {
			return fmt.Errorf("%s: permission denied in the sandbox", o.prog)
		}
	case errdefs.KindFailedPrecondition:
		if reason == errdefs.ReasonNotRunning {
			return fmt.Errorf("the sandbox is not running: %s; sandbox_destroy it and create a new one", msg)
		}
	case errdefs.KindTransport:
		return fmt.Errorf("lost the connection to the sandbox: %s; it may have stopped (sandbox_list shows its status)", msg)
	case errdefs.KindGuest:
		return fmt.Errorf("the sandbox failed: %s; sandbox_destroy it and create a new one", msg)
	case errdefs.KindUnavailable:
		return fmt.Errorf("this host cannot do that now: %s (the operator of the mvm server must fix it)", msg)
	case errdefs.KindTimeout:
		return fmt.Errorf("timed out: %s", msg)
	case errdefs.KindBusy:
		return fmt.Errorf("busy: %s; retry shortly", msg)
	case errdefs.KindLimitExceeded:
		return fmt.Errorf("too large: %s", withPath(o.path, msg))
	}
	switch {
	case o.file != "":
		return fmt.Errorf("%s %s", o.file, withPath(o.path, msg))
	case o.prog != "":
		return fmt.Errorf("could not run the command: %s", msg)
	case o.handle != "":
		return fmt.Errorf("destroy %s: %s", o.handle, msg)
	}
	return errors.New(msg)
}

// bootError explains a sandbox that did not start; nothing is left
// running after one (the runtime's Up guarantees it).
func bootError(o op, kind errdefs.Kind, msg string) error {
	t := templateName(o.template)
	switch kind {
	case errdefs.KindCanceled:
		return errors.New("cancelled before the sandbox was ready; nothing was left running")
	case errdefs.KindRefused:
		return fmt.Errorf("refused: %s; nothing was started", msg)
	case errdefs.KindNotFound:
		return fmt.Errorf("could not start a sandbox: template %s: %s; give a template (minimal, python, node, debian, ...) or the name of a built image", t, msg)
	case errdefs.KindUnavailable:
		return fmt.Errorf("could not start a sandbox (template %s): this host cannot boot sandboxes now: %s (the operator of the mvm server must fix it)", t, msg)
	case errdefs.KindTimeout:
		return fmt.Errorf("could not start a sandbox (template %s): it did not become ready in time: %s; retry, or ask for a smaller template", t, msg)
	case errdefs.KindLimitExceeded:
		return fmt.Errorf("could not start a sandbox (template %s): %s", t, msg)
	}
	return fmt.Errorf("could not start a sandbox (template %s): %s", t, msg)
}

// withPath puts p in front of msg unless msg names it already.
func withPath(p, msg string) string {
	if p == "" || strings.Contains(msg, p) {
		return msg
	}
	return p + ": " + msg
}
