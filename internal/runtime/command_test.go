package runtime

import (
	"reflect"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// TestCommandFor: Docker's rule for `run` on an image with Entrypoint
// [/bin/app --verbose] and Cmd [serve]; and what evidence records.
func TestCommandFor(t *testing.T) {
	img := sandbox.ImageRef{Command: []string{"/bin/app", "--verbose", "serve"}, Entrypoint: []string{"/bin/app", "--verbose"}}
	none, empty, sh := (*[]string)(nil), &[]string{}, &[]string{"sh"}
	for _, c := range []struct {
		name     string
		argv     []string
		ep       *[]string
		want     []string
		imageCmd bool
		ran      []string // what the receipt hashes
	}{
		{"no argv: the image's command", nil, none, nil, true, []string{"/bin/app", "--verbose", "serve"}},
		{"argv replaces Cmd, keeps Entrypoint", []string{"--help"}, none, []string{"/bin/app", "--verbose", "--help"}, false, []string{"/bin/app", "--verbose", "--help"}},
		{"--entrypoint replaces both", []string{"-c", "ls"}, sh, []string{"sh", "-c", "ls"}, false, []string{"sh", "-c", "ls"}},
		{"--entrypoint alone", nil, sh, []string{"sh"}, false, []string{"sh"}},
		{`--entrypoint ""`, []string{"ls", "/"}, empty, []string{"ls", "/"}, false, []string{"ls", "/"}},
	} {
		got, imageCmd := CommandFor(img, c.argv, c.ep)
		if !reflect.DeepEqual(got, c.want) || imageCmd != c.imageCmd {
			t.Errorf("%s: %q %v, want %q %v", c.name, got, imageCmd, c.want, c.imageCmd)
		}
		if ran := ranArgv(img, got, imageCmd); !reflect.DeepEqual(ran, c.ran) {
			t.Errorf("%s: evidence argv %q, want %q", c.name, ran, c.ran)
		}
	}
	// an image without an Entrypoint (a manifest's command is all Cmd)
	if got, _ := CommandFor(sandbox.ImageRef{Command: []string{"python", "main.py"}}, []string{"python", "-V"}, nil); !reflect.DeepEqual(got, []string{"python", "-V"}) {
		t.Errorf("manifest command: %q", got)
	}
}
