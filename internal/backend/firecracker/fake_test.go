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
// {"fault_message": ...} when fail names the request.
type fakeAPI struct {
	mu   sync.Mutex
	reqs []recorded
	fail map[string]string // "PUT /boot-source" -> fault message
	// onAction runs for PUT /actions with the action type.
	onAction func(string)
	onVsock  func(udsPath string)
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
	onAction, onVsock := f.onAction, f.onVsock
	f.mu.Unlock()
	if bad {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(apiFault{FaultMessage: msg})
		return
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
			// The acknowledgement and the guest's first bytes arrive
			// together: the dialer must not swallow the latter.
			io.WriteString(c, "OK 1073741824\n"+greeting)
			io.Copy(c, c) // echo
			c.Close()
		}(c)
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
	f := &fakeAPI{}
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
			go fakeGuest(vl, func() bool { return true }, "MVM-HELLO 1\n")
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
}

// validateRequest checks one request against apiShapes.
func validateRequest(method, path string, body map[string]any) error {
	route := method + " " + path
	driveID := ""
	if id, ok := strings.CutPrefix(path, "/drives/"); ok && method == "PUT" {
		route, driveID = "PUT /drives/{drive_id}", id
	}
	shape, ok := apiShapes[route]
	if !ok {
		return fmt.Errorf("Invalid request method and/or path: %s %s", method, path)
	}
	if body == nil {
		return fmt.Errorf("%s: missing request body", route)
	}
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
			if _, ok := v.(map[string]any); !ok {
				return fmt.Errorf("%s: %s: invalid type, expected an object", route, name)
			}
		}
	}
	if driveID != "" && body["drive_id"] != driveID {
		return fmt.Errorf("The id from the path does not match the id from the body!")
	}
	return nil
}
