// Package secret keeps named secrets under the data directory and turns
// references to them (--secret NAME[:ENV|:/run/secrets/FILE]) into what a
// sandbox gets. Values are only ever read by the runtime at the moment it
// hands them to a guest or redacts captured output; everything else (plans,
// specs, listings, evidence) carries names.
//
// On disk: $MVM_DATA_DIR/secrets/ (0700) holds one file per secret,
// NAME.json (0600), a JSON object
//
//	{"schema_version":1,"name":"openai","created":"2026-11-29T22:00:00Z",
//	 "updated":"2026-11-29T22:00:00Z","value_b64":"..."}
//
// written atomically (temp file + rename). docs/secrets.md documents it.
package secret

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/atomicfile"
	"github.com/mvm-sandbox/mvm/internal/lazyre"
)

// MaxValueBytes caps a secret's value.
const MaxValueBytes = 64 << 10

// SchemaVersion of a secret file.
const SchemaVersion = 1

var (
	// ErrNotFound: no secret of that name.
	ErrNotFound = errors.New("secret not found")
	// ErrInvalid: a bad name, value or reference.
	ErrInvalid = errors.New("invalid secret")
)

var nameRe = lazyre.New(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ValidateName checks a secret name.
func ValidateName(name string) error {
	if !nameRe.MatchString(name) {
		return fmt.Errorf("%w: name %q: use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit", ErrInvalid, name)
	}
	return nil
}

// Store is the secret store of one data directory.
type Store struct{ Dir string }

// Open returns the store under dataDir.
func Open(dataDir string) *Store { return &Store{Dir: filepath.Join(dataDir, "secrets")} }

// Meta is what listings show: never the value.
type Meta struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

type file struct {
	SchemaVersion int       `json:"schema_version"`
	Name          string    `json:"name"`
	Created       time.Time `json:"created"`
	Updated       time.Time `json:"updated"`
	ValueB64      string    `json:"value_b64"`
}

func (s *Store) path(name string) string { return filepath.Join(s.Dir, name+".json") }

// ReadValue reads a value from r, at most MaxValueBytes. With trimNewline
// one trailing "\n" (or "\r\n") is dropped, as `echo KEY | ...` adds it.
func ReadValue(r io.Reader, trimNewline bool) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxValueBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxValueBytes {
		return nil, fmt.Errorf("%w: value exceeds %d bytes", ErrInvalid, MaxValueBytes)
	}
	if trimNewline {
		b = []byte(strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"))
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: the value is empty", ErrInvalid)
	}
	return b, nil
}

// Set stores value under name, replacing an existing value (its created
// time is kept).
func (s *Store) Set(name string, value []byte, now time.Time) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if len(value) == 0 || len(value) > MaxValueBytes {
		return fmt.Errorf("%w: value must be 1 to %d bytes", ErrInvalid, MaxValueBytes)
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(s.Dir, 0o700); err != nil {
		return err
	}
	now = now.UTC().Truncate(time.Second)
	f := file{SchemaVersion: SchemaVersion, Name: name, Created: now, Updated: now, ValueB64: base64.StdEncoding.EncodeToString(value)}
	if old, err := s.read(name); err == nil {
		f.Created = old.Created
	}
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(s.path(name), append(b, '\n'), 0o600)
}

func (s *Store) read(name string) (*file, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.path(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %q (`mvmctl secret ls` lists secrets; `mvmctl secret set %s` creates it)", ErrNotFound, name, name)
	}
	if err != nil {
		return nil, err
	}
	var f file
	if err := json.Unmarshal(b, &f); err != nil || f.Name != name || f.SchemaVersion != SchemaVersion {
		// Never echo the file: it holds the value.
		return nil, fmt.Errorf("secret %q: the stored file is corrupt; `mvmctl secret set %s` replaces it", name, name)
	}
	return &f, nil
}

// Get returns a secret's value.
func (s *Store) Get(name string) ([]byte, error) {
	f, err := s.read(name)
	if err != nil {
		return nil, err
	}
	v, err := base64.StdEncoding.DecodeString(f.ValueB64)
	if err != nil || len(v) == 0 {
		return nil, fmt.Errorf("secret %q: the stored value is corrupt; `mvmctl secret set %s` replaces it", name, name)
	}
	return v, nil
}

// Check reports whether name is stored (ErrNotFound when not).
func (s *Store) Check(name string) error {
	_, err := s.read(name)
	return err
}

// List returns the stored secrets' metadata, sorted by name.
func (s *Store) List() ([]Meta, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return []Meta{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []Meta{}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() || ValidateName(name) != nil {
			continue
		}
		f, err := s.read(name)
		if err != nil {
			continue
		}
		out = append(out, Meta{Name: f.Name, Created: f.Created, Updated: f.Updated})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove deletes a secret.
func (s *Store) Remove(name string) error {
	if _, err := s.read(name); err != nil {
		return err
	}
	return os.Remove(s.path(name))
}

// Ref is a sandbox's use of a secret: as an environment variable (Env) or
// as a file on a tmpfs (Path, mode 0400). Exactly one of Env and Path is
// set.
type Ref struct {
	Name string `json:"name"`
	Env  string `json:"env,omitempty"`
	Path string `json:"path,omitempty"`
	// Origin is "manifest" for a secret an image manifest's [secrets]
	// asked for (and the operator granted); "" is the operator's own.
	Origin string `json:"origin,omitempty"`
}

// String is the reference as --secret writes it (NAME:TARGET).
func (r Ref) String() string {
	if r.Path != "" {
		return r.Name + ":" + r.Path
	}
	return r.Name + ":" + r.Env
}

// Target describes where the secret goes ("env:VAR" or "file:/path").
func (r Ref) Target() string {
	if r.Path != "" {
		return "file:" + r.Path
	}
	return "env:" + r.Env
}

var envRe = lazyre.New(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// SecretsDir is where file secrets live in the guest (a tmpfs).
const SecretsDir = "/run/secrets"

// ParseRef parses NAME, NAME:ENV_VAR or NAME:/run/secrets/FILE.
func ParseRef(s string) (Ref, error) {
	name, target, hasTarget := strings.Cut(s, ":")
	if err := ValidateName(name); err != nil {
		return Ref{}, err
	}
	if !hasTarget {
		target = name
	}
	r := Ref{Name: name}
	if strings.HasPrefix(target, "/") {
		if path.Clean(target) != target || path.Dir(target) != SecretsDir || !nameRe.MatchString(path.Base(target)) {
			return Ref{}, fmt.Errorf("%w: --secret %s: a file target must be %s/FILE (FILE: letters, digits, '_', '.', '-')", ErrInvalid, s, SecretsDir)
		}
		r.Path = target
		return r, nil
	}
	if !envRe.MatchString(target) {
		return Ref{}, fmt.Errorf("%w: --secret %s: %q is not an environment variable name (want [A-Za-z_][A-Za-z0-9_]*) nor %s/FILE", ErrInvalid, s, target, SecretsDir)
	}
	r.Env = target
	return r, nil
}

// CheckRefs refuses duplicate targets.
func CheckRefs(refs []Ref) error {
	seen := map[string]bool{}
	for _, r := range refs {
		t := r.Target()
		if seen[t] {
			return fmt.Errorf("%w: %s is the target of two secrets", ErrInvalid, t)
		}
		seen[t] = true
	}
	if len(refs) > 64 {
		return fmt.Errorf("%w: %d secrets exceed the limit of 64", ErrInvalid, len(refs))
	}
	return nil
}
