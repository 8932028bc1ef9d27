package firecracker

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
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
	var body map[string]any
	if r.Body != nil {
		b, _ := io.ReadAll(r.Body)
		if len(b) > 0 {
			if err := json.Unmarshal(b, &body); err != nil {
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprintf(w, `{"fault_message":"bad json: %v"}`, err)
				return
			}
		}
	}
	if r.Header.Get("Content-Type") != "" && r.Header.Get("Content-Type") != "application/json" {
		w.WriteHeader(http.StatusBadRequest)
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
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--api-sock":
			sock = args[i+1]
		case "--log-path":
			logPath = args[i+1]
		}
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
