package firecracker

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// recorded is one request the fake API server received.
type recorded struct {
	Method, Path string
	Body         map[string]any
}

// fakeAPI answers like Firecracker's API: 204 with no body, or 400 with
// {"fault_message": ...} for a request that breaks the documented shape
// (validateRequest) or order (order), or that fail names.
type fakeAPI struct {
	mu   sync.Mutex
	reqs []recorded
	fail map[string]string // "PUT /boot-source" -> fault message
	// onAction runs for PUT /actions with the action type.
	onAction func(string)
	onVsock  func(udsPath string)
	// onLoad runs after a snapshot loaded, with the vsock uds_path it
	// restored; onLoadFailed after a load failed (Firecracker then ends
	// itself).
	onLoad       func(udsPath string)
	onLoadFailed func()
	// onSnapshot runs after a snapshot was created, before the answer:
	// Firecracker resets the vsock device then, closing every open
	// connection (docs/snapshotting/snapshot-support.md).
	onSnapshot func()
	// dir is the VMM's working directory, where relative paths resolve
	// ("" for the test's own).
	dir string
	// The microVM's state: the phase, what was configured, whether it
	// was restored from a snapshot.
	phase  phase
	boot   bool              // boot-source set
	drives map[string]string // drive id -> path_on_host
	vsock  string            // uds_path
	loaded bool
}

// phase is where a Firecracker process is in its life: fresh (nothing
// configured: the only state a snapshot loads in), configuring (boot
// resources set), running or paused (after InstanceStart or a load).
type phase int

const (
	phaseFresh phase = iota
	phaseConfiguring
	phaseRunning
	phasePaused
)

func (p phase) started() bool { return p == phaseRunning || p == phasePaused }

// fakeVersion is the fake's Firecracker version; a snapshot records it
// and a load refuses another.
const fakeVersion = "1.7.0"

// fakeState is the fake's microVM state file: what a load restores.
type fakeState struct {
	Magic   string            `json:"fake_firecracker_state"`
	Version string            `json:"version"`
	Drives  map[string]string `json:"drives"`
	Vsock   string            `json:"vsock"`
}

func (f *fakeAPI) path(p string) string {
	if f.dir == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(f.dir, p)
}

