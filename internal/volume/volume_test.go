package volume

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1G": 1 << 30, "512M": 512 << 20, "16m": 16 << 20, "2GiB": 2 << 30, "1T": 1 << 40} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "0", "-1G", "1X", "15M", "2T", "G", "99999999999999999999G"} {
		if _, err := ParseSize(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSize(%q) = %v, want ErrInvalid", in, err)
		}
	}
}

func TestCreateLockRemoveResize(t *testing.T) {
	s := Open(t.TempDir())
	info, err := s.Create("data", 64<<20, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if info.SizeBytes != 64<<20 || info.AllocatedBytes >= info.SizeBytes {
		t.Fatalf("not sparse: %+v", info)
	}
	if out, err := exec.Command("e2fsck", "-n", "-f", s.ImagePath("data")).CombinedOutput(); err != nil {
		t.Fatalf("not a clean ext4: %v %s", err, out)
	}
	if _, err := s.Create("data", 64<<20, time.Now()); !errors.Is(err, ErrExists) {
		t.Fatalf("create twice: %v", err)
	}
	if _, err := s.Create("../x", 64<<20, time.Now()); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad name: %v", err)
	}

	// Read-only attachments share; read-write is exclusive both ways.
	ro1, err := s.Acquire("data", true)
	if err != nil {
		t.Fatal(err)
	}
	ro2, err := s.Acquire("data", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire("data", false); !errors.Is(err, ErrInUse) {
		t.Fatalf("rw while ro held: %v", err)
	}
	if err := s.Remove("data"); !errors.Is(err, ErrInUse) {
		t.Fatalf("rm while attached: %v", err)
	}
	if _, err := s.Resize("data", 128<<20); !errors.Is(err, ErrInUse) {
		t.Fatalf("resize while attached: %v", err)
	}
	ro1.Close()
	ro2.Close()
	rw, err := s.Acquire("data", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire("data", true); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "read-write") {
		t.Fatalf("ro while rw held: %v", err)
	}
	if att, _ := s.Attached("data"); !att {
		t.Fatal("Attached = false while held")
	}
	rw.Close() // the holder died: the kernel drops the lock
	if att, _ := s.Attached("data"); att {
		t.Fatal("Attached = true after release")
	}

	if _, err := s.Resize("data", 32<<20); !errors.Is(err, ErrInvalid) {
		t.Fatalf("shrink: %v", err)
	}
	info, err = s.Resize("data", 128<<20)
	if err != nil || info.SizeBytes != 128<<20 {
		t.Fatalf("resize: %+v %v", info, err)
	}
	out, err := exec.Command("dumpe2fs", "-h", s.ImagePath("data")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Block count:") {
		t.Fatalf("dumpe2fs: %v", err)
	}
	ls, err := s.List()
	if err != nil || len(ls) != 1 || ls[0].Name != "data" {
		t.Fatalf("list %+v %v", ls, err)
	}
	if err := s.Remove("data"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Inspect("data"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("inspect after rm: %v", err)
	}
	if ents, _ := os.ReadDir(s.Dir); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
}

func TestParseMountSpec(t *testing.T) {
	m, err := ParseMountSpec("/srv/x:/data")
	if err != nil || m.Volume || !m.ReadOnly || m.Source != "/srv/x" || m.Target != "/data" {
		t.Fatalf("%+v %v", m, err)
	}
	m, err = ParseMountSpec("cache:/cache")
	if err != nil || !m.Volume || m.ReadOnly {
		t.Fatalf("%+v %v", m, err)
	}
	m, err = ParseMountSpec("./d:/d:rw")
	if err != nil || m.Volume || m.ReadOnly || !strings.HasPrefix(m.Source, "/") {
		t.Fatalf("%+v %v", m, err)
	}
	for _, in := range []string{"/x", "/x:data", "/x:/", "/x:/proc", "/x:/dev/x", "/x:/run", "/x:/a/../b", "/x:/d:rx", "bad name:/d", "~/x:/d", "/x:/a:/b:ro"} {
		if _, err := ParseMountSpec(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseMountSpec(%q) = %v, want ErrInvalid", in, err)
		}
	}
}

func TestCheckHostDir(t *testing.T) {
	root := t.TempDir()
	home := root + "/home"
	data := home + "/.local/share/mvm"
	share := root + "/proj"
	for _, d := range []string{data, share} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(root+"/file", nil, 0o644)
	os.Symlink(share, root+"/link")
	// Directories that exist and whose names are virtiofsd option syntax:
	// "-o source=DIR" split at the comma shared the directory named after
	// the second "source=" (here root/secret), read-write.
	inject := root + "/proj,source=" + root + "/secret"
	os.MkdirAll(inject, 0o755)
	os.MkdirAll(root+`/back\slash`, 0o755)
	if p, err := CheckHostDir(share, home, data); err != nil || p != share {
		t.Fatalf("good dir: %q %v", p, err)
	}
	for in, want := range map[string]string{
		"/":                  "whole host",
		home:                 "home directory",
		home + "/.local":     "overlaps",
		data:                 "overlaps",
		data + "/keys":       "does not exist",
		root + "/link":       "symlink",
		root + "/link/":      "symlink",
		root + "/missing":    "does not exist",
		root + "/file":       "not a directory",
		"relative":           "absolute",
		inject:               "option syntax",
		root + `/back\slash`: "option syntax",
	} {
		_, err := CheckHostDir(in, home, data)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckHostDir(%q) = %v, want %q", in, err, want)
		}
	}
	os.MkdirAll(data+"/keys", 0o700)
	if _, err := CheckHostDir(data+"/keys", home, data); err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Errorf("inside data dir: %v", err)
	}
	// A path through a symlinked parent.
	os.MkdirAll(share+"/sub", 0o755)
	if _, err := CheckHostDir(root+"/link/sub", home, data); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("through symlink: %v", err)
	}
}
