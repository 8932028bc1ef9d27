package runtime

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// TestLiveProcesses: the calls on a started process follow its life
// (signal, resize and close reach its stream while it runs; not_found
// once it exited; delete only once exited; Down ends the streams), and
// are safe to make concurrently with its exit.
func TestLiveProcesses(t *testing.T) {
	root := t.TempDir()
	r := &Runtime{Dirs: paths.Dirs{State: root, Data: root}, Layout: sandbox.Layout{Root: root}}
	if err := r.Layout.Reserve("box", "id1"); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(r.Layout.Dir("id1"), 0o700)
	ctx := context.Background()
	cancelled := make(chan struct{})
	p := &liveProc{sandboxID: "id1", id: "init", pid: 7, control: make(chan *pb.ExecInput, 16), done: make(chan struct{}),
		cancel: func() { close(cancelled) }}
	r.live().procs["id1"] = map[string]*liveProc{"init": p}

	if err := r.SignalProcess(ctx, "box", "init", 15, false); err != nil {
		t.Fatal(err)
	}
	if err := r.ResizePTY(ctx, "box", "init", 40, 120); err != nil {
		t.Fatal(err)
	}
	if err := r.CloseStdin(ctx, "box", "init"); err != nil {
		t.Fatal(err)
	}
	if m := <-p.control; m.GetSignal() != 15 {
		t.Fatalf("first control message %v", m)
	}
	if m := <-p.control; m.GetResize().GetRows() != 40 || m.GetResize().GetCols() != 120 {
		t.Fatalf("second control message %v", m)
	}
	if m := <-p.control; !m.GetCloseStdin() {
		t.Fatalf("third control message %v", m)
	}
	for _, bad := range [][2]uint32{{0, 80}, {24, 0}, {1 << 16, 80}} {
		if err := r.ResizePTY(ctx, "box", "init", bad[0], bad[1]); !errdefs.IsInvalidArgument(err) {
			t.Errorf("resize %v: %v", bad, err)
		}
	}
	for _, sig := range []int{0, 65, -1} {
		if err := r.SignalProcess(ctx, "box", "init", sig, false); !errdefs.IsInvalidArgument(err) {
			t.Errorf("signal %d: %v", sig, err)
		}
	}
	if _, err := r.DeleteProcess(ctx, "box", "init"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("delete of a running process: %v", err)
	}
	if _, err := r.ProcessState("box", "nosuch"); !errdefs.IsNotFound(err) {
		t.Fatalf("unknown process: %v", err)
	}
	if _, err := r.ProcessState("nobox", "init"); !errdefs.IsNotFound(err) {
		t.Fatalf("unknown sandbox: %v", err)
	}

	// Signals racing the exit: none blocks, each either queues or is
	// told the process has exited.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.SignalProcess(ctx, "box", "init", 1, false); err != nil && !errdefs.IsNotFound(err) {
				t.Errorf("signal during exit: %v", err)
			}
		}()
	}
	p.mu.Lock()
	p.exit, p.exited = &ProcExit{Code: 0}, time.Now()
	p.mu.Unlock()
	close(p.done)
	wg.Wait()
	if err := r.SignalProcess(ctx, "box", "init", 15, false); !errdefs.IsNotFound(err) {
		t.Fatalf("signal after exit: %v", err)
	}
	st, err := r.WaitProcess(ctx, "box", "init")
	if err != nil || st.Exit == nil || st.Pid != 7 {
		t.Fatalf("wait: %+v %v", st, err)
	}
	if _, err := r.DeleteProcess(ctx, "box", "init"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.WaitProcess(ctx, "box", "init"); !errdefs.IsNotFound(err) {
		t.Fatalf("wait after delete: %v", err)
	}

	// Down's drop ends the streams of a sandbox's processes.
	q := &liveProc{sandboxID: "id1", id: "x", control: make(chan *pb.ExecInput, 1), done: make(chan struct{}), cancel: func() { close(cancelled) }}
	r.live().procs["id1"]["x"] = q
	r.dropProcesses("id1")
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("drop did not end the stream")
	}
	if _, err := r.ProcessState("box", "x"); !errdefs.IsNotFound(err) {
		t.Fatalf("process after drop: %v", err)
	}
}
