package secret

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStoreSetGetListRemove(t *testing.T) {
	s := Open(t.TempDir())
	now := time.Date(2026, 11, 29, 22, 0, 0, 0, time.UTC)
	if err := s.Set("openai", []byte("sk-VALUE-123"), now); err != nil {
		t.Fatal(err)
	}
	if err := s.Set("openai", []byte("sk-VALUE-456"), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	v, err := s.Get("openai")
	if err != nil || string(v) != "sk-VALUE-456" {
		t.Fatalf("get = %q, %v", v, err)
	}
	st, err := os.Stat(filepath.Join(s.Dir, "openai.json"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v %v, want 0600", st.Mode(), err)
	}
	dst, _ := os.Stat(s.Dir)
	if dst.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v, want 0700", dst.Mode())
	}
	ls, err := s.List()
	if err != nil || len(ls) != 1 || ls[0].Name != "openai" || !ls[0].Created.Equal(now) || !ls[0].Updated.Equal(now.Add(time.Hour)) {
		t.Fatalf("list = %+v, %v", ls, err)
	}
	if err := s.Remove("openai"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("openai"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after rm: %v", err)
	}
	if err := s.Remove("openai"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rm twice: %v", err)
	}
	ents, _ := os.ReadDir(s.Dir)
	if len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
}

func TestStoreRefusesBadInput(t *testing.T) {
	s := Open(t.TempDir())
	for _, name := range []string{"", "../x", "a/b", ".hidden", strings.Repeat("a", 65), "a b"} {
		if err := s.Set(name, []byte("v"), time.Now()); !errors.Is(err, ErrInvalid) {
			t.Errorf("Set(%q) = %v, want ErrInvalid", name, err)
		}
	}
	if err := s.Set("ok", nil, time.Now()); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty value: %v", err)
	}
	if err := s.Set("ok", make([]byte, MaxValueBytes+1), time.Now()); !errors.Is(err, ErrInvalid) {
		t.Errorf("big value: %v", err)
	}
	// A corrupt file is reported without echoing its contents.
	os.MkdirAll(s.Dir, 0o700)
	os.WriteFile(filepath.Join(s.Dir, "bad.json"), []byte("SENSITIVE-garbage"), 0o600)
	if _, err := s.Get("bad"); err == nil || strings.Contains(err.Error(), "SENSITIVE") {
		t.Fatalf("corrupt: %v", err)
	}
}

func TestReadValue(t *testing.T) {
	v, err := ReadValue(strings.NewReader("abc\n"), true)
	if err != nil || string(v) != "abc" {
		t.Fatalf("%q %v", v, err)
	}
	v, err = ReadValue(strings.NewReader("abc\n"), false)
	if err != nil || string(v) != "abc\n" {
		t.Fatalf("%q %v", v, err)
	}
	if _, err := ReadValue(strings.NewReader("\n"), true); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty: %v", err)
	}
	if _, err := ReadValue(bytes.NewReader(make([]byte, MaxValueBytes+1)), false); !errors.Is(err, ErrInvalid) {
		t.Fatalf("big: %v", err)
	}
}

func TestParseRef(t *testing.T) {
	good := map[string]Ref{
		"openai":                     {Name: "openai", Env: "openai"},
		"openai:OPENAI_API_KEY":      {Name: "openai", Env: "OPENAI_API_KEY"},
		"openai:/run/secrets/openai": {Name: "openai", Path: "/run/secrets/openai"},
	}
	for in, want := range good {
		got, err := ParseRef(in)
		if err != nil || got != want {
			t.Errorf("ParseRef(%q) = %+v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "x:1BAD", "x:/etc/passwd", "x:/run/secrets/../x", "x:/run/secrets/a/b", "x:/run/secrets/", "../x", "x:A=B"} {
		if _, err := ParseRef(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseRef(%q) = %v, want ErrInvalid", in, err)
		}
	}
	if err := CheckRefs([]Ref{{Name: "a", Env: "K"}, {Name: "b", Env: "K"}}); err == nil {
		t.Error("duplicate target accepted")
	}
}

func TestRedactor(t *testing.T) {
	r := NewRedactor(map[string][]byte{"k": []byte("SECRET"), "long": []byte("SECRETSECRET2")})
	if got := r.String("a SECRET b SECRETSECRET2 c"); got != "a [secret:k] b [secret:long] c" {
		t.Fatalf("got %q", got)
	}
	// Streaming: the value split over writes of every size is still caught.
	in := "xxSECRETyySECRETSECRET2zzSECRE"
	for chunk := 1; chunk <= len(in); chunk++ {
		var out bytes.Buffer
		w := r.Writer(&out)
		for i := 0; i < len(in); i += chunk {
			end := i + chunk
			if end > len(in) {
				end = len(in)
			}
			w.Write([]byte(in[i:end]))
		}
		w.Close()
		if want := "xx[secret:k]yy[secret:long]zzSECRE"; out.String() != want {
			t.Fatalf("chunk %d: %q, want %q", chunk, out.String(), want)
		}
	}
	var empty *Redactor
	if empty.String("x") != "x" {
		t.Fatal("nil redactor changed input")
	}
}
