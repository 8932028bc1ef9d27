package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// socketpair returns two connected unix stream sockets.
func socketpair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "qmp")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

// fakeQMP plays QEMU's side of QMP on conn: the greeting, then one answer
// per command from answers (by command name), recording what it received.
// QEMU refuses every command before qmp_capabilities; so does the fake.
type fakeQMP struct {
	mu       sync.Mutex
	received []map[string]any
	answers  map[string][]string // command -> lines written in reply
	greeting string
	after    func(cmd string) // called once a command is answered
}

func (f *fakeQMP) serve(conn net.Conn) {
	greeting := f.greeting
	if greeting == "" {
		greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`
	}
	conn.Write([]byte(greeting + "\n"))
	r := bufio.NewReader(conn)
	negotiated := false
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var req map[string]any
		if err := json.Unmarshal(line, &req); err != nil {
			conn.Write([]byte(`{"error": {"class": "GenericError", "desc": "JSON parse error"}}` + "\n"))
			continue
		}
		f.mu.Lock()
		f.received = append(f.received, req)
		f.mu.Unlock()
		cmd, _ := req["execute"].(string)
		if cmd == "qmp_capabilities" {
			negotiated = true
			conn.Write([]byte(`{"return": {}}` + "\n"))
			continue
		}
		if !negotiated {
			conn.Write([]byte(`{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}` + "\n"))
			continue
		}
		lines, ok := f.answers[cmd]
		if !ok {
			conn.Write([]byte(`{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}` + "\n"))
			continue
		}
		for _, l := range lines {
			conn.Write([]byte(l + "\n"))
		}
		if f.after != nil {
			f.after(cmd)
		}
	}
}

func (f *fakeQMP) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.received {
		out = append(out, r["execute"].(string))
	}
	return out
}

func withDeadline(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestQMPNegotiatesThenRunsCommands(t *testing.T) {
	host, vm := socketpair(t)
	f := &fakeQMP{answers: map[string][]string{
		// an asynchronous event arrives before the answer: it is skipped
		"stop":         {`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`, `{"return": {}}`},
		"cont":         {`{"return": {}}`},
		"query-status": {`{"return": {"status": "running", "running": true}}`},
	}}
	go f.serve(vm)
	q, err := newQMP(withDeadline(t), host)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.run(withDeadline(t), "stop", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := q.run(withDeadline(t), "cont", nil); err != nil {
		t.Fatal(err)
	}
	ret, err := q.run(withDeadline(t), "query-status", nil)
	if err != nil || !strings.Contains(string(ret), `"status": "running"`) {
		t.Fatalf("query-status: %s, %v", ret, err)
	}
	want := []string{"qmp_capabilities", "stop", "cont", "query-status"}
	if got := f.commands(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("commands %v, want %v", got, want)
	}
}

func TestQMPArgumentsAreSent(t *testing.T) {
	host, vm := socketpair(t)
	f := &fakeQMP{answers: map[string][]string{"human-monitor-command": {`{"return": ""}`}}}
	go f.serve(vm)
	q, err := newQMP(withDeadline(t), host)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.run(withDeadline(t), "human-monitor-command", map[string]any{"command-line": "info status"}); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	last := f.received[len(f.received)-1]
	f.mu.Unlock()
	args, _ := last["arguments"].(map[string]any)
	if args["command-line"] != "info status" {
		t.Fatalf("arguments %v", last)
	}
	if _, ok := f.received[0]["arguments"]; ok {
		t.Fatalf("qmp_capabilities sent with arguments: %v", f.received[0])
	}
}

func TestQMPErrorCarriesClassAndDescription(t *testing.T) {
	host, vm := socketpair(t)
	f := &fakeQMP{answers: map[string][]string{}}
	go f.serve(vm)
	q, err := newQMP(withDeadline(t), host)
	if err != nil {
		t.Fatal(err)
	}
	_, err = q.run(withDeadline(t), "migrate", map[string]any{"uri": "file:/x"})
	if err == nil || !strings.Contains(err.Error(), "qmp migrate: CommandNotFound: The command migrate has not been found") {
		t.Fatalf("err %v", err)
	}
}

func TestQMPBadGreetingOrNegotiation(t *testing.T) {
	for name, greeting := range map[string]string{
		"not json": "hello there",
		"too long": `{"QMP": "` + strings.Repeat("x", maxQMPMessage) + `"}`,
	} {
		host, vm := socketpair(t)
		go (&fakeQMP{greeting: greeting}).serve(vm)
		if _, err := newQMP(withDeadline(t), host); err == nil || !strings.Contains(err.Error(), "qmp greeting") {
			t.Errorf("%s: err %v", name, err)
		}
	}
	// capabilities refused
	host, vm := socketpair(t)
	go func() {
		vm.Write([]byte(`{"QMP": {}}` + "\n"))
		bufio.NewReader(vm).ReadBytes('\n')
		vm.Write([]byte(`{"error": {"class": "GenericError", "desc": "Capabilities negotiation is already complete"}}` + "\n"))
	}()
	if _, err := newQMP(withDeadline(t), host); err == nil || !strings.Contains(err.Error(), "qmp_capabilities: GenericError") {
		t.Fatalf("refused negotiation: %v", err)
	}
}

// TestQMPMessageTooLong: a line longer than maxQMPMessage is an error,
// not an unbounded read.
func TestQMPMessageTooLong(t *testing.T) {
	host, vm := socketpair(t)
	f := &fakeQMP{answers: map[string][]string{"query-status": {`{"return": "` + strings.Repeat("y", 2*maxQMPMessage) + `"}`}}}
	go f.serve(vm)
	q, err := newQMP(withDeadline(t), host)
	if err != nil {
		t.Fatal(err)
	}
	_, err = q.run(withDeadline(t), "query-status", nil)
	if err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("err %v", err)
	}
}

// TestQMPSilentPeerEndsAtDeadline: a QEMU that never answers cannot hold
// a command past its context's deadline.
func TestQMPSilentPeerEndsAtDeadline(t *testing.T) {
	host, vm := socketpair(t)
	go func() {
		vm.Write([]byte(`{"QMP": {}}` + "\n"))
		r := bufio.NewReader(vm)
		r.ReadBytes('\n')
		vm.Write([]byte(`{"return": {}}` + "\n"))
		for { // read and never answer
			if _, err := r.ReadBytes('\n'); err != nil {
				return
			}
		}
	}()
	q, err := newQMP(withDeadline(t), host)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = q.run(ctx, "stop", nil)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("err %v, want a timeout", err)
	}
}
