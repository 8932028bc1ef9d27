package testenv

import (
	"fmt"
	"testing"
	"time"
)

// fakeT records a Fatalf without ending the calling test.
type fakeT struct {
	testing.TB
	msg string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
}

func TestPollReturnsWhenTheConditionHolds(t *testing.T) {
	n := 0
	if !Poll(time.Minute, time.Millisecond, func() bool { n++; return n == 3 }) || n != 3 {
		t.Fatalf("n = %d", n)
	}
	if Poll(20*time.Millisecond, time.Millisecond, func() bool { return false }) {
		t.Fatal("a condition that never holds was reported as held")
	}
}

func TestEventuallyFailsWithTheLastState(t *testing.T) {
	f := &fakeT{TB: t}
	state := "start"
	Eventually(f, 20*time.Millisecond, time.Millisecond, func() bool { state = "last"; return false }, func() string { return "the screen (state " + state + ")" })
	if f.msg != "timed out after 20ms waiting for the screen (state last)" {
		t.Fatalf("message %q", f.msg)
	}
	f.msg = ""
	Eventually(f, time.Minute, time.Millisecond, func() bool { return true }, Msg("%s", "x"))
	if f.msg != "" {
		t.Fatalf("failed although the condition held: %q", f.msg)
	}
	Eventually(f, time.Millisecond, time.Millisecond, func() bool { return false }, Msg("the %s", "TTL"))
	if f.msg != "timed out after 1ms waiting for the TTL" {
		t.Fatalf("message %q", f.msg)
	}
}