// order applies a valid request to the fake's state, or says why
// Firecracker would refuse it now (its messages, abridged). Under f.mu.
func (f *fakeAPI) order(route string, body map[string]any) error {
	str := func(k string) string { s, _ := body[k].(string); return s }
	switch route {
	case "PUT /machine-config", "PUT /boot-source", "PUT /drives/{drive_id}", "PUT /vsock":
		if f.phase.started() {
			return fmt.Errorf("The requested operation is not supported after starting the microVM.")
		}
		f.phase = phaseConfiguring
		switch route {
		case "PUT /boot-source":
			f.boot = true
		case "PUT /drives/{drive_id}":
			if f.drives == nil {
				f.drives = map[string]string{}
			}
			f.drives[str("drive_id")] = str("path_on_host")
		case "PUT /vsock":
			f.vsock = str("uds_path")
		}
	case "PUT /actions":
		switch str("action_type") {
		case "InstanceStart":
			if f.phase.started() {
				return fmt.Errorf("The requested operation is not supported after starting the microVM.")
			}
			if !f.boot {
				return fmt.Errorf("Cannot start microvm without kernel configuration.")
			}
			f.phase = phaseRunning
		case "SendCtrlAltDel":
			if !f.phase.started() {
				return fmt.Errorf("The requested operation is not supported before starting the microVM.")
			}
		}
	case "PATCH /vm":
		if !f.phase.started() {
			return fmt.Errorf("The requested operation is not supported before starting the microVM.")
		}
		if str("state") == "Paused" {
			f.phase = phasePaused
		} else {
			f.phase = phaseRunning
		}
	case "PATCH /drives/{drive_id}":
		if !f.phase.started() {
			return fmt.Errorf("The requested operation is not supported before starting the microVM.")
		}
		id := str("drive_id")
		if _, ok := f.drives[id]; !ok {
			return fmt.Errorf("Unable to patch the block device: drive %q not found", id)
		}
		if p, ok := body["path_on_host"].(string); ok {
			if _, err := os.Stat(f.path(p)); err != nil {
				return fmt.Errorf("Unable to patch the block device: cannot open %s: %v", p, err)
			}
			f.drives[id] = p
		}
	case "PUT /snapshot/create":
		if f.phase != phasePaused {
			return fmt.Errorf("Cannot create snapshot: the microVM is not paused.")
		}
		st, _ := json.Marshal(fakeState{Magic: "1", Version: fakeVersion, Drives: f.drives, Vsock: f.vsock})
		if err := os.WriteFile(f.path(str("snapshot_path")), st, 0o644); err != nil {
			return fmt.Errorf("Cannot create snapshot: %v", err)
		}
		if err := os.WriteFile(f.path(str("mem_file_path")), []byte(strings.Repeat("guest memory page\n", 512)), 0o644); err != nil {
			return fmt.Errorf("Cannot create snapshot: %v", err)
		}
	case "PUT /snapshot/load":
		if f.phase != phaseFresh {
			return fmt.Errorf("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
		}
		_, hasFile := body["mem_file_path"]
		mb, hasBackend := body["mem_backend"].(map[string]any)
		if hasFile == hasBackend {
			return fmt.Errorf("Load snapshot error: exactly one of mem_file_path and mem_backend must be given")
		}
		mem := str("mem_file_path")
		if hasBackend {
			if mb["backend_type"] != "File" {
				return fmt.Errorf("Load snapshot error: the fake serves only the File memory backend")
			}
			mem, _ = mb["backend_path"].(string)
		}
		if fi, err := os.Stat(f.path(mem)); err != nil || fi.Size() == 0 {
			return fmt.Errorf("Load snapshot error: Cannot open the memory file: %v", err)
		}
		b, err := os.ReadFile(f.path(str("snapshot_path")))
		if err != nil {
			return fmt.Errorf("Load snapshot error: Cannot open snapshot file: %v", err)
		}
		var st fakeState
		if json.Unmarshal(b, &st) != nil || st.Magic != "1" {
			return fmt.Errorf("Load snapshot error: Failed to restore from snapshot: invalid microVM state")
		}
		if st.Version != fakeVersion {
			return fmt.Errorf("Load snapshot error: Invalid snapshot version: %s (this firecracker is %s)", st.Version, fakeVersion)
		}
		// Firecracker reopens the disks at the paths they had, relative
		// to its own working directory.
		for id, p := range st.Drives {
			if _, err := os.Stat(f.path(p)); err != nil {
				return fmt.Errorf("Load snapshot error: Failed to restore block device %s: %v", id, err)
			}
		}
		f.drives, f.vsock, f.loaded, f.phase = st.Drives, st.Vsock, true, phasePaused
		if r, _ := body["resume_vm"].(bool); r {
			f.phase = phaseRunning
		}
	}
	return nil
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fault := func(format string, args ...any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(apiFault{FaultMessage: fmt.Sprintf(format, args...)})
	}
	var body map[string]any
	if r.Body != nil {
		b, _ := io.ReadAll(r.Body)
		if len(b) > 0 {
			if err := json.Unmarshal(b, &body); err != nil {
				fault("bad json: %v", err)
				return
			}
		}
	}
	if r.Header.Get("Content-Type") != "" && r.Header.Get("Content-Type") != "application/json" {
		fault("unsupported content type %q", r.Header.Get("Content-Type"))
		return
	}
	if err := validateRequest(r.Method, r.URL.Path, body); err != nil {
		fault("%v", err)
		return
	}
	name := r.Method + " " + r.URL.Path
	f.mu.Lock()
	f.reqs = append(f.reqs, recorded{r.Method, r.URL.Path, body})
	msg, bad := f.fail[name]
	var err error
	if !bad {
		err = f.order(route(r.Method, r.URL.Path), body)
	}
	onAction, onVsock, onLoad, onLoadFailed, onSnapshot, vsockPath := f.onAction, f.onVsock, f.onLoad, f.onLoadFailed, f.onSnapshot, f.vsock
	f.mu.Unlock()
	if err != nil {
		msg, bad = err.Error(), true
	}
	if bad {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(apiFault{FaultMessage: msg})
		if name == "PUT /snapshot/load" && onLoadFailed != nil {
			if fl, ok := w.(http.Flusher); ok {
				fl.Flush()
			}
			onLoadFailed()
		}
		return
	}
	if name == "PUT /snapshot/create" && onSnapshot != nil {
		onSnapshot()
	}
	if name == "PUT /snapshot/load" && onLoad != nil {
		onLoad(vsockPath)
	}
	if name == "PUT /vsock" && onVsock != nil {
		onVsock(body["uds_path"].(string))
	}
	if name == "PUT /actions" && onAction != nil {
		onAction(body["action_type"].(string))
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeAPI) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

// serveFakeAPI serves f on a unix socket at sock.
func serveFakeAPI(t testing.TB, sock string, f *fakeAPI) *httptest.Server {
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(f)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	return srv
}

// fakeGuest is a hybrid vsock socket: it answers CONNECT <port> with
// "OK 1073741824\n" once ready() is true, and otherwise closes the
// connection like Firecracker does when nothing listens in the guest.
// After the acknowledgement it plays a guest that speaks first.
func fakeGuest(l net.Listener, ready func() bool, greeting string) {
	fakeGuestConns(l, ready, greeting, nil)
}

// fakeGuestConns is fakeGuest keeping its open connections in conns (when
// not nil), so that a snapshot can reset them.
func fakeGuestConns(l net.Listener, ready func() bool, greeting string, conns *vsockConns) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func(c net.Conn) {
			r := bufio.NewReader(io.LimitReader(c, 64))
			line, err := r.ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "CONNECT ") || !ready() {
				c.Close()
				return
			}
			if conns != nil {
				conns.add(c)
				defer conns.remove(c)
			}
			// The acknowledgement and the guest's first bytes arrive
			// together: the dialer must not swallow the latter.
			io.WriteString(c, "OK 1073741824\n"+greeting)
			io.Copy(c, c) // echo
			c.Close()
		}(c)
	}
}

