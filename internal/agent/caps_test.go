package agent

// Each cap of internal/agentapi/limits.go that SPECIFICATION.md lists is
// exercised here or in proc_test.go/fs_test.go.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/testenv"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestListDirCapsEntries: a directory with more than MaxListEntries
// entries is listed up to the cap, with truncated set.
func TestListDirCapsEntries(t *testing.T) {
	c, _ := testClient(t, "dev")
	dir := t.TempDir()
	for i := 0; i < agentapi.MaxListEntries+1; i++ {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%05d", i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	ls, err := c.Agent.ListDir(context.Background(), &pb.ListDirRequest{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	if len(ls.Entries) != agentapi.MaxListEntries || !ls.Truncated {
		t.Fatalf("%d entries, truncated %v; want %d, true", len(ls.Entries), ls.Truncated, agentapi.MaxListEntries)
	}
	os.Remove(filepath.Join(dir, "f00000"))
	ls, err = c.Agent.ListDir(context.Background(), &pb.ListDirRequest{Path: dir})
	if err != nil || len(ls.Entries) != agentapi.MaxListEntries || ls.Truncated {
		t.Fatalf("at the cap: %d entries, truncated %v, %v", len(ls.Entries), ls.Truncated, err)
	}
}

// TestProcWaitersCapped: MaxProcWaiters readers may follow one process;
// one more is refused with ResourceExhausted, and a place frees when a
// reader leaves.
func TestProcWaitersCapped(t *testing.T) {
	c, s := testClient(t, "dev")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := start(t, c, false, "sleep", "100")
	defer c.Agent.ProcSignal(context.Background(), &pb.ProcSignalRequest{Handle: p.Handle, Signal: 9})
	var streams []context.CancelFunc
	for i := 0; i < agentapi.MaxProcWaiters; i++ {
		sctx, scancel := context.WithCancel(ctx)
		streams = append(streams, scancel)
		st, err := c.Agent.ProcWait(sctx, &pb.ProcWaitRequest{Handle: p.Handle})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				if _, err := st.Recv(); err != nil {
					return
				}
			}
		}()
	}
	// The server counts a reader once its stream handler runs. Wait for its
	// own count rather than probing with another reader: a probe holds a
	// slot while it runs, so a late reader of the sixteen could be refused
	// in its place (that made this test fail under load).
	waiters := func() int {
		s.bg.mu.Lock()
		bp := s.bg.procs[p.Handle]
		s.bg.mu.Unlock()
		bp.mu.Lock()
		defer bp.mu.Unlock()
		return bp.waiters
	}
	testenv.Eventually(t, 60*time.Second, 10*time.Millisecond, func() bool { return waiters() == agentapi.MaxProcWaiters },
		func() string { return fmt.Sprintf("%d readers counted, want %d", waiters(), agentapi.MaxProcWaiters) })
	wait := func() error {
		_, err := c.ProcWait(ctx, &pb.ProcWaitRequest{Handle: p.Handle, NoFollow: true}, io.Discard, io.Discard, nil)
		return err
	}
	if err := wait(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("reader %d: %v, want ResourceExhausted", agentapi.MaxProcWaiters+1, err)
	}
	streams[0]()
	testenv.Eventually(t, 60*time.Second, 10*time.Millisecond, func() bool { return waiters() < agentapi.MaxProcWaiters },
		func() string { return fmt.Sprintf("a reader left but %d are still counted", waiters()) })
	if err := wait(); err != nil {
		t.Fatalf("a reader left but a new one is still refused: %v", err)
	}
}

// TestExitedProcsRetention: an exited process is kept for ProcRetention
// and forgotten after it (the clock is passed to prune, not waited for).
func TestExitedProcsRetention(t *testing.T) {
	c, s := testClient(t, "dev")
	p := start(t, c, false, "true")
	var out bytes.Buffer
	if _, err := c.ProcWait(context.Background(), &pb.ProcWaitRequest{Handle: p.Handle}, &out, &out, nil); err != nil {
		t.Fatal(err)
	}
	s.bg.mu.Lock()
	exited := s.bg.procs[p.Handle].exited
	s.bg.prune(exited.Add(agentapi.ProcRetention))
	_, kept := s.bg.procs[p.Handle]
	s.bg.prune(exited.Add(agentapi.ProcRetention + time.Second))
	_, after := s.bg.procs[p.Handle]
	s.bg.mu.Unlock()
	if !kept || after {
		t.Fatalf("kept at the retention: %v; kept after it: %v", kept, after)
	}
	if _, err := c.Agent.ProcSignal(context.Background(), &pb.ProcSignalRequest{Handle: p.Handle, Signal: 15}); status.Code(err) != codes.NotFound {
		t.Fatalf("forgotten process: %v", err)
	}
}

// TestOutputChunksBounded: process output reaches the host in chunks of
// at most ChunkBytes, whatever the process writes at once.
func TestOutputChunksBounded(t *testing.T) {
	c, _ := testClient(t, "dev")
	st, err := c.Agent.Exec(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 5*agentapi.ChunkBytes + 123
	if err := st.Send(&pb.ExecInput{Msg: &pb.ExecInput_Start{Start: &pb.ExecStart{Argv: []string{"head", "-c", fmt.Sprint(n), "/dev/zero"}}}}); err != nil {
		t.Fatal(err)
	}
	got, biggest := 0, 0
	for {
		m, err := st.Recv()
		if err != nil {
			t.Fatalf("stream ended without an exit: %v", err)
		}
		if o := m.GetStdout(); o != nil {
			got += len(o)
			biggest = max(biggest, len(o))
		}
		if m.GetExit() != nil {
			break
		}
	}
	if got != n || biggest > agentapi.ChunkBytes || biggest == 0 {
		t.Fatalf("got %d of %d bytes, largest chunk %d (cap %d)", got, n, biggest, agentapi.ChunkBytes)
	}
}

// TestMessageCap: a gRPC message over MaxMessageBytes is refused with
// ResourceExhausted (host and agent are both built with the cap; here the
// host's client refuses to send it); one of the chunk size passes.
func TestMessageCap(t *testing.T) {
	c, _ := testClient(t, "dev")
	send := func(n int) error {
		st, err := c.Agent.Exec(context.Background())
		if err != nil {
			return err
		}
		if err := st.Send(&pb.ExecInput{Msg: &pb.ExecInput_Start{Start: &pb.ExecStart{Argv: []string{"cat"}, Stdin: true}}}); err != nil {
			return err
		}
		if err := st.Send(&pb.ExecInput{Msg: &pb.ExecInput_Stdin{Stdin: make([]byte, n)}}); err != nil {
			return err
		}
		st.Send(&pb.ExecInput{Msg: &pb.ExecInput_CloseStdin{CloseStdin: true}})
		for {
			m, err := st.Recv()
			if err != nil {
				return err
			}
			if m.GetExit() != nil {
				return nil
			}
		}
	}
	if err := send(agentapi.ChunkBytes); err != nil {
		t.Fatalf("a chunk-sized message: %v", err)
	}
	if err := send(agentapi.MaxMessageBytes + 1); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a message over %d bytes: %v, want ResourceExhausted", agentapi.MaxMessageBytes, err)
	}
}
