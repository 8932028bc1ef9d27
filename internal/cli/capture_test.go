package cli

import (
	"strings"
	"testing"
)

// TestCaptureKeepsAtMostItsLimit: `--json` results keep at most
// --max-output bytes of each stream and report the total and truncation.
func TestCaptureKeepsAtMostItsLimit(t *testing.T) {
	c := &capture{limit: 8}
	for _, s := range []string{"0123", "4567", "89ab", "cdef"} {
		if n, err := c.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("write %q: %d, %v", s, n, err)
		}
	}
	obj := map[string]any{}
	c.into(obj, "stdout")
	if obj["stdout"] != "01234567" || obj["stdout_bytes"] != int64(16) || obj["stdout_truncated"] != true {
		t.Fatalf("result %v", obj)
	}
	exact := &capture{limit: 4}
	exact.Write([]byte("abcd"))
	obj = map[string]any{}
	exact.into(obj, "stderr")
	if obj["stderr"] != "abcd" || obj["stderr_truncated"] != false {
		t.Fatalf("exact fit %v", obj)
	}
	bin := &capture{limit: 4}
	bin.Write([]byte{0xff, 0xfe})
	obj = map[string]any{}
	bin.into(obj, "stdout")
	if obj["stdout_base64"] != "//4=" {
		t.Fatalf("binary %v", obj)
	}
}

// TestMaxOutputDefault: run and exec keep 4 MiB of each stream unless
// --max-output says otherwise.
func TestMaxOutputDefault(t *testing.T) {
	root := NewRoot(&App{})
	for _, name := range []string{"run", "exec"} {
		cmd, _, err := root.Find([]string{name})
		if err != nil || cmd.Name() != name {
			t.Fatalf("%s: %v", name, err)
		}
		f := cmd.Flags().Lookup("max-output")
		if f == nil || f.DefValue != "4194304" || !strings.Contains(f.Usage, "--json") {
			t.Fatalf("%s --max-output: %+v", name, f)
		}
	}
}

// TestCpMaxBytesDefault: copies out stop at 4 GiB of file data unless
// --max-bytes says otherwise (the mechanism: e2e TestCpOutHostileGuest).
func TestCpMaxBytesDefault(t *testing.T) {
	cmd, _, err := NewRoot(&App{}).Find([]string{"cp"})
	if err != nil || cmd.Name() != "cp" {
		t.Fatalf("cp: %v", err)
	}
	if f := cmd.Flags().Lookup("max-bytes"); f == nil || f.DefValue != "4294967296" {
		t.Fatalf("cp --max-bytes: %+v", f)
	}
}
