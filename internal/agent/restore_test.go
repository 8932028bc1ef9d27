package agent

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/guestid"
	"github.com/mvm-sandbox/mvm/internal/guestnet"
	"golang.org/x/sys/unix"
)

// fakeRestoreSys records what Restored would have done to the guest; the
// test never touches the host's RNG, clock or hostname.
type fakeRestoreSys struct {
	mu      sync.Mutex
	calls   []string
	entropy []byte
	clock   int64
	host    string
	files   map[string]string
	mac     net.HardwareAddr
	netMode string
	fail    map[string]error // call name -> error to return
}

func (f *fakeRestoreSys) record(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
	return f.fail[name]
}

func (f *fakeRestoreSys) sys(now time.Time) *restoreSys {
	return &restoreSys{
		addEntropy: func(b []byte) error { f.entropy = append([]byte(nil), b...); return f.record("addEntropy") },
		reseed:     func() error { return f.record("reseed") },
		now:        func() time.Time { return now },
		setClock:   func(ns int64) error { f.clock = ns; return f.record("setClock") },
		setHostname: func(h string) error {
			if err := f.record("setHostname"); err != nil {
				return err
			}
			f.host = h
			return nil
		},
		writeFile: func(path string, data []byte, _ os.FileMode) error {
			if err := f.record("write " + path); err != nil {
				return err
			}
			if f.files == nil {
				f.files = map[string]string{}
			}
			f.files[path] = string(data)
			return nil
		},
		setMAC:     func(ifname string, mac net.HardwareAddr) error { f.mac = mac; return f.record("setMAC " + ifname) },
		reapplyNet: func(mode string) error { f.netMode = mode; return f.record("reapplyNet") },
	}
}

func restoreServer(t *testing.T, f *fakeRestoreSys, netMode string, now time.Time) (pb.AgentClient, *server) {
	t.Helper()
	c, s := testClient(t, "sealed") // a sealed image is restored like any other
	s.restore.mu.Lock()
	s.restore.sys = f.sys(now)
	s.restore.netMode = netMode
	s.restore.mu.Unlock()
	return c.Agent, s
}

func request(t *testing.T, name string, nic bool) *pb.RestoredRequest {
	t.Helper()
	id, err := guestid.New(name, nic)
	if err != nil {
		t.Fatal(err)
	}
	return &pb.RestoredRequest{Entropy: id.Entropy, UnixNanos: id.UnixNanos, Hostname: id.Hostname, MachineId: id.MachineID, Mac: id.MAC}
}

// TestRestoredAppliesIdentity: entropy is added and the RNG reseeded
// before anything else, then the clock, hostname, machine-id and
// /etc/hostname; the answer comes after all of them, and later processes
// see the new hostname.
func TestRestoredAppliesIdentity(t *testing.T) {
	f := &fakeRestoreSys{}
	guestNow := time.Unix(1_700_000_000, 0) // the snapshot's frozen clock
	c, s := restoreServer(t, f, "", guestNow)
	req := request(t, "clone-1", false)
	resp, err := c.Restored(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"addEntropy", "reseed", "setClock", "setHostname", "write " + machineIDPath, "write " + hostnamePath}
	if !reflect.DeepEqual(f.calls, want) {
		t.Fatalf("calls %v, want %v", f.calls, want)
	}
	if !bytes.Equal(f.entropy, req.Entropy) || f.clock != req.UnixNanos || f.host != "clone-1" {
		t.Errorf("applied entropy %x clock %d host %q; sent %x %d %q", f.entropy, f.clock, f.host, req.Entropy, req.UnixNanos, req.Hostname)
	}
	if f.files[machineIDPath] != req.MachineId+"\n" || f.files[hostnamePath] != "clone-1\n" {
		t.Errorf("files %q", f.files)
	}
	if resp.ClockStepNanos != req.UnixNanos-guestNow.UnixNano() || !resp.HostnameFile || resp.Nic {
		t.Errorf("response %+v", resp)
	}
	if h := s.currentHostname(); h != "clone-1" {
		t.Errorf("agent hostname %q after Restored", h)
	}
	env, _ := s.buildEnv(nil, false)
	if !slicesContains(env, "HOSTNAME=clone-1") {
		t.Errorf("processes still get the old HOSTNAME: %v", env)
	}
	hello, err := c.Hello(context.Background(), &pb.HelloRequest{ProtocolVersion: 1})
	if err != nil || hello.Hostname != "clone-1" {
		t.Errorf("hello hostname %q %v", hello.GetHostname(), err)
	}
}

