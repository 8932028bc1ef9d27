package cli

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// commandTree lists every command of mvmctl, root first.
func commandTree(t *testing.T) []*cobra.Command {
	app, _, _ := testApp(t)
	var all []*cobra.Command
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		all = append(all, c)
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(NewRoot(app))
	return all
}

// pathArgs is the argv that names c (without the root's name).
func pathArgs(c *cobra.Command) []string {
	return strings.Fields(c.CommandPath())[1:]
}

// TestUnknownSubcommandIsAUsageError walks the whole command tree: every
// group refuses a word that is not one of its subcommands with exit 2 and
// a message naming the word, and prints nothing on stdout. Before, `mvmctl
// image import x` printed help and exited 0, and `mvmctl bogus` exited 1
// (seen failing on the old code).
func TestUnknownSubcommandIsAUsageError(t *testing.T) {
	groups := 0
	for _, c := range commandTree(t) {
		if !c.HasSubCommands() {
			continue
		}
		groups++
		args := append(pathArgs(c), "bogus-word", "x")
		app, out, errb := testApp(t)
		code := run(app, args)
		if code != ExitUsage {
			t.Errorf("mvmctl %s: exit %d, want %d (stderr %q)", strings.Join(args, " "), code, ExitUsage, errb)
			continue
		}
		if !strings.Contains(errb.String(), `"bogus-word"`) {
			t.Errorf("mvmctl %s: stderr does not name the word: %q", strings.Join(args, " "), errb)
		}
		if out.Len() != 0 {
			t.Errorf("mvmctl %s: printed on stdout: %q", strings.Join(args, " "), out)
		}
	}
	if groups < 4 { // root, fs, proc, image, ...
		t.Fatalf("only %d command groups found", groups)
	}
}

// TestGroupAloneShowsHelp: a group without a subcommand still prints its
// help and succeeds.
func TestGroupAloneShowsHelp(t *testing.T) {
	for _, args := range [][]string{{}, {"image"}, {"fs"}, {"proc"}} {
		app, out, _ := testApp(t)
		if code := run(app, args); code != 0 || !strings.Contains(out.String(), "Usage:") {
			t.Errorf("mvmctl %v: exit %d, stdout %q", args, code, out)
		}
	}
}

// TestLeafCommandsRefuseStrayWords: a command that takes no arguments
// refuses one with exit 2.
func TestLeafCommandsRefuseStrayWords(t *testing.T) {
	for _, args := range [][]string{{"ls", "extra"}, {"images", "extra"}, {"image", "ls", "extra"}, {"doctor", "extra"}} {
		app, _, errb := testApp(t)
		if code := run(app, args); code != ExitUsage {
			t.Errorf("mvmctl %v: exit %d, want 2 (stderr %q)", args, code, errb)
		}
	}
}

// TestBadFlagIsAUsageError over every command: an unknown flag exits 2.
func TestBadFlagIsAUsageError(t *testing.T) {
	for _, c := range commandTree(t) {
		if c.Hidden || !c.HasParent() {
			continue
		}
		args := append(pathArgs(c), "--no-such-flag")
		app, _, errb := testApp(t)
		if code := run(app, args); code != ExitUsage {
			t.Errorf("mvmctl %s: exit %d, want 2 (stderr %q)", strings.Join(args, " "), code, errb)
		}
	}
}
