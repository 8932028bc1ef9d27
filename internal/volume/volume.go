// Package volume keeps named persistent volumes under the data directory:
// each is a sparse ext4 image made on the host with mkfs.ext4 (no root, no
// guest tools) and attached to a sandbox as a virtio-blk disk.
//
// On disk: $MVM_DATA_DIR/volumes/NAME/ (0700) holds volume.json (metadata),
// disk.img (the ext4 image, 0600) and lock. A sandbox that attaches a volume
// holds a flock on lock for its whole life (its supervisor inherits the
// descriptor): shared for read-only attachments, exclusive for read-write.
// The kernel drops the lock when the last holder exits, so a crashed
// sandbox never leaves a volume locked.
package volume

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/atomicfile"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// SchemaVersion of volume.json.
const SchemaVersion = 1

// Size limits.
const (
	MinBytes     = 16 << 20
	MaxBytes     = 1 << 40
	DefaultBytes = 1 << 30
)

var (
	ErrNotFound = errors.New("volume not found")
	ErrExists   = errors.New("volume already exists")
	ErrInUse    = errors.New("volume is in use")
	ErrInvalid  = errors.New("invalid volume request")
)

// invalid is an ErrInvalid whose message stands alone.
type invalid struct{ msg string }

func (e *invalid) Error() string        { return e.msg }
func (e *invalid) Is(target error) bool { return target == ErrInvalid }

func invalidf(format string, a ...any) error { return &invalid{fmt.Sprintf(format, a...)} }

var nameRe = lazyre.New(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// ValidateName checks a volume name.
func ValidateName(name string) error {
	if !nameRe.MatchString(name) {
		return invalidf("name %q: use 1-63 letters, digits, '_', '.', '-', starting with a letter or digit", name)
	}
	return nil
}

// ParseSize parses 512M, 1G, 10G, 1T or a byte count.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > MaxBytes/mult {
		return 0, invalidf("size %q: want a number with K, M, G or T (e.g. 1G)", s)
	}
	b := n * mult
	if b < MinBytes || b > MaxBytes {
		return 0, invalidf("size %s must be between 16M and 1T", s)
	}
	return b, nil
}

// Info describes a volume.
type Info struct {
	SchemaVersion int       `json:"schema_version"`
	Name          string    `json:"name"`
	SizeBytes     int64     `json:"size_bytes"`
	Created       time.Time `json:"created"`
	// Filled in on read:
	Path           string `json:"path,omitempty"`
	AllocatedBytes int64  `json:"allocated_bytes"`
}

// Store is the volume store of one data directory.
type Store struct{ Dir string }

// Open returns the store under dataDir.
func Open(dataDir string) *Store { return &Store{Dir: filepath.Join(dataDir, "volumes")} }

func (s *Store) dir(name string) string { return filepath.Join(s.Dir, name) }

// ImagePath is the volume's disk image.
func (s *Store) ImagePath(name string) string { return filepath.Join(s.dir(name), "disk.img") }

func (s *Store) lockPath(name string) string { return filepath.Join(s.dir(name), "lock") }

// Create makes a sparse ext4 image of size bytes. Nothing is left behind
// on failure.
func (s *Store) Create(name string, size int64, now time.Time) (*Info, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if size < MinBytes || size > MaxBytes {
		return nil, invalidf("size must be between 16M and 1T")
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	d := s.dir(name)
	if err := os.Mkdir(d, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%w: %q (`mvmctl volume inspect %s`)", ErrExists, name, name)
		}
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(d)
		}
	}()
	img := s.ImagePath(name)
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("create volume image: %w", err)
	}
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,nodiscard,root_owner=0:0", img).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("format volume (mkfs.ext4): %v: %s; is the disk full? `df -h %s`", err, strings.TrimSpace(string(out)), s.Dir)
	}
	lf, err := os.OpenFile(s.lockPath(name), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	lf.Close()
	info := &Info{SchemaVersion: SchemaVersion, Name: name, SizeBytes: size, Created: now.UTC().Truncate(time.Second)}
	if err := s.writeInfo(info); err != nil {
		return nil, err
	}
	ok = true
	return s.Inspect(name)
}

func (s *Store) writeInfo(info *Info) error {
	c := *info
	c.Path, c.AllocatedBytes = "", 0
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(s.dir(info.Name), "volume.json"), append(b, '\n'), 0o600)
}