// vsockConns are a fake Firecracker's open vsock connections.
type vsockConns struct {
	mu sync.Mutex
	m  map[net.Conn]struct{}
}

func (v *vsockConns) add(c net.Conn) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil {
		v.m = map[net.Conn]struct{}{}
	}
	v.m[c] = struct{}{}
}

func (v *vsockConns) remove(c net.Conn) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.m, c)
}

// reset closes every open connection, as Firecracker's vsock device reset
// on a snapshot does (the listener stays).
func (v *vsockConns) reset() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for c := range v.m {
		c.Close()
		delete(v.m, c)
	}
}

// TestMain lets the test binary play Firecracker: with
// MVM_FAKE_FIRECRACKER=1 it serves the fake API on --api-sock, a hybrid
// vsock socket once configured, writes a "serial console" line to stdout
// and exits on SendCtrlAltDel.
func TestMain(m *testing.M) {
	if os.Getenv("MVM_FAKE_FIRECRACKER") == "1" {
		fakeFirecracker(os.Args[1:])
		return
	}
	os.Exit(m.Run())
}

func fakeFirecracker(args []string) {
	if len(args) == 1 && args[0] == "--version" {
		fmt.Printf("Firecracker v%s\n\nSupported snapshot data format versions: v1.0.0\n", fakeVersion)
		return
	}
	var sock, logPath string
	id := "anonymous-instance"
	for i := 0; i < len(args); i += 2 {
		if i+1 >= len(args) {
			fmt.Fprintf(os.Stderr, "error: argument %s needs a value\n", args[i])
			os.Exit(1)
		}
		switch args[i] {
		case "--api-sock":
			sock = args[i+1]
		case "--log-path":
			logPath = args[i+1]
		case "--id":
			id = args[i+1]
		case "--level":
			switch args[i+1] {
			case "Error", "Warning", "Info", "Debug", "Trace", "Off":
			default:
				fmt.Fprintf(os.Stderr, "error: invalid log level %q\n", args[i+1])
				os.Exit(1)
			}
		default:
			fmt.Fprintf(os.Stderr, "error: unknown argument %s\n", args[i])
			os.Exit(1)
		}
	}
	if !validID(id) {
		fmt.Fprintf(os.Stderr, "Invalid instance ID: %q\n", id)
		os.Exit(1)
	}
	if _, err := os.Stat(logPath); err != nil {
		fmt.Fprintln(os.Stderr, "log path must exist:", err)
		os.Exit(2)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	exit := make(chan int, 1)
	var vsockPath string
	conns := &vsockConns{}
	f := &fakeAPI{onSnapshot: conns.reset}
	f.onLoad = func(p string) {
		vl, err := net.Listen("unix", p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			exit <- 2
			return
		}
		go fakeGuestConns(vl, func() bool { return true }, "MVM-HELLO 1\n", conns)
	}
	f.onLoadFailed = func() { exit <- 1 }
	if msg := os.Getenv("MVM_FAKE_FAIL"); msg != "" {
		name, fault, _ := strings.Cut(msg, "=")
		f.fail = map[string]string{name: fault}
	}
	f.onVsock = func(p string) { vsockPath = p }
	f.onAction = func(a string) {
		switch a {
		case "InstanceStart":
			fmt.Println("Linux version 6.1.0-fake (serial console)")
			vl, err := net.Listen("unix", vsockPath)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				exit <- 2
				return
			}
			go fakeGuestConns(vl, func() bool { return true }, "MVM-HELLO 1\n", conns)
		case "SendCtrlAltDel":
			exit <- 0
		}
	}
	go http.Serve(l, f)
	os.Exit(<-exit)
}

