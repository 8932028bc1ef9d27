package evidence

// The evidence caps SPECIFICATION.md lists: fields per entry, string and
// list sizes, subject length, receipt size.

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestAuditFieldCaps(t *testing.T) {
	c, _, _ := newTestChain(t)
	fields := func(n int) map[string]any {
		m := map[string]any{}
		for i := 0; i < n; i++ {
			m[fmt.Sprintf("f%02d", i)] = i
		}
		return m
	}
	list := func(n int) []string { return strings.Split(strings.Repeat("x,", n-1)+"x", ",") }
	ok := []map[string]any{
		fields(MaxFields),
		{"s": strings.Repeat("a", MaxFieldString)},
		{"l": list(MaxFieldListItems)},
	}
	for _, f := range ok {
		if _, err := c.Append("exec.finished", "sb", f); err != nil {
			t.Errorf("at the cap, refused: %v", err)
		}
	}
	bad := []map[string]any{
		fields(MaxFields + 1),
		{"s": strings.Repeat("a", MaxFieldString+1)},
		{"l": list(MaxFieldListItems + 1)},
		{"l": []string{strings.Repeat("a", MaxFieldString+1)}},
	}
	for _, f := range bad {
		if _, err := c.Append("exec.finished", "sb", f); err == nil {
			t.Errorf("over a cap, accepted: %d fields", len(f))
		}
	}
	if _, err := c.Append("exec.finished", strings.Repeat("s", 128), nil); err != nil {
		t.Errorf("128-byte subject refused: %v", err)
	}
	if _, err := c.Append("exec.finished", strings.Repeat("s", 129), nil); err == nil {
		t.Error("129-byte subject accepted")
	}
}

func TestReceiptSizeCap(t *testing.T) {
	big := bytes.Repeat([]byte(" "), MaxReceiptBytes+1)
	_, err := VerifyReceipt(big, AnyKey)
	var re *ReceiptError
	if !errors.As(err, &re) || re.Check != CheckSize {
		t.Fatalf("oversized receipt: %v", err)
	}
}