// Inspect reads a volume's metadata.
func (s *Store) Inspect(name string) (*Info, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(s.dir(name), "volume.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %q (`mvmctl volume ls` lists volumes; `mvmctl volume create %s` makes it)", ErrNotFound, name, name)
	}
	if err != nil {
		return nil, err
	}
	var info Info
	if err := json.Unmarshal(b, &info); err != nil || info.Name != name {
		return nil, fmt.Errorf("volume %q: volume.json is corrupt", name)
	}
	info.Path = s.ImagePath(name)
	var st syscall.Stat_t
	if err := syscall.Stat(info.Path, &st); err != nil {
		return nil, fmt.Errorf("volume %q: image missing: %w", name, err)
	}
	info.AllocatedBytes = st.Blocks * 512
	return &info, nil
}

// List returns every volume, sorted by name.
func (s *Store) List() ([]*Info, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return []*Info{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []*Info{}
	for _, e := range ents {
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue
		}
		if info, err := s.Inspect(e.Name()); err == nil {
			out = append(out, info)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Lock is a held attachment lock.
type Lock struct{ *os.File }

// Acquire takes the attachment lock without waiting: shared when readOnly,
// exclusive otherwise. ErrInUse means another sandbox holds it in a
// conflicting mode.
func (s *Store) Acquire(name string, readOnly bool) (*Lock, error) {
	if _, err := s.Inspect(name); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(s.lockPath(name), os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_EX
	if readOnly {
		how = syscall.LOCK_SH
	}
	if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			mode := "read-write"
			if readOnly {
				mode = "read-only"
			}
			why := "another sandbox has it attached (read-write attachments are exclusive)"
			if readOnly {
				why = "another sandbox has it attached read-write (only read-only attachments may be shared)"
			}
			return nil, fmt.Errorf("%w: %q cannot be attached %s: %s", ErrInUse, name, mode, why)
		}
		return nil, err
	}
	return &Lock{f}, nil
}

// Attached reports whether any sandbox holds the volume.
func (s *Store) Attached(name string) (bool, error) {
	l, err := s.Acquire(name, false)
	if errors.Is(err, ErrInUse) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	l.Close()
	return false, nil
}

// Remove deletes a volume that no sandbox holds.
func (s *Store) Remove(name string) error {
	l, err := s.Acquire(name, false)
	if errors.Is(err, ErrInUse) {
		return fmt.Errorf("%w: %q is attached to a sandbox; `mvmctl down` it first", ErrInUse, name)
	}
	if err != nil {
		return err
	}
	defer l.Close()
	return os.RemoveAll(s.dir(name))
}

// Resize grows a volume that no sandbox holds to size bytes.
func (s *Store) Resize(name string, size int64) (*Info, error) {
	l, err := s.Acquire(name, false)
	if errors.Is(err, ErrInUse) {
		return nil, fmt.Errorf("%w: %q is attached to a sandbox; `mvmctl down` it before resizing", ErrInUse, name)
	}
	if err != nil {
		return nil, err
	}
	defer l.Close()
	info, err := s.Inspect(name)
	if err != nil {
		return nil, err
	}
	if size < info.SizeBytes {
		return nil, invalidf("%q is %d bytes; shrinking is not supported", name, info.SizeBytes)
	}
	if size > MaxBytes {
		return nil, invalidf("size must be at most 1T")
	}
	if size == info.SizeBytes {
		return info, nil
	}
	img := s.ImagePath(name)
	// A filesystem must be clean before resize2fs grows it; -p repairs
	// what is safe to repair (exit 1 means it did).
	if out, err := exec.Command("e2fsck", "-f", "-p", img).CombinedOutput(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() > 1 {
			return nil, fmt.Errorf("check volume %q (e2fsck): %v: %s", name, err, strings.TrimSpace(string(out)))
		}
	}
	if err := os.Truncate(img, size); err != nil {
		return nil, err
	}
	if out, err := exec.Command("resize2fs", img).CombinedOutput(); err != nil {
		os.Truncate(img, info.SizeBytes)
		return nil, fmt.Errorf("resize volume %q (resize2fs): %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	info.SizeBytes = size
	if err := s.writeInfo(info); err != nil {
		return nil, err
	}
	return s.Inspect(name)
}