// TestRestoredResumeKeepsMachineID: without a machine-id (a sandbox
// resumed from its own saved state) the RNG, clock and hostname are
// refreshed and /etc/machine-id is left alone.
func TestRestoredResumeKeepsMachineID(t *testing.T) {
	f := &fakeRestoreSys{}
	c, _ := restoreServer(t, f, "", time.Now())
	id, err := guestid.ForResume("web-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Restored(context.Background(), &pb.RestoredRequest{Entropy: id.Entropy, UnixNanos: id.UnixNanos, Hostname: id.Hostname}); err != nil {
		t.Fatal(err)
	}
	want := []string{"addEntropy", "reseed", "setClock", "setHostname", "write " + hostnamePath}
	if !reflect.DeepEqual(f.calls, want) {
		t.Fatalf("calls %v, want %v", f.calls, want)
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestRestoredNIC: with a NIC, the MAC changes and the boot's network mode
// is re-applied; a MAC for a guest without a NIC is refused before
// anything changes.
func TestRestoredNIC(t *testing.T) {
	f := &fakeRestoreSys{}
	c, _ := restoreServer(t, f, guestnet.ModeUnrestricted, time.Now())
	req := request(t, "net-clone", true)
	resp, err := c.Restored(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Nic || !bytes.Equal(f.mac, req.Mac) || f.netMode != guestnet.ModeUnrestricted {
		t.Errorf("nic %v mac %s mode %q", resp.Nic, f.mac, f.netMode)
	}
	if n := len(f.calls); n < 2 || f.calls[n-2] != "setMAC "+guestnet.NIC || f.calls[n-1] != "reapplyNet" {
		t.Errorf("calls %v", f.calls)
	}

	f2 := &fakeRestoreSys{}
	c2, _ := restoreServer(t, f2, "", time.Now())
	_, err = c2.Restored(context.Background(), request(t, "x", true))
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "no NIC") {
		t.Errorf("MAC without a NIC: %v", err)
	}
	if len(f2.calls) != 0 {
		t.Errorf("refused request still changed %v", f2.calls)
	}
}

// TestRestoredRefusesBadRequests: each out-of-bounds field is refused with
// InvalidArgument, and nothing in the guest is touched.
func TestRestoredRefusesBadRequests(t *testing.T) {
	f := &fakeRestoreSys{}
	c, s := restoreServer(t, f, guestnet.ModeAllowlist, time.Now())
	mods := map[string]func(r *pb.RestoredRequest){
		"no entropy":         func(r *pb.RestoredRequest) { r.Entropy = nil },
		"short entropy":      func(r *pb.RestoredRequest) { r.Entropy = r.Entropy[:guestid.MinEntropyBytes-1] },
		"huge entropy":       func(r *pb.RestoredRequest) { r.Entropy = make([]byte, guestid.MaxEntropyBytes+1) },
		"constant entropy":   func(r *pb.RestoredRequest) { r.Entropy = bytes.Repeat([]byte{7}, 64) },
		"no clock":           func(r *pb.RestoredRequest) { r.UnixNanos = 0 },
		"negative clock":     func(r *pb.RestoredRequest) { r.UnixNanos = -1 },
		"empty hostname":     func(r *pb.RestoredRequest) { r.Hostname = "" },
		"hostname slash":     func(r *pb.RestoredRequest) { r.Hostname = "a/b" },
		"hostname newline":   func(r *pb.RestoredRequest) { r.Hostname = "a\nb" },
		"hostname upper":     func(r *pb.RestoredRequest) { r.Hostname = "Clone" },
		"hostname dash":      func(r *pb.RestoredRequest) { r.Hostname = "-a" },
		"hostname long":      func(r *pb.RestoredRequest) { r.Hostname = strings.Repeat("a", 64) },
		"machine-id short":   func(r *pb.RestoredRequest) { r.MachineId = r.MachineId[:31] },
		"machine-id upper":   func(r *pb.RestoredRequest) { r.MachineId = strings.ToUpper(r.MachineId) },
		"machine-id zero":    func(r *pb.RestoredRequest) { r.MachineId = strings.Repeat("0", 32) },
		"machine-id newline": func(r *pb.RestoredRequest) { r.MachineId = r.MachineId[:31] + "\n" },
		"mac short":          func(r *pb.RestoredRequest) { r.Mac = r.Mac[:5] },
		"mac multicast":      func(r *pb.RestoredRequest) { r.Mac[0] |= 1 },
		"mac vendor":         func(r *pb.RestoredRequest) { r.Mac[0] &^= 2 },
	}
	for name, mod := range mods {
		req := request(t, "ok", true)
		mod(req)
		if _, err := c.Restored(context.Background(), req); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
	if len(f.calls) != 0 {
		t.Errorf("refused requests changed %v", f.calls)
	}
	if h := s.currentHostname(); h != "test" {
		t.Errorf("hostname %q after refused requests", h)
	}
}

// TestRestoredFailures: a failed step fails the call with its kind (a
// guest that could not be made unique must not be handed out); only
// /etc/hostname is best effort.
func TestRestoredFailures(t *testing.T) {
	for step, wantKind := range map[string]errdefs.Kind{
		"addEntropy":             errdefs.KindPermissionDenied,
		"reseed":                 errdefs.KindGuest,
		"setClock":               errdefs.KindPermissionDenied,
		"setHostname":            errdefs.KindGuest,
		"write " + machineIDPath: errdefs.KindPermissionDenied,
	} {
		errno := map[errdefs.Kind]error{errdefs.KindPermissionDenied: unix.EPERM, errdefs.KindGuest: unix.ENODATA}[wantKind]
		f := &fakeRestoreSys{fail: map[string]error{step: errno}}
		c, _ := restoreServer(t, f, "", time.Now())
		_, err := c.Restored(context.Background(), request(t, "x", false))
		if errdefs.KindOf(err) != wantKind || !strings.Contains(err.Error(), errno.Error()) {
			t.Errorf("%s failing: %v (kind %q), want kind %q", step, err, errdefs.KindOf(err), wantKind)
		}
		if f.calls[len(f.calls)-1] != step {
			t.Errorf("%s failing: went on to %v", step, f.calls)
		}
	}
	f := &fakeRestoreSys{fail: map[string]error{"write " + hostnamePath: unix.EROFS}}
	c, _ := restoreServer(t, f, "", time.Now())
	resp, err := c.Restored(context.Background(), request(t, "x", false))
	if err != nil || resp.HostnameFile {
		t.Errorf("read-only /etc/hostname: %+v %v, want success without hostname_file", resp, err)
	}
	f = &fakeRestoreSys{fail: map[string]error{"setMAC " + guestnet.NIC: errors.New("no such device")}}
	c, _ = restoreServer(t, f, guestnet.ModeInbound, time.Now())
	if _, err := c.Restored(context.Background(), request(t, "x", true)); !errdefs.IsGuest(err) {
		t.Errorf("failed MAC change: %v", err)
	}
}

// TestRestoredOnlyAsInit: with the real syscalls (no seams), an agent
// that is not PID 1 (one run on a host, or this test) refuses, so nothing
// can set the host's clock or hostname through it.
func TestRestoredOnlyAsInit(t *testing.T) {
	c, _ := testClient(t, "dev")
	before, _ := os.Hostname()
	_, err := c.Agent.Restored(context.Background(), request(t, "not-this-host", false))
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "not a guest's init") {
		t.Fatalf("%v, want failed precondition", err)
	}
	if after, _ := os.Hostname(); after != before {
		t.Fatalf("hostname changed from %q to %q", before, after)
	}
}
