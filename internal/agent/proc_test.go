package agent

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/testenv"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestRingKeepsTheMostRecentBytes(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, max := range []int{1, 7, 4096, 10000} {
		r := &ring{max: max}
		var all []byte
		for i := 0; i < 300; i++ {
			p := make([]byte, rng.Intn(3*max+2))
			rng.Read(p)
			r.write(p)
			all = append(all, p...)
			if r.end != int64(len(all)) {
				t.Fatalf("end %d, want %d", r.end, len(all))
			}
			want := all[max64(0, int64(len(all)-max)):]
			if r.end-r.start != int64(len(want)) {
				t.Fatalf("max %d: retained %d, want %d", max, r.end-r.start, len(want))
			}
			off := r.start + int64(rng.Intn(len(want)+1))
			got := make([]byte, rng.Intn(2*max+1))
			n := r.readAt(off, got)
			exp := all[off:min(int64(len(all)), off+int64(len(got)))]
			if !bytes.Equal(got[:n], exp) {
				t.Fatalf("max %d: readAt(%d) = %d bytes, differs", max, off, n)
			}
		}
		if len(r.buf) > max {
			t.Fatalf("buffer grew to %d > %d", len(r.buf), max)
		}
	}
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

func start(t *testing.T, c *agentapi.Client, stdin bool, argv ...string) *pb.ProcInfo {
	t.Helper()
	info, err := c.Agent.ProcStart(context.Background(), &pb.ProcStartRequest{Start: &pb.ExecStart{Argv: argv, Stdin: stdin}})
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func TestProcLateWaitAndGap(t *testing.T) {
	c, _ := testClient(t, "dev")
	ctx := context.Background()
	// Writes far more than the buffer holds, faster than anyone reads.
	n := 4 * agentapi.ProcOutputBytes
	info := start(t, c, false, "sh", "-c", "head -c "+strconv.Itoa(n)+" /dev/zero | tr '\\0' a; echo END; echo oops >&2; exit 5")
	// Wait late: only once the process has exited (polled, not slept).
	var procs []*pb.ProcInfo
	testenv.Eventually(t, time.Minute, 10*time.Millisecond, func() bool {
		ls, err := c.Agent.ProcList(ctx, &pb.ProcListRequest{})
		if err != nil {
			t.Fatal(err)
		}
		procs = ls.Procs
		return len(procs) > 0 && procs[0].State == "exited"
	}, func() string { return fmt.Sprintf("the process to exit: %+v", procs) })
	var out, errb bytes.Buffer
	var lost int64
	last, err := c.ProcWait(ctx, &pb.ProcWaitRequest{Handle: info.Handle}, &out, &errb, func(g *pb.OutputGap) { lost += g.Lost })
	if err != nil {
		t.Fatal(err)
	}
	if last.GetExit().GetCode() != 5 {
		t.Errorf("exit %+v", last)
	}
	if int(lost)+out.Len() != n+4 || !strings.HasSuffix(out.String(), "aEND\n") || errb.String() != "oops\n" {
		t.Errorf("lost %d + got %d != %d; stderr %q", lost, out.Len(), n+4, errb.String())
	}
	if out.Len() > agentapi.ProcOutputBytes {
		t.Errorf("got %d bytes, more than the buffer", out.Len())
	}
	// A second late reader sees the same retained tail; list shows it.
	var out2 bytes.Buffer
	if _, err := c.ProcWait(ctx, &pb.ProcWaitRequest{Handle: info.Handle}, &out2, &bytes.Buffer{}, nil); err != nil || out2.String() != out.String() {
		t.Errorf("second wait: %v", err)
	}
	ls, _ := c.Agent.ProcList(ctx, &pb.ProcListRequest{})
	if len(ls.Procs) == 0 || ls.Procs[0].State != "exited" || ls.Procs[0].StdoutDropped != lost {
		t.Errorf("list: %+v", ls.Procs)
	}
}

func TestProcStdinSignalAndCaps(t *testing.T) {
	c, s := testClient(t, "dev")
	ctx := context.Background()
	cat := start(t, c, true, "cat")
	if _, err := c.ProcStdin(ctx, cat.Handle, strings.NewReader("hello\n"), true); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if last, err := c.ProcWait(ctx, &pb.ProcWaitRequest{Handle: cat.Handle}, &out, &out, nil); err != nil || out.String() != "hello\n" || last.GetExit().GetCode() != 0 {
		t.Errorf("cat: %v %q", err, out.String())
	}
	if _, err := c.ProcStdin(ctx, cat.Handle, strings.NewReader("x"), false); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("stdin after exit: %v", err)
	}
	sl := start(t, c, false, "sleep", "100")
	if _, err := c.Agent.ProcSignal(ctx, &pb.ProcSignalRequest{Handle: sl.Handle, Signal: 15}); err != nil {
		t.Fatal(err)
	}
	if last, err := c.ProcWait(ctx, &pb.ProcWaitRequest{Handle: sl.Handle}, &out, &out, nil); err != nil || last.GetExit().GetSignal() != 15 {
		t.Errorf("signal: %v %+v", err, last)
	}
	if _, err := c.Agent.ProcSignal(ctx, &pb.ProcSignalRequest{Handle: "nope", Signal: 15}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown handle: %v", err)
	}
	// The running-process cap gives a typed error.
	var started []string
	for i := 0; i < agentapi.MaxProcs; i++ {
		started = append(started, start(t, c, false, "sleep", "100").Handle)
	}
	_, err := c.Agent.ProcStart(ctx, &pb.ProcStartRequest{Start: &pb.ExecStart{Argv: []string{"true"}}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("cap: %v", err)
	}
	for _, h := range started {
		c.Agent.ProcSignal(ctx, &pb.ProcSignalRequest{Handle: h, Signal: 9})
	}
	for _, h := range started {
		c.ProcWait(ctx, &pb.ProcWaitRequest{Handle: h}, &out, &out, nil)
	}
	// No-follow returns the running state at once.
	sl = start(t, c, false, "sleep", "100")
	last, err := c.ProcWait(ctx, &pb.ProcWaitRequest{Handle: sl.Handle, NoFollow: true}, &out, &out, nil)
	if err != nil || last.GetRunning().GetState() != "running" {
		t.Errorf("no-follow: %v %+v", err, last)
	}
	c.Agent.ProcSignal(ctx, &pb.ProcSignalRequest{Handle: sl.Handle, Signal: 9})
	s.bg.mu.Lock()
	n := len(s.bg.procs)
	s.bg.mu.Unlock()
	if n > agentapi.MaxProcs+agentapi.MaxExitedProcs {
		t.Errorf("table holds %d processes", n)
	}
}
