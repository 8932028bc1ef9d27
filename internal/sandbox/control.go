package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
)

// Request is one line on the control socket.
type Request struct {
	// Op is "status", "stop", "pause", "resume" or "forward".
	Op     string `json:"op"`
	Reason string `json:"reason,omitempty"`
	// Publish is the -p spec of a "forward" request.
	Publish string `json:"publish,omitempty"`
}

// Response answers a Request.
type Response struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	State *State `json:"state,omitempty"`
}

// DialIn connects to the unix socket name inside dir, going through
// /proc/self/fd when the full path is too long for a socket address.
func DialIn(ctx context.Context, dir, name string) (net.Conn, error) {
	return backend.DialUnix(ctx, dir, name)
}

// Control sends one request to the supervisor of the sandbox in dir.
func Control(ctx context.Context, dir string, req Request) (*Response, error) {
	conn, err := DialIn(ctx, dir, ControlSocket)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("supervisor closed the connection: %w", err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// ReadState reads a sandbox's state file.
func ReadState(dir string) (*State, error) {
	var st State
	if err := ReadJSON(filepath.Join(dir, StateFile), &st); err != nil {
		return nil, err
	}
	return &st, nil
}