// The request shapes of Firecracker's API as its swagger definition
// (src/firecracker/swagger/firecracker.yaml) documents them: each
// documented property with its JSON type, the required ones, enums and
// integer bounds. Firecracker's request parsing also rejects properties it
// does not know, so the fake does too.
type prop struct {
	typ      string // "string", "integer", "boolean", "object"
	required bool
	enum     []string
	min, max int64 // integer bounds when max > 0 (or min > 0)
	// shape is an object's own properties, checked like a body's.
	shape map[string]prop
}

var apiShapes = map[string]map[string]prop{
	"PUT /machine-config": { // MachineConfiguration
		"vcpu_count":        {typ: "integer", required: true, min: 1, max: 32},
		"mem_size_mib":      {typ: "integer", required: true},
		"smt":               {typ: "boolean"},
		"track_dirty_pages": {typ: "boolean"},
		"cpu_template":      {typ: "string", enum: []string{"C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"}},
		"huge_pages":        {typ: "string", enum: []string{"None", "Transparent", "2M"}},
	},
	"PUT /boot-source": { // BootSource
		"kernel_image_path": {typ: "string", required: true},
		"boot_args":         {typ: "string"},
		"initrd_path":       {typ: "string"},
	},
	"PUT /drives/{drive_id}": { // Drive
		"drive_id":       {typ: "string", required: true},
		"is_root_device": {typ: "boolean", required: true},
		"partuuid":       {typ: "string"},
		"cache_type":     {typ: "string", enum: []string{"Unsafe", "Writeback"}},
		"is_read_only":   {typ: "boolean"},
		"path_on_host":   {typ: "string"},
		"rate_limiter":   {typ: "object"},
		"io_engine":      {typ: "string", enum: []string{"Sync", "Async"}},
		"socket":         {typ: "string"},
	},
	"PUT /vsock": { // Vsock
		"guest_cid": {typ: "integer", required: true, min: 3},
		"uds_path":  {typ: "string", required: true},
		"vsock_id":  {typ: "string"},
	},
	"PUT /actions": { // InstanceActionInfo
		"action_type": {typ: "string", required: true, enum: []string{"FlushMetrics", "InstanceStart", "SendCtrlAltDel"}},
	},
	"PATCH /vm": { // Vm
		"state": {typ: "string", required: true, enum: []string{"Paused", "Resumed"}},
	},
	"PATCH /drives/{drive_id}": { // PartialDrive
		"drive_id":     {typ: "string", required: true},
		"path_on_host": {typ: "string"},
		"rate_limiter": {typ: "object"},
	},
	"PUT /snapshot/create": { // SnapshotCreateParams
		"mem_file_path": {typ: "string", required: true},
		"snapshot_path": {typ: "string", required: true},
		"snapshot_type": {typ: "string", enum: []string{"Full", "Diff"}},
	},
	"PUT /snapshot/load": { // SnapshotLoadParams
		"snapshot_path":         {typ: "string", required: true},
		"enable_diff_snapshots": {typ: "boolean"},
		"track_dirty_pages":     {typ: "boolean"},
		"mem_file_path":         {typ: "string"},
		"mem_backend":           {typ: "object", shape: memBackendShape},
		"resume_vm":             {typ: "boolean"},
		"network_overrides":     {typ: "array"},
		"vsock_override":        {typ: "object"},
		"clock_realtime":        {typ: "boolean"},
	},
}

