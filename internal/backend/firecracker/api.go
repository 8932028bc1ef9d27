package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
)

// The request bodies of Firecracker's API (src/firecracker/swagger/
// firecracker.yaml), only the fields mvm sets.
type machineConfig struct {
	VCPUCount  int `json:"vcpu_count"`
	MemSizeMiB int `json:"mem_size_mib"`
}

type bootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args"`
}

type drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
}

type vsock struct {
	GuestCID int    `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

type action struct {
	ActionType string `json:"action_type"`
}

type vmState struct {
	State string `json:"state"`
}

// snapshotCreate is SnapshotCreateParams (PUT /snapshot/create).
type snapshotCreate struct {
	SnapshotType string `json:"snapshot_type"`
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

// memBackend is MemoryBackend.
type memBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// snapshotLoad is SnapshotLoadParams (PUT /snapshot/load). mem_backend,
// not the deprecated mem_file_path (they are mutually exclusive).
type snapshotLoad struct {
	SnapshotPath string     `json:"snapshot_path"`
	MemBackend   memBackend `json:"mem_backend"`
	ResumeVM     bool       `json:"resume_vm"`
}

// partialDrive is PartialDrive (PATCH /drives/{drive_id}, post-boot).
type partialDrive struct {
	DriveID    string `json:"drive_id"`
	PathOnHost string `json:"path_on_host"`
}

// apiFault is Firecracker's error body.
type apiFault struct {
	FaultMessage string `json:"fault_message"`
}

// Request is one API call.
type Request struct {
	Method string
	Path   string
	Body   any
}

func (r Request) String() string { return r.Method + " " + r.Path }

// BootRequests is the configuration sent to a fresh Firecracker, in order,
// ending with InstanceStart. Guest disks appear as /dev/vda, /dev/vdb...
// in the order of spec.Disks; none is Firecracker's "root device" (the
// agent in the initramfs mounts the root itself). The vsock socket is named
// relative to Firecracker's working directory, the sandbox directory.
func BootRequests(spec backend.Spec) []Request {
	args := KernelCmdline
	if c := strings.TrimSpace(spec.Cmdline); c != "" {
		args += " " + c
	}
	reqs := []Request{
		{"PUT", "/machine-config", machineConfig{VCPUCount: spec.CPUs, MemSizeMiB: spec.MemoryMiB}},
		{"PUT", "/boot-source", bootSource{KernelImagePath: spec.Kernel, InitrdPath: spec.Initrd, BootArgs: args}},
	}
	for i, d := range spec.Disks {
		id := driveID(i)
		reqs = append(reqs, Request{"PUT", "/drives/" + id, drive{DriveID: id, PathOnHost: drivePath(spec.Dir, d.Path), IsReadOnly: d.ReadOnly}})
	}
	reqs = append(reqs,
		Request{"PUT", "/vsock", vsock{GuestCID: GuestCID, UDSPath: VsockSocket}},
		Request{"PUT", "/actions", action{ActionType: "InstanceStart"}},
	)
	return reqs
}

func driveID(i int) string { return fmt.Sprintf("disk%d", i) }

// drivePath is the path Firecracker is given for a disk: relative to its
// working directory (the sandbox directory) when the disk lives there, so
// that a saved state names "upper.img", which a clone or a resume finds
// in its own directory (Firecracker opens a restored VM's disks at the
// paths they had, "at the same relative paths": docs/snapshotting/
// snapshot-support.md).
func drivePath(dir, path string) string {
	if dir != "" && filepath.Dir(path) == filepath.Clean(dir) {
		return filepath.Base(path)
	}
	return path
}

// apiClient speaks HTTP to Firecracker's API socket.
type apiClient struct {
	hc *http.Client
}

// maxAPIResponse bounds what is read from one API answer.
const maxAPIResponse = 64 << 10

// apiTimeout bounds one API call when the caller's context has no
// deadline: a wedged VMM must not hang a stop.
const apiTimeout = 30 * time.Second

// newAPIClient talks to the API socket name in dir.
func newAPIClient(dir, name string) *apiClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return backend.DialUnix(ctx, dir, name)
		},
		MaxIdleConns:       1,
		DisableCompression: true,
	}
	return &apiClient{hc: &http.Client{Transport: tr}}
}

// do sends one request; any answer but 2xx is an error naming the
// request and carrying Firecracker's fault_message.
func (c *apiClient) do(ctx context.Context, method, path string, body any) error {
	name := method + " " + path
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, apiTimeout)
		defer cancel()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("firecracker %s: %w", name, err)
		}
		rd = bytes.NewReader(b)
	}
	// The host part is ignored: the transport always dials the socket.
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return fmt.Errorf("firecracker %s: %w", name, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s: %w", name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxAPIResponse))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	return fmt.Errorf("firecracker %s: %s", name, faultMessage(resp.StatusCode, b))
}

func faultMessage(code int, body []byte) string {
	var f apiFault
	if json.Unmarshal(body, &f) == nil && f.FaultMessage != "" {
		return fmt.Sprintf("%s (HTTP %d)", clip(f.FaultMessage), code)
	}
	if s := strings.TrimSpace(string(body)); s != "" {
		return fmt.Sprintf("HTTP %d: %s", code, clip(s))
	}
	return fmt.Sprintf("HTTP %d", code)
}

func clip(s string) string {
	const max = 1024
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
