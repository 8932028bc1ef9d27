package mcp

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLimitsDefaults(t *testing.T) {
	l, err := LimitsFromEnv(envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{SessionIdle: 5 * time.Minute, SessionMax: time.Hour, MaxInflight: 4, MemCeilingMiB: 4096, MaxSandboxes: 8, TotalMemMiB: 8192,
		SnapshotMiB: 4096}
	if !reflect.DeepEqual(l, want) || !reflect.DeepEqual(l, DefaultLimits()) {
		t.Fatalf("defaults = %+v, want %+v", l, want)
	}
}

func TestLimitsFromEnv(t *testing.T) {
	l, err := LimitsFromEnv(envOf(map[string]string{
		EnvSessionIdle: "3s", EnvSessionMax: "900", EnvMaxInflight: " 2 ", EnvMemCeilingMiB: "1024",
		EnvMaxSandboxes: "3", EnvTotalMemMiB: "2048",
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{SessionIdle: 3 * time.Second, SessionMax: 15 * time.Minute, MaxInflight: 2, MemCeilingMiB: 1024, MaxSandboxes: 3, TotalMemMiB: 2048,
		SnapshotMiB: DefaultSnapshotMiB}
	if !reflect.DeepEqual(l, want) {
		t.Fatalf("got %+v, want %+v", l, want)
	}
	l, err = LimitsFromEnv(envOf(map[string]string{EnvSessionIdle: "1h30m", EnvSessionMax: ""}))
	if err != nil || l.SessionIdle != 90*time.Minute || l.SessionMax != DefaultSessionMax {
		t.Fatalf("got %+v, %v", l, err)
	}
}

func TestLimitsInvalid(t *testing.T) {
	for _, c := range []struct{ name, value, want string }{
		{EnvSessionIdle, "abc", "want a duration"},
		{EnvSessionIdle, "0", "must be positive"},
		{EnvSessionIdle, "-5s", "must be positive"},
		{EnvSessionIdle, "500ms", "at least 1s"},
		{EnvSessionMax, "30d", "want a duration"},
		{EnvSessionMax, "9999h", "at most"},
		{EnvMaxInflight, "0", "between 1 and 1024"},
		{EnvMaxInflight, "four", "whole number"},
		{EnvMaxInflight, "2.5", "whole number"},
		{EnvMaxInflight, "100000", "between 1 and 1024"},
		{EnvMemCeilingMiB, "64", "between 128 and"},
		{EnvMemCeilingMiB, "4G", "whole number"},
		{EnvMaxSandboxes, "0", "between 1 and 1024"},
		{EnvMaxSandboxes, "many", "whole number"},
		{EnvTotalMemMiB, "100", "between 128 and"},
		{EnvTotalMemMiB, "8G", "whole number"},
	} {
		_, err := LimitsFromEnv(envOf(map[string]string{c.name: c.value}))
		if err == nil {
			t.Errorf("%s=%q: no error", c.name, c.value)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, c.name) || !strings.Contains(msg, c.value) || !strings.Contains(msg, c.want) {
			t.Errorf("%s=%q: error %q should name the variable, the value and %q", c.name, c.value, msg, c.want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"300": 300 * time.Second, "90s": 90 * time.Second, " 2m ": 2 * time.Minute, "0": 0} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "5 minutes", "1e9999"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q): no error", in)
		}
	}
}

func TestDurationArgument(t *testing.T) {
	var a struct {
		TTL Duration `json:"ttl"`
	}
	for in, want := range map[string]time.Duration{
		`{"ttl":60}`: time.Minute, `{"ttl":1.5}`: 1500 * time.Millisecond, `{"ttl":"10m"}`: 10 * time.Minute,
		`{"ttl":"45"}`: 45 * time.Second, `{"ttl":null}`: 0,
	} {
		a.TTL = 0
		if err := json.Unmarshal([]byte(in), &a); err != nil || a.TTL.D() != want {
			t.Errorf("%s: got %v, %v; want %v", in, a.TTL.D(), err, want)
		}
	}
	for _, in := range []string{`{"ttl":-1}`, `{"ttl":"-5s"}`, `{"ttl":"soon"}`, `{"ttl":true}`, `{"ttl":[1]}`} {
		if err := json.Unmarshal([]byte(in), &a); err == nil {
			t.Errorf("%s: no error", in)
		}
	}
}
