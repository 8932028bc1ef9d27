package lazyre

import (
	"sync"
	"testing"
)

func TestLazyMatchesLikeRegexp(t *testing.T) {
	r := New(`^([a-z]+)-([0-9]{1,3})$`)
	if r.re != nil {
		t.Fatal("compiled before first use")
	}
	if !r.MatchString("abc-12") || r.MatchString("abc-1234") {
		t.Fatal("MatchString")
	}
	if m := r.FindStringSubmatch("xy-7"); len(m) != 3 || m[1] != "xy" || m[2] != "7" {
		t.Fatalf("FindStringSubmatch: %q", m)
	}
	if got := New(`[0-9]+`).ReplaceAllString("a1b22", "#"); got != "a#b#" {
		t.Fatalf("ReplaceAllString: %q", got)
	}
	if got := New(`[0-9]+`).FindString("ab123c"); got != "123" {
		t.Fatalf("FindString: %q", got)
	}
	if r.String() != `^([a-z]+)-([0-9]{1,3})$` {
		t.Fatalf("String: %q", r.String())
	}
}

func TestConcurrentFirstUse(t *testing.T) {
	r := New(`^a+$`)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !r.MatchString("aaa") {
				t.Error("no match")
			}
		}()
	}
	wg.Wait()
}

func TestInvalidPanicsAtFirstUse(t *testing.T) {
	r := New(`(`)
	defer func() {
		if recover() == nil {
			t.Fatal("an invalid expression did not panic")
		}
	}()
	r.MatchString("x")
}
