package runtime

import (
	"context"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/sandbox/sandboxtest"
)

func TestWaitUnknownSandbox(t *testing.T) {
	r := testRuntime(t)
	_, err := r.Wait(context.Background(), "nosuch", time.Second)
	if errdefs.KindOf(err) != errdefs.KindNotFound || errdefs.ReasonOf(err) != errdefs.ReasonSandbox {
		t.Fatalf("got %v (%v/%q)", err, errdefs.KindOf(err), errdefs.ReasonOf(err))
	}
}

func TestWaitFailedSandbox(t *testing.T) {
	r := testRuntime(t)
	sandboxtest.Make(t, r.Layout.Root, "dead", sandboxtest.Options{Status: sandbox.Failed, Reason: "qemu signal: killed"})
	st, err := r.Wait(context.Background(), "dead", time.Minute)
	if !errdefs.IsGuest(err) || errdefs.ReasonOf(err) != errdefs.ReasonFailed || st == nil || st.Status != sandbox.Failed {
		t.Fatalf("got %v (%v/%q), state %+v", err, errdefs.KindOf(err), errdefs.ReasonOf(err), st)
	}
}

// A starting sandbox whose supervisor died is failed, not waited for.
func TestWaitSupervisorDied(t *testing.T) {
	r := testRuntime(t)
	sandboxtest.Make(t, r.Layout.Root, "orphan", sandboxtest.Options{Status: sandbox.Starting, SupervisorPID: 1 << 30})
	_, err := r.Wait(context.Background(), "orphan", time.Minute)
	if !errdefs.IsGuest(err) {
		t.Fatalf("got %v", err)
	}
}

// A sandbox that stays starting (its supervisor alive, no agent) times out
// with the not-ready reason.
func TestWaitNotReady(t *testing.T) {
	r := testRuntime(t)
	sandboxtest.Make(t, r.Layout.Root, "slow", sandboxtest.Options{Status: sandbox.Starting, Supervisor: SupervisorCommand})
	st, err := r.Wait(context.Background(), "slow", 250*time.Millisecond)
	if !errdefs.IsTimeout(err) || errdefs.ReasonOf(err) != errdefs.ReasonNotReady || st.Status != sandbox.Starting {
		t.Fatalf("got %v (%v/%q)", err, errdefs.KindOf(err), errdefs.ReasonOf(err))
	}
}

// Running but no agent answers (no socket): still not ready.
func TestWaitRunningWithoutAgent(t *testing.T) {
	r := testRuntime(t)
	sandboxtest.Make(t, r.Layout.Root, "mute", sandboxtest.Options{Status: sandbox.Running, Supervisor: SupervisorCommand})
	_, err := r.Wait(context.Background(), "mute", 250*time.Millisecond)
	if !errdefs.IsTimeout(err) || errdefs.ReasonOf(err) != errdefs.ReasonNotReady {
		t.Fatalf("got %v (%v/%q)", err, errdefs.KindOf(err), errdefs.ReasonOf(err))
	}
}

func TestWaitCanceled(t *testing.T) {
	r := testRuntime(t)
	sandboxtest.Make(t, r.Layout.Root, "slow", sandboxtest.Options{Status: sandbox.Starting, Supervisor: SupervisorCommand})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := r.Wait(ctx, "slow", time.Hour)
	if !errdefs.IsCanceled(err) {
		t.Fatalf("got %v (%v)", err, errdefs.KindOf(err))
	}
}

func TestNetInfo(t *testing.T) {
	r := testRuntime(t)
	pub := []netpolicy.Publish{{HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80}}
	sandboxtest.Make(t, r.Layout.Root, "web", sandboxtest.Options{Network: "allowlist", Ports: pub})
	sandboxtest.Make(t, r.Layout.Root, "quiet", sandboxtest.Options{})
	st, err := r.Get("web")
	if err != nil {
		t.Fatal(err)
	}
	if n := r.Net(st); n.Mode != "allowlist" || len(n.Ports) != 1 || n.Ports[0] != pub[0] {
		t.Errorf("web: %+v", n)
	}
	st, _ = r.Get("quiet")
	if n := r.Net(st); n.Mode != "none" || len(n.Ports) != 0 {
		t.Errorf("quiet: %+v", n)
	}
}

// TestRuntimeErrorsAreKinded: the runtime's errors carry their kind, and
// option errors name options, not CLI flags (MCP shows them to models).
func TestRuntimeErrorsAreKinded(t *testing.T) {
	r := testRuntime(t)
	_, err := r.Get("nosuch")
	if !errdefs.IsNotFound(err) || errdefs.ReasonOf(err) != errdefs.ReasonSandbox {
		t.Errorf("get: %v", err)
	}
	sandboxtest.Make(t, r.Layout.Root, "off", sandboxtest.Options{Status: sandbox.Stopped})
	_, _, err = r.Connect(context.Background(), "off")
	if !errdefs.IsFailedPrecondition(err) || errdefs.ReasonOf(err) != errdefs.ReasonNotRunning {
		t.Errorf("connect to a stopped sandbox: %v", err)
	}
	_, err = r.Exec(context.Background(), "off", ExecOptions{Argv: []string{"true"}, Env: map[string]string{"1X": "y"}})
	if !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad env: %v", err)
	}
	for _, o := range []UpOptions{{CPUs: 65}, {MemoryMiB: 1}, {DiskMiB: 1}, {TTL: -time.Second}, {Name: "Bad Name"}} {
		err := o.Validate()
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("%+v: %v is not an invalid argument", o, err)
		}
		if err != nil && containsFlag(err.Error()) {
			t.Errorf("%+v: %q names a CLI flag", o, err)
		}
	}
}

func containsFlag(s string) bool {
	for i := 0; i+2 < len(s); i++ {
		if s[i] == '-' && s[i+1] == '-' && s[i+2] >= 'a' && s[i+2] <= 'z' {
			return true
		}
	}
	return false
}