var memBackendShape = map[string]prop{ // MemoryBackend
	"backend_type": {typ: "string", required: true, enum: []string{"File", "Uffd"}},
	"backend_path": {typ: "string", required: true},
}

// route is the swagger route of a request ("PUT /drives/{drive_id}").
func route(method, path string) string {
	if _, ok := strings.CutPrefix(path, "/drives/"); ok {
		return method + " /drives/{drive_id}"
	}
	return method + " " + path
}

// validateRequest checks one request against apiShapes.
func validateRequest(method, path string, body map[string]any) error {
	route := route(method, path)
	driveID := ""
	if id, ok := strings.CutPrefix(path, "/drives/"); ok {
		driveID = id
	}
	shape, ok := apiShapes[route]
	if !ok {
		return fmt.Errorf("Invalid request method and/or path: %s %s", method, path)
	}
	if body == nil {
		return fmt.Errorf("%s: missing request body", route)
	}
	if err := validateObject(route, shape, body); err != nil {
		return err
	}
	if driveID != "" && body["drive_id"] != driveID {
		return fmt.Errorf("The id from the path does not match the id from the body!")
	}
	return nil
}

// validateObject checks one JSON object against its shape.
func validateObject(route string, shape map[string]prop, body map[string]any) error {
	for name, p := range shape {
		if _, ok := body[name]; !ok && p.required {
			return fmt.Errorf("%s: missing field `%s`", route, name)
		}
	}
	for name, v := range body {
		p, ok := shape[name]
		if !ok {
			return fmt.Errorf("%s: unknown field `%s`", route, name)
		}
		switch p.typ {
		case "string":
			s, ok := v.(string)
			if !ok {
				return fmt.Errorf("%s: %s: invalid type, expected a string", route, name)
			}
			if len(p.enum) > 0 && !slices.Contains(p.enum, s) {
				return fmt.Errorf("%s: %s: unknown variant `%s`", route, name, s)
			}
		case "integer":
			n, ok := v.(float64)
			if !ok || n != math.Trunc(n) {
				return fmt.Errorf("%s: %s: invalid type, expected an integer", route, name)
			}
			if n < float64(p.min) || p.max > 0 && n > float64(p.max) {
				return fmt.Errorf("%s: %s: %v out of range", route, name, n)
			}
		case "boolean":
			if _, ok := v.(bool); !ok {
				return fmt.Errorf("%s: %s: invalid type, expected a boolean", route, name)
			}
		case "object":
			o, ok := v.(map[string]any)
			if !ok {
				return fmt.Errorf("%s: %s: invalid type, expected an object", route, name)
			}
			if p.shape != nil {
				if err := validateObject(route+" "+name, p.shape, o); err != nil {
					return err
				}
			}
		case "array":
			if _, ok := v.([]any); !ok {
				return fmt.Errorf("%s: %s: invalid type, expected an array", route, name)
			}
		}
	}
	return nil
}
