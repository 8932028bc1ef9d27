package mcp

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestMCPAnswersEveryRequestBeforeEOF: a client pipes a batch of
// requests and closes its side at once. Every request read before EOF is
// answered, including one still running when the input ended; only then
// does the server stop. (It used to drop the replies still pending: a
// piped batch got 0 or 1 of them.)
func TestMCPAnswersEveryRequestBeforeEOF(t *testing.T) {
	rt := newFake()
	rt.started = make(chan string, 8)
	srv := New(Options{Runtime: rt, Limits: DefaultLimits(), ResolveImage: knownImages})
	sr, cw := io.Pipe()
	cr, sw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- srv.Run(context.Background(), &sdk.IOTransport{Reader: sr, Writer: sw})
		sw.Close()
	}()
	replies := make(chan map[string]any, 16)
	go func() {
		sc := bufio.NewScanner(cr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				replies <- m
			}
		}
		close(replies)
	}()
	batch := []string{
		`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"pipe","version":"1"}}}`,
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		`{"jsonrpc":"2.0","id":2,"method":"tools/list"}`,
		`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"run_command","arguments":{"argv":["gate"]}}}`,
		`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"run_command","arguments":{"argv":["echo","hi"]}}}`,
		`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"sandbox_create","arguments":{"template":"./agent"}}}`,
		`{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"sandbox_list","arguments":{}}}`,
	}
	go func() {
		io.WriteString(cw, strings.Join(batch, "\n")+"\n")
		cw.Close() // EOF right after the batch
	}()
	// The gated command runs after the input has ended; its answer must
	// still come.
	select {
	case <-rt.started:
	case err := <-done:
		t.Fatalf("server stopped before the batch ran: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the gated call never started")
	}
	close(rt.gate)
	got := map[float64]map[string]any{}
	deadline := time.After(10 * time.Second)
	for collecting := true; collecting; {
		select {
		case m, ok := <-replies:
			if !ok {
				collecting = false
				break
			}
			if id, ok := m["id"].(float64); ok {
				got[id] = m
			}
		case <-deadline:
			t.Fatalf("output did not end; replies so far: %v", got)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	for id := 1.0; id <= 6; id++ {
		if got[id] == nil {
			t.Errorf("request %v got no reply", id)
		}
	}
	if r, _ := got[3]["result"].(map[string]any); r == nil || r["isError"] == true {
		t.Errorf("the call running at EOF: %v", got[3])
	}
	if r, _ := got[5]["result"].(map[string]any); r == nil || r["isError"] != true {
		t.Errorf("a refused call is answered with a tool error: %v", got[5])
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if len(rt.live) != 0 || rt.holds != 0 {
		t.Errorf("after EOF: %d sandboxes live, %d holds open", len(rt.live), rt.holds)
	}
}
