package image

import (
	"os"
	"testing"
)

func TestAgentRuntimeFiles(t *testing.T) {
	// busybox-static is static: nothing extra.
	if _, err := os.Stat("/bin/busybox"); err == nil {
		files, err := AgentRuntimeFiles("/bin/busybox")
		if err != nil || len(files) != 0 {
			t.Fatalf("static binary: %v %v", len(files), err)
		}
	}
	// /bin/ls is dynamic: its interpreter and libc come along.
	files, err := AgentRuntimeFiles("/bin/ls")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := files["/lib64/ld-linux-x86-64.so.2"]; !ok {
		t.Errorf("interpreter missing: %v", keys(files))
	}
	if _, ok := files["/lib/x86_64-linux-gnu/libc.so.6"]; !ok {
		t.Errorf("libc missing: %v", keys(files))
	}
	if _, err := AgentRuntimeFiles("/nonexistent"); err == nil {
		t.Error("missing agent accepted")
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
