package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// failingSaver is a machine whose state save writes half a file and fails.
type failingSaver struct{ *fakeVM }

func (v failingSaver) SaveState(_ context.Context, path string) (int64, error) {
	v.record("save")
	os.WriteFile(path, []byte("half"), 0o600)
	return 0, errors.New("migration failed: no space left on device")
}
func (v failingSaver) CompleteIncoming(context.Context) error { return nil }

// TestSaveFailuresLeaveNothing: both kinds of save (a snapshot, a pause
// to disk) go through beginSave. Without a host key, or for a sandbox
// with a host directory, each is refused before anything is written; a
// save that fails half way leaves no directory in the store or the
// sandbox, continues the guest, and releases the save lock (the next save
// runs).
func TestSaveFailuresLeaveNothing(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(t.TempDir(), "snapshots")
	vm := &fakeVM{dir: dir, done: make(chan struct{})}
	s := &supervisor{dir: dir, vm: failingSaver{vm}, events: func(string, *sandbox.State, map[string]any) {}}
	s.state.Status = sandbox.Running
	save := map[string]func() error{
		"snapshot": func() error {
			_, err := s.saveSnapshot(&sandbox.SnapshotRequest{StoreDir: store, Tag: "t"})
			return err
		},
		"pause": func() error { _, err := s.suspend(); return err },
	}
	leftovers := func() []string {
		var out []string
		for _, d := range []string{store, dir} {
			ents, _ := os.ReadDir(d)
			for _, e := range ents {
				out = append(out, filepath.Join(d, e.Name()))
			}
		}
		return out
	}
	for what, f := range save {
		if err := f(); err == nil || !strings.Contains(err.Error(), what+": the supervisor has no host key") {
			t.Errorf("%s without a host key: %v", what, err)
		}
	}
	s.signer = evidence.GenerateSigner("host:test")
	s.spec.VM.Shares = []backend.Share{{Tag: "m0", HostPath: dir}}
	for what, f := range save {
		if err := f(); err == nil || !strings.Contains(err.Error(), "host directory") {
			t.Errorf("%s with a host directory: %v", what, err)
		}
	}
	s.spec.VM.Shares = nil
	if l := leftovers(); len(l) != 0 {
		t.Fatalf("refused saves wrote %v", l)
	}
	for _, what := range []string{"snapshot", "pause", "snapshot", "pause"} {
		before := len(vm.called())
		err := save[what]()
		if err == nil || !strings.Contains(err.Error(), "no space left") {
			t.Fatalf("%s whose save fails: %v", what, err)
		}
		if l := leftovers(); len(l) != 0 {
			t.Fatalf("%s whose save failed left %v", what, l)
		}
		if calls := strings.Join(vm.called()[before:], ","); calls != "pause,save,resume" {
			t.Fatalf("%s whose save failed: machine calls %s (the guest must continue)", what, calls)
		}
	}
	if _, err := (&snapshot.Store{Dir: store}).Get("t"); !errors.Is(err, snapshot.ErrNotFound) {
		t.Fatalf("a failed save is listed: %v", err)
	}
}

// blockingSaver is a machine whose first state save waits for release.
type blockingSaver struct {
	*fakeVM
	first   *sync.Once
	saving  chan struct{}
	release chan struct{}
}

func (v blockingSaver) SaveState(_ context.Context, path string) (int64, error) {
	v.record("save")
	v.first.Do(func() {
		close(v.saving)
		<-v.release
	})
	return 5, os.WriteFile(path, []byte("state"), 0o600)
}
func (v blockingSaver) CompleteIncoming(context.Context) error { return nil }

// control sends one request to s.handleControl and returns the answer.
func control(s *supervisor, req sandbox.Request) <-chan sandbox.Response {
	out := make(chan sandbox.Response, 1)
	host, sup := net.Pipe()
	go s.handleControl(sup)
	go func() {
		defer host.Close()
		b, _ := json.Marshal(req)
		host.Write(append(b, '\n'))
		var resp sandbox.Response
		line, _ := bufio.NewReader(host).ReadBytes('\n')
		json.Unmarshal(line, &resp)
		out <- resp
	}()
	return out
}

// TestNothingContinuesAPauseToDisk: a continue, a stop of the vCPUs, a snapshot and a
// second pause to disk that reach the supervisor while it pauses to disk
// (their caller's lifecycle lock gone with a killed CLI) wait for the save
// and are then refused: the guest never runs on after its memory was
// saved, and nothing saves the ending VM again. (Before, the continue was
// carried out in the middle of the save.)
func TestNothingContinuesAPauseToDisk(t *testing.T) {
	dir := t.TempDir()
	vm := &fakeVM{dir: dir, done: make(chan struct{})}
	bs := blockingSaver{fakeVM: vm, first: &sync.Once{}, saving: make(chan struct{}), release: make(chan struct{})}
	s := &supervisor{dir: dir, vm: bs, signer: evidence.GenerateSigner("host:test"), events: func(string, *sandbox.State, map[string]any) {}}
	s.state.Status = sandbox.Running
	paused := make(chan error, 1)
	go func() { _, err := s.suspend(); paused <- err }()
	<-bs.saving
	var answers []<-chan sandbox.Response
	for _, op := range []string{"resume", "pause"} {
		answers = append(answers, control(s, sandbox.Request{Op: op}))
	}
	answers = append(answers,
		control(s, sandbox.Request{Op: "snapshot", Snapshot: &sandbox.SnapshotRequest{StoreDir: t.TempDir(), Tag: "t"}}),
		control(s, sandbox.Request{Op: "suspend"}))
	close(bs.release)
	if err := <-paused; err != nil {
		t.Fatalf("pause to disk: %v", err)
	}
	for i, a := range answers {
		if resp := <-a; resp.OK || !strings.Contains(resp.Error, "being paused to disk") {
			t.Errorf("request %d during a pause to disk: %+v", i, resp)
		}
	}
	if calls := strings.Join(vm.called(), ","); calls != "pause,save" {
		t.Fatalf("machine calls %s: want the pause's own stop and save only", calls)
	}
}
