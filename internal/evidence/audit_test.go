package evidence

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func newTestChain(t *testing.T) (*Chain, *Signer, string) {
	t.Helper()
	data := t.TempDir()
	s, err := LoadOrCreateSigner(filepath.Join(data, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(data, "audit")
	return OpenChain(dir, s), s, dir
}

func appendN(t *testing.T, c *Chain, n int) []Record {
	t.Helper()
	kinds := []string{KindPlanAdmitted, KindSandboxStarted, KindExecStarted, KindExecFinished, KindFileCopied, KindSandboxStopped}
	var out []Record
	for i := 0; i < n; i++ {
		r, err := c.Append(kinds[i%len(kinds)], "sb-"+strconv.Itoa(i), map[string]any{"n": i, "tag": "t" + strconv.Itoa(i), "ok": true})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func mustVerify(t *testing.T, path string, s *Signer) *ChainReport {
	t.Helper()
	rep, err := VerifyChain(path, s.Public)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestAppendAndVerify(t *testing.T) {
	c, s, _ := newTestChain(t)
	recs := appendN(t, c, 7)
	for i, r := range recs {
		if r.Entry.Seq != uint64(i+1) {
			t.Fatalf("seq %d at %d", r.Entry.Seq, i)
		}
		h, err := r.Entry.Hash()
		if err != nil || h != r.Hash {
			t.Fatalf("entry hash not derivable: %v %s %s", err, h, r.Hash)
		}
		if i == 0 && r.Entry.Prev != ZeroHash {
			t.Fatal("first prev is not zeros")
		}
		if i > 0 && r.Entry.Prev != recs[i-1].Hash {
			t.Fatal("prev does not link")
		}
	}
	rep := mustVerify(t, c.Path(), s)
	if !rep.OK || rep.Entries != 7 || rep.HeadSeq != 7 || rep.HeadHash != recs[6].Hash || rep.Warning != "" {
		t.Fatalf("report %+v", rep)
	}
	st, _ := os.Stat(c.Path())
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("chain mode %04o", st.Mode().Perm())
	}
	// Another key does not verify the chain.
	rep, _ = VerifyChain(c.Path(), GenerateSigner("host:x").Public)
	if rep.OK || rep.Failure.Check != "key" || rep.Failure.Line != 1 {
		t.Fatalf("other key: %+v", rep.Failure)
	}
}

func TestAppendRejectsBadInput(t *testing.T) {
	c, _, _ := newTestChain(t)
	bad := []struct {
		kind   string
		fields map[string]any
	}{
		{"Exec.Finished", nil},
		{"exec", nil},
		{"exec.finished", map[string]any{"argv": "x"}},
		{"exec.finished", map[string]any{"stdout": "x"}},
		{"exec.finished", map[string]any{"env": "x"}},
		{"exec.finished", map[string]any{"Bad-Key": 1}},
		{"exec.finished", map[string]any{"blob": strings.Repeat("a", MaxFieldString+1)}},
		{"exec.finished", map[string]any{"nested": map[string]any{"a": 1}}},
		{"exec.finished", map[string]any{"bytes": []byte("raw")}},
		{"exec.finished", map[string]any{"multi": "line\nbreak"}},
		{"exec.finished", map[string]any{"big": uint64(1) << 60}},
	}
	for _, b := range bad {
		if _, err := c.Append(b.kind, "sb", b.fields); err == nil {
			t.Errorf("accepted kind %q fields %v", b.kind, b.fields)
		}
	}
	if _, err := c.Append("net.allowed", "sb", map[string]any{"env_keys": []string{"A", "B"}, "x": nil, "f": 1.5}); err != nil {
		t.Fatal(err)
	}
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	return lines
}

func writeLines(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestChainTamperDetected(t *testing.T) {
	other := GenerateSigner("host:evil")
	reencode := func(t *testing.T, line []byte, edit func(*Entry), resign *Signer) []byte {
		var e Entry
		if err := decodeStrict(bytes.TrimSuffix(line, []byte("\n")), &e); err != nil {
			t.Fatal(err)
		}
		edit(&e)
		if resign != nil {
			e.KeySHA256 = resign.Fingerprint()
			sb, _ := e.SigningBytes()
			e.Signature = b64(resign.Sign(DomainAudit, sb))
		}
		out, err := e.CanonicalBytes()
		if err != nil {
			t.Fatal(err)
		}
		return append(out, '\n')
	}
	var self *Signer
	cases := []struct {
		name      string
		mutate    func(t *testing.T, lines [][]byte) [][]byte
		wantLine  int
		wantCheck string
	}{
		{"edit subject", func(t *testing.T, l [][]byte) [][]byte {
			l[2] = reencode(t, l[2], func(e *Entry) { e.Subject = "other" }, nil)
			return l
		}, 3, "signature"},
		{"edit field value", func(t *testing.T, l [][]byte) [][]byte {
			l[3] = reencode(t, l[3], func(e *Entry) { e.Fields["n"] = 99 }, nil)
			return l
		}, 4, "signature"},
		{"edit kind text in place", func(t *testing.T, l [][]byte) [][]byte {
			l[1] = bytes.Replace(l[1], []byte(KindSandboxStarted), []byte("sandbox.stopxed"), 1)
			return l
		}, 2, "signature"},
		{"edit time", func(t *testing.T, l [][]byte) [][]byte {
			l[0] = reencode(t, l[0], func(e *Entry) { e.Time = "2001-01-01T00:00:00.000Z" }, nil)
			return l
		}, 1, "signature"},
		{"edit and re-sign with another key", func(t *testing.T, l [][]byte) [][]byte {
			l[2] = reencode(t, l[2], func(e *Entry) { e.Subject = "x" }, other)
			return l
		}, 3, "key"},
		{"edit and re-sign with the host key breaks next prev", func(t *testing.T, l [][]byte) [][]byte {
			l[2] = reencode(t, l[2], func(e *Entry) { e.Subject = "x" }, self)
			return l
		}, 4, "prev"},
		{"delete entry", func(t *testing.T, l [][]byte) [][]byte {
			return append(l[:2:2], l[3:]...)
		}, 3, "seq"},
		{"delete first entry", func(t *testing.T, l [][]byte) [][]byte {
			return l[1:]
		}, 1, "seq"},
		{"reorder entries", func(t *testing.T, l [][]byte) [][]byte {
			l[3], l[4] = l[4], l[3]
			return l
		}, 4, "seq"},
		{"truncate entry in the middle", func(t *testing.T, l [][]byte) [][]byte {
			l[2] = append(l[2][:len(l[2])/2:len(l[2])/2], '\n')
			return l
		}, 3, "parse"},
		{"cut the file in the middle of an entry and keep going", func(t *testing.T, l [][]byte) [][]byte {
			l[2] = l[2][: len(l[2])/2 : len(l[2])/2]
			return l
		}, 3, "parse"},
		{"renumber seq", func(t *testing.T, l [][]byte) [][]byte {
			l[2] = reencode(t, l[2], func(e *Entry) { e.Seq = 7 }, nil)
			return l
		}, 3, "seq"},
		{"non-canonical whitespace", func(t *testing.T, l [][]byte) [][]byte {
			l[4] = append([]byte(" "), l[4]...)
			return l
		}, 5, "canonical"},
		{"unknown field", func(t *testing.T, l [][]byte) [][]byte {
			l[1] = bytes.Replace(l[1], []byte(`{"fields"`), []byte(`{"extra":1,"fields"`), 1)
			return l
		}, 2, "parse"},
		{"blank line inserted", func(t *testing.T, l [][]byte) [][]byte {
			return append(l[:2:2], append([][]byte{[]byte("\n")}, l[2:]...)...)
		}, 3, "parse"},
		{"broken prev", func(t *testing.T, l [][]byte) [][]byte {
			l[5] = reencode(t, l[5], func(e *Entry) { e.Prev = strings.Repeat("ab", 32) }, self)
			return l
		}, 6, "prev"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, s, _ := newTestChain(t)
			self = s
			appendN(t, c, 6)
			lines := tc.mutate(t, readLines(t, c.Path()))
			writeLines(t, c.Path(), lines)
			rep := mustVerify(t, c.Path(), s)
			if rep.OK || rep.Failure == nil {
				t.Fatalf("tampering not detected: %+v", rep)
			}
			f := rep.Failure
			if f.Line != tc.wantLine || f.Check != tc.wantCheck {
				t.Fatalf("got line %d check %s (%s); want line %d check %s", f.Line, f.Check, f.Reason, tc.wantLine, tc.wantCheck)
			}
			if rep.Entries != tc.wantLine-1 {
				t.Fatalf("entries %d before failure, want %d", rep.Entries, tc.wantLine-1)
			}
			if !strings.Contains(rep.Err().Error(), fmt.Sprintf("line %d", tc.wantLine)) {
				t.Fatalf("error does not name the line: %v", rep.Err())
			}
			// Append refuses nothing it cannot parse, but a chain broken in the
			// middle stays broken: appending never repairs tampering.
		})
	}
}

func TestTornTailReportedAndRepaired(t *testing.T) {
	c, s, _ := newTestChain(t)
	recs := appendN(t, c, 3)
	st, _ := os.Stat(c.Path())
	size := st.Size()
	// Simulate a crash mid-append: half of a would-be line, no newline.
	f, err := os.OpenFile(c.Path(), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(recs[2].Raw[:len(recs[2].Raw)/2])
	f.Close()

	rep := mustVerify(t, c.Path(), s)
	if !rep.OK || rep.Entries != 3 || rep.TornAt != size {
		t.Fatalf("report %+v", rep)
	}
	want := fmt.Sprintf("valid up to entry 3; trailing partial entry at byte offset %d", size)
	if !strings.HasPrefix(rep.Warning, want) {
		t.Fatalf("warning %q, want prefix %q", rep.Warning, want)
	}
	// Readers skip the partial line.
	got, next, err := ReadRecords(c.Path(), 0)
	if err != nil || len(got) != 3 || next != size {
		t.Fatalf("ReadRecords: %d %d %v", len(got), next, err)
	}

	r4, err := c.Append(KindSandboxStopped, "sb", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r4.Entry.Seq != 4 || r4.Entry.Prev != recs[2].Hash || r4.Offset != size {
		t.Fatalf("append after torn tail: %+v", r4)
	}
	rep = mustVerify(t, c.Path(), s)
	if !rep.OK || rep.Entries != 4 || rep.Warning != "" {
		t.Fatalf("after repair: %+v", rep)
	}
}

func TestTornTailOnlyLine(t *testing.T) {
	c, s, _ := newTestChain(t)
	os.MkdirAll(filepath.Dir(c.Path()), 0o700)
	os.WriteFile(c.Path(), []byte(`{"fields":{},"kind":"plan.adm`), 0o600)
	rep := mustVerify(t, c.Path(), s)
	if !rep.OK || rep.Entries != 0 || !strings.HasPrefix(rep.Warning, "valid up to entry 0; trailing partial entry at byte offset 0") {
		t.Fatalf("%+v", rep)
	}
	r, err := c.Append(KindPlanAdmitted, "sb", nil)
	if err != nil || r.Entry.Seq != 1 || r.Entry.Prev != ZeroHash {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestAppendRefusesCorruptTail(t *testing.T) {
	c, _, _ := newTestChain(t)
	appendN(t, c, 2)
	lines := readLines(t, c.Path())
	lines[1] = []byte("garbage\n")
	writeLines(t, c.Path(), lines)
	if _, err := c.Append(KindPlanAdmitted, "sb", nil); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("append onto a corrupt tail: %v", err)
	}
}

func TestLargeEntriesAcrossChunks(t *testing.T) {
	c, s, _ := newTestChain(t)
	fields := map[string]any{}
	for i := 0; i < 30; i++ {
		fields[fmt.Sprintf("h%02d", i)] = strings.Repeat("f", 250)
	}
	for i := 0; i < 5; i++ {
		if _, err := c.Append(KindFileCopied, "sb", fields); err != nil {
			t.Fatal(err)
		}
	}
	rep := mustVerify(t, c.Path(), s)
	if !rep.OK || rep.Entries != 5 {
		t.Fatalf("%+v", rep)
	}
	tail, _, err := TailRecords(c.Path(), 2)
	if err != nil || len(tail) != 2 || tail[0].Entry.Seq != 4 || tail[1].Entry.Seq != 5 {
		t.Fatalf("tail: %v %v", len(tail), err)
	}
}

func TestTailReadFind(t *testing.T) {
	c, _, _ := newTestChain(t)
	recs := appendN(t, c, 10)
	tail, end, err := TailRecords(c.Path(), 3)
	if err != nil || len(tail) != 3 || tail[0].Entry.Seq != 8 {
		t.Fatalf("tail: %+v %v", tail, err)
	}
	all, _, _ := TailRecords(c.Path(), 100)
	if len(all) != 10 {
		t.Fatalf("tail 100: %d", len(all))
	}
	appendN(t, c, 2)
	more, _, err := ReadRecords(c.Path(), end)
	if err != nil || len(more) != 2 || more[0].Entry.Seq != 11 {
		t.Fatalf("follow: %+v %v", more, err)
	}
	r, err := FindRecord(c.Path(), "5")
	if err != nil || r.Entry.Seq != 5 {
		t.Fatalf("find seq: %v", err)
	}
	r, err = FindRecord(c.Path(), recs[6].Hash[:12])
	if err != nil || r.Entry.Seq != 7 {
		t.Fatalf("find hash: %v", err)
	}
	if _, err := FindRecord(c.Path(), "999"); err == nil {
		t.Fatal("found missing seq")
	}
	if _, err := FindRecord(c.Path(), "zz"); err == nil {
		t.Fatal("bad id accepted")
	}
	if r, _, _ := TailRecords(filepath.Join(t.TempDir(), "none.jsonl"), 5); len(r) != 0 {
		t.Fatal("missing file has entries")
	}
}

func TestConcurrentAppendGoroutines(t *testing.T) {
	c, s, dir := newTestChain(t)
	const workers, k = 30, 5
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			ch := c
			if w%2 == 1 {
				ch = OpenChain(dir, s) // separate instances contend on the flock
			}
			for i := 0; i < k; i++ {
				if _, err := ch.Append(KindExecStarted, fmt.Sprintf("w%d", w), map[string]any{"i": i}); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	checkContiguous(t, c.Path(), s, workers*k)
}

func checkContiguous(t *testing.T, path string, s *Signer, n int) {
	t.Helper()
	rep := mustVerify(t, path, s)
	if !rep.OK || rep.Entries != n || rep.HeadSeq != uint64(n) || rep.Warning != "" {
		t.Fatalf("after concurrent appends: %+v %v", rep, rep.Err())
	}
	recs, _, err := ReadRecords(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range recs {
		if r.Entry.Seq != uint64(i+1) {
			t.Fatalf("seq %d at line %d", r.Entry.Seq, i+1)
		}
	}
}

const helperEnv = "MVM_EVIDENCE_TEST_APPENDER"

// TestHelperAppender is the child side of TestConcurrentAppendProcesses.
func TestHelperAppender(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		t.Skip("helper process only")
	}
	var args struct {
		Data string
		K    int
		ID   int
	}
	if err := json.Unmarshal([]byte(spec), &args); err != nil {
		t.Fatal(err)
	}
	s, err := LoadSigner(filepath.Join(args.Data, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 2; g++ { // two goroutines per process as well
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			c := OpenChain(filepath.Join(args.Data, "audit"), s)
			for i := g; i < args.K; i += 2 {
				if _, err := c.Append(KindExecFinished, fmt.Sprintf("p%d", args.ID), map[string]any{"i": i}); err != nil {
					t.Error(err)
				}
			}
		}(g)
	}
	wg.Wait()
}

func TestConcurrentAppendProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	data := t.TempDir()
	s, err := LoadOrCreateSigner(filepath.Join(data, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	const procs, k = 30, 4
	var wg sync.WaitGroup
	errs := make(chan error, procs)
	for p := 0; p < procs; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			spec, _ := json.Marshal(map[string]any{"Data": data, "K": k, "ID": p})
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAppender$", "-test.count=1")
			cmd.Env = append(os.Environ(), helperEnv+"="+string(spec))
			if out, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Errorf("appender %d: %v\n%s", p, err, out)
			}
		}(p)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checkContiguous(t, ChainPath(filepath.Join(data, "audit")), s, procs*k)
}
