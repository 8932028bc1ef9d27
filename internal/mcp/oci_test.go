package mcp

import (
	"errors"
	"strings"
	"testing"
)

// TestCheckImageOCIReference: OCI references with a tag or a digest reach
// the resolver (which decides about registries); its refusal is passed on.
func TestCheckImageOCIReference(t *testing.T) {
	var asked []string
	s := &Server{resolveImage: func(n string) (int, error) {
		asked = append(asked, n)
		if strings.HasPrefix(n, "denied") {
			return 0, errors.New("refused: registries are off")
		}
		return 0, nil
	}}
	for _, ok := range []string{"python:3.12-slim", "ghcr.io/org/app@sha256:" + strings.Repeat("ab", 32), "127.0.0.1:5000/app:1"} {
		if _, err := s.checkImage(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	if _, err := s.checkImage("denied/app:1"); err == nil || !strings.Contains(err.Error(), "registries are off") {
		t.Errorf("refusal not passed on: %v", err)
	}
	for _, bad := range []string{"org/app", "python/..", "/etc:x", "../a:b"} {
		if _, err := s.checkImage(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
