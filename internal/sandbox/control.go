package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
	"golang.org/x/sys/unix"
)

// Request is one line on the control socket.
type Request struct {
	// Op is "status", "stop", "pause", "resume", "forward" or "claim"
	// (a pooled sandbox becomes its claimer's: the supervisor rereads the
	// spec).
	Op     string `json:"op"`
	Reason string `json:"reason,omitempty"`
	// Publish is the -p spec of a "forward" request.
	Publish string `json:"publish,omitempty"`
	// Snapshot is the snapshot a "snapshot" request saves.
	Snapshot *SnapshotRequest `json:"snapshot,omitempty"`
	// Claim carries the claimer's timings so far (a "claim" request).
	Claim *ClaimReport `json:"claim,omitempty"`
	// Refill is the pool refill a claim asks the supervisor to start.
	Refill *Refill `json:"refill,omitempty"`
}

// Refill is a background command a claimed sandbox's supervisor starts
// (its own executable with Args, in Dir, output appended to Log) once
// the claim's identity refresh has finished and DelayMS has passed, or
// when it ends before that: the replacement of a pool member then does
// not compete with the claimer's first commands.
type Refill struct {
	Args    []string `json:"args"`
	Dir     string   `json:"dir"`
	Log     string   `json:"log"`
	DelayMS int64    `json:"delay_ms"`
}

// SnapshotRequest asks the supervisor to save its sandbox (memory, device
// state and writable disk, taken while the guest is stopped) as snapshot
// Tag of the store in StoreDir. Meta carries what the runtime knows
// (secret names); the supervisor fills in the rest.
type SnapshotRequest struct {
	StoreDir string        `json:"store_dir"`
	Tag      string        `json:"tag"`
	Meta     snapshot.Meta `json:"meta"`
}

// Response answers a Request.
type Response struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	State *State `json:"state,omitempty"`
	// Snapshot is the sidecar of a snapshot just saved.
	Snapshot *snapshot.Meta `json:"snapshot,omitempty"`
}

// DialIn connects to the unix socket name inside dir, going through
// /proc/self/fd when the full path is too long for a socket address.
func DialIn(ctx context.Context, dir, name string) (net.Conn, error) {
	return backend.DialUnix(ctx, dir, name)
}

// Control sends one request to the supervisor of the sandbox in dir.
func Control(ctx context.Context, dir string, req Request) (*Response, error) {
	return ControlWithFile(ctx, dir, req, nil)
}

// ControlWithFile is Control handing f (when not nil) to the supervisor
// along with the request (SCM_RIGHTS): a claim's hold pipe.
func ControlWithFile(ctx context.Context, dir string, req Request, f *os.File) (*Response, error) {
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
	b = append(b, '\n')
	if f != nil {
		uc, ok := conn.(*net.UnixConn)
		if !ok {
			return nil, fmt.Errorf("control: cannot pass a file over %T", conn)
		}
		if _, _, err := uc.WriteMsgUnix(b, unix.UnixRights(int(f.Fd())), nil); err != nil {
			return nil, err
		}
	} else if _, err := conn.Write(b); err != nil {
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
