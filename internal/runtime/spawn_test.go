package runtime

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// TestSpawnSupervisorVanished: a supervisor that exits without a ready
// line (killed, say, between announcing the sandbox running and telling
// its caller) is reported as vanished, which Up never answers with a
// second, cold boot; a supervisor that reports a failure is not. The
// cold retry after a killed restore used to leave `mvmctl run` running a
// second VM (TestSupervisorKillTakesVMDown hung in CI on it).
func TestSpawnSupervisorVanished(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		vanished     bool
		want         string
	}{
		{"killed", "kill -9 $$", true, "supervisor exited before the sandbox was ready"},
		{"exited", "exit 0", true, "supervisor exited before the sandbox was ready"},
		{"reported", `echo '{"ok":false,"error":"the saved state does not load"}' >&3`, false, "the saved state does not load"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			exe := filepath.Join(dir, "fake-supervisor")
			if err := os.WriteFile(exe, []byte("#!/bin/sh\n"+tc.script+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			r := &Runtime{Exe: exe}
			_, _, err := r.spawnSupervisor(context.Background(), dir, time.Minute, false, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if got := errors.Is(err, errSupervisorVanished); got != tc.vanished {
				t.Fatalf("vanished = %v, want %v (%v)", got, tc.vanished, err)
			}
		})
	}
}

// TestControlErrorsClassified: a lifecycle request to a sandbox whose
// supervisor is gone is a transport error in the one error model (it was
// unclassified).
func TestControlErrorsClassified(t *testing.T) {
	state := t.TempDir()
	r := &Runtime{Layout: sandbox.Layout{Root: state}}
	id := "0123456789ab"
	dir := r.Layout.Dir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := r.Layout.Reserve("gone", id); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := r.Control(ctx, "gone", "pause")
	if k := errdefs.KindOf(err); k != errdefs.KindTransport {
		t.Fatalf("kind %q, want transport: %v", k, err)
	}
}
