package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestHostDirectories shares two host directories into one sandbox (one
// read-only, one read-write) and tries to get out of them from inside the
// guest: "..", symlinks pointing out, remounting read-write, creating and
// opening device nodes. A sentinel file sits beside the shared
// directories; the guest must never read it nor change anything the
// host did not share.
func TestHostDirectories(t *testing.T) {
	e := newEnv(t)
	base := t.TempDir()
	home := filepath.Join(base, "home")
	ro := filepath.Join(base, "ro")
	rw := filepath.Join(base, "rw")
	for _, d := range []string{home, ro, rw} {
		os.MkdirAll(d, 0o755)
	}
	// $HOME is a directory of the test's own; the shared cache stays.
	e.extra = append(e.extra, "HOME="+home, "MVM_CACHE_DIR="+cacheDir())
	os.WriteFile(filepath.Join(base, "sentinel"), []byte("SENTINEL-beside-the-share\n"), 0o644)
	os.WriteFile(filepath.Join(ro, "hello"), []byte("from the host\n"), 0o644)
	os.Symlink("../sentinel", filepath.Join(ro, "rel-out"))
	os.Symlink(filepath.Join(base, "sentinel"), filepath.Join(ro, "abs-out"))
	if os.Geteuid() == 0 {
		// A device node the host user left in a share must not open as a
		// device (the share is mounted nodev under the file server).
		if err := syscall.Mknod(filepath.Join(rw, "hostmem"), syscall.S_IFCHR|0o666, 1<<8|1); err != nil {
			t.Fatalf("mknod: %v", err)
		}
	}
	os.MkdirAll(e.data, 0o700)
	inject := filepath.Join(base, "x,source="+ro)
	os.MkdirAll(inject, 0o755)
	link := filepath.Join(base, "link")
	os.Symlink(ro, link)

	// Host paths that must be refused before anything boots.
	refused := map[string][]string{
		"does not exist":  {"-v", filepath.Join(base, "missing") + ":/m"},
		"is a symlink":    {"-v", link + ":/m"},
		"whole host":      {"-v", "/:/m"},
		"home directory":  {"-v", home + ":/m"},
		"mvm's own":       {"-v", e.data + ":/m"},
		"mvm's own ":      {"-v", filepath.Dir(e.state) + ":/m"},
		"absolute":        {"-v", ro + ":relative"},
		"which the guest": {"-v", ro + ":/proc"},
		// virtiofsd read "-o source=PATH" as options: this directory
		// made it share base/ro (read-write) instead.
		"option syntax": {"-v", inject + ":/m"},
	}
	for want, args := range refused {
		r := e.run(append([]string{"run"}, append(args, "--", "true")...)...)
		if r.code != 2 || !strings.Contains(r.stderr, strings.TrimSpace(want)) {
			t.Errorf("-v %v: want exit 2 and %q, got %s", args, want, r)
		}
	}
	// Policy: restrictive refuses host directories; dry-run shows the
	// mounts and allow_rw_mount.
	if r := e.run("run", "--profile", "restrictive", "-v", ro+":/m", "--", "true"); r.code != 126 || !strings.Contains(r.stderr, "mount.forbidden") {
		t.Errorf("restrictive: %s", r)
	}
	// Read-write needs --allow-rw-mount under standard and dev alike
	// (docs/decisions.md); permissive needs its acknowledgement.
	for _, prof := range []string{"standard", "dev"} {
		if r := e.run("run", "--profile", prof, "-v", rw+":/m:rw", "--", "true"); r.code != 126 || !strings.Contains(r.stderr, "read_write_forbidden") || !strings.Contains(r.stderr, "--allow-rw-mount") {
			t.Errorf("%s rw: %s", prof, r)
		}
	}
	if r := e.run("run", "--profile", "permissive", "-v", rw+":/m:rw", "--", "true"); r.code != 126 || !strings.Contains(r.stderr, "MVM_ACK_PERMISSIVE_RUN") {
		t.Errorf("permissive rw without ack: %s", r)
	}
	r := e.run("run", "--dry-run", "--json", "-v", rw+":/w:rw", "--allow-rw-mount", "--", "true")
	var dry map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &dry); err != nil || r.code != 0 || dry["verdict"] != "admit" || dry["allow_rw_mount"] != true {
		t.Fatalf("dry run: %v %s", err, r)
	}
	if m := dry["mounts"].([]any); len(m) != 1 || m[0].(map[string]any)["host_path"] != rw || m[0].(map[string]any)["read_only"] != false {
		t.Errorf("dry run mounts: %v", dry["mounts"])
	}
	if len(e.sandboxDirs()) != 0 {
		t.Fatalf("refusals left state: %v", e.sandboxDirs())
	}

	e.must("up", "--name", "share", "-v", ro+":/mnt/ro", "-v", rw+":/mnt/rw:rw", "--allow-rw-mount")
	defer e.run("down", "share")
	sh := func(script string) result { return e.run("exec", "share", "--", "sh", "-c", script) }

	if r := sh("cat /mnt/ro/hello"); r.code != 0 || r.stdout != "from the host\n" {
		t.Fatalf("read through share: %s", r)
	}
	// Read-only, enforced by the host: even after the guest remounts rw.
	if r := sh("touch /mnt/ro/new"); r.code == 0 {
		t.Errorf("write to a read-only share succeeded: %s", r)
	}
	sh("mount -o remount,rw /mnt/ro; echo x > /mnt/ro/after-remount")
	if _, err := os.Stat(filepath.Join(ro, "after-remount")); err == nil {
		t.Errorf("the guest wrote into a read-only share after remounting it")
	}
	// Read-write share: the host sees what the guest writes.
	if r := sh("echo guest-wrote > /mnt/rw/out"); r.code != 0 {
		t.Fatalf("write to rw share: %s", r)
	}
	if b, _ := os.ReadFile(filepath.Join(rw, "out")); string(b) != "guest-wrote\n" {
		t.Errorf("host sees %q", b)
	}
	// Escapes: each prints the sentinel only if it got out.
	escapes := []string{
		"cat /mnt/ro/../sentinel",
		"cat /mnt/ro/rel-out",
		"cat /mnt/ro/abs-out",
		"cd /mnt/ro && cd ../.. && cat sentinel",
		"cat /mnt/rw/../../sentinel",
		"ln -s ../../sentinel /mnt/rw/up; cat /mnt/rw/up",
		"ln -s " + filepath.Join(base, "sentinel") + " /mnt/rw/abs; cat /mnt/rw/abs",
		"mkdir -p /mnt/rw/d && mount --bind /mnt/rw/d /mnt/rw/d && cat /mnt/rw/d/../../sentinel",
		"find / -xdev -name sentinel -exec cat {} \\; 2>/dev/null; find /mnt -name sentinel -exec cat {} \\;",
	}
	for _, s := range escapes {
		if r := sh(s); strings.Contains(r.stdout+r.stderr, "SENTINEL") {
			t.Errorf("escaped the share with %q: %s", s, r)
		}
	}
	// Device nodes: the guest cannot make one, and one the host left is
	// not a device.
	if r := sh("mknod /mnt/rw/null c 1 3"); r.code == 0 {
		t.Errorf("mknod in a share succeeded")
	}
	if st, err := os.Lstat(filepath.Join(rw, "null")); err == nil && st.Mode()&fs.ModeDevice != 0 {
		t.Errorf("the guest created a device node on the host")
	}
	if os.Geteuid() == 0 {
		if r := sh("head -c 1 /mnt/rw/hostmem >/dev/null && echo OPENED"); strings.Contains(r.stdout, "OPENED") {
			t.Errorf("a host device node opened through the share: %s", r)
		}
	}
	// The host path and mode are in the signed plan and in ls --json.
	var st map[string]any
	for _, row := range e.sandboxes() {
		if row["name"] == "share" {
			st = row
		}
	}
	if m, _ := st["mounts"].([]any); len(m) != 2 {
		t.Errorf("ls --json mounts: %v", st["mounts"])
	}
	planFile := filepath.Join(e.state, "sb", st["id"].(string), "plan.json")
	pb, err := os.ReadFile(planFile)
	if err != nil || !bytes.Contains(pb, []byte(`"host_path":"`+rw+`"`)) || !bytes.Contains(pb, []byte(`"allow_rw_mount":true`)) {
		t.Errorf("plan does not record the mounts: %v %s", err, pb)
	}
	e.must("down", "share")
	e.assertClean()
}

// TestManifestMounts: a build directory's mvm.toml asks for a host
// directory (relative to it), a volume and a secret. Without --allow-manifest-mounts
// the boot is refused before anything is created, naming both and what to
// do; every host-path rule of -v applies to them; consent never makes a
// read-write one admissible without --allow-rw-mount; with consent they
// are printed before boot, mounted, and recorded in the signed plan; its
// secret needs its own grant (--allow-manifest-secrets).
func TestManifestMounts(t *testing.T) {
	e := newEnv(t)
	base := t.TempDir()
	proj := filepath.Join(base, "proj")
	data := filepath.Join(proj, "data")
	os.MkdirAll(data, 0o755)
	os.WriteFile(filepath.Join(data, "hello"), []byte("from the manifest's directory\n"), 0o644)
	writeManifest := func(dir, mounts string) {
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "mvm.toml"), []byte("template = \"minimal\"\n"+mounts), 0o644)
	}
	writeManifest(proj, "[[mount]]\nhost = \"data\"\nguest = \"/data\"\n\n[[mount]]\nvolume = \"mcache\"\nguest = \"/cache\"\n\n[secrets]\nAPI_KEY = \"msecret\"\n")
	e.must("volume", "create", "mcache", "--size", "16M")
	if r := e.runIn(strings.NewReader("manifest-secret-value"), "secret", "set", "msecret"); r.code != 0 {
		t.Fatal(r)
	}

	r := e.run("up", proj, "--name", "m")
	if r.code != 126 || !strings.Contains(r.stderr, data+":/data:ro") || !strings.Contains(r.stderr, "mcache:/cache:rw") || !strings.Contains(r.stderr, "--allow-manifest-mounts") {
		t.Fatalf("up without consent: want exit 126 naming both mounts and --allow-manifest-mounts: %s", r)
	}
	e.assertClean()
	// Its secrets are a separate grant.
	r = e.run("up", proj, "--name", "m", "--allow-manifest-mounts")
	if r.code != 126 || !strings.Contains(r.stderr, "msecret:API_KEY") || !strings.Contains(r.stderr, "--allow-manifest-secrets") || strings.Contains(r.stderr, "manifest-secret-value") {
		t.Fatalf("up without consent to the secrets: %s", r)
	}
	e.assertClean()
	dry := e.must("run", "--dry-run", "--json", "--image", proj, "--allow-manifest-mounts", "--allow-manifest-secrets", "--", "true")
	if !strings.Contains(dry.stdout, `"origin":"manifest"`) || !strings.Contains(dry.stdout, `"allow_manifest_mounts":true`) || !strings.Contains(dry.stdout, `"allow_manifest_secrets":true`) {
		t.Errorf("dry run does not show the manifest's mounts and secrets: %s", dry)
	}

	// The rules of -v, with the manifest named; exit 2, nothing created.
	os.Symlink(data, filepath.Join(base, "link"))
	os.MkdirAll(filepath.Join(base, "y,source="+data), 0o755)
	for host, want := range map[string]string{
		"missing":             "does not exist",
		"../link":             "symlink",
		"/":                   "sharing /",
		e.data:                "overlaps mvm's own",
		"../y,source=" + data: "option syntax",
	} {
		dir := filepath.Join(base, "bad")
		writeManifest(dir, "[[mount]]\nhost = \""+host+"\"\nguest = \"/m\"\n")
		if r := e.run("up", dir, "--allow-manifest-mounts"); r.code != 2 || !strings.Contains(r.stderr, "mvm.toml") || !strings.Contains(r.stderr, want) {
			t.Errorf("manifest host %q: want exit 2 and %q: %s", host, want, r)
		}
	}
	// Consent does not stand for --allow-rw-mount, under dev either.
	rw := filepath.Join(base, "rw")
	writeManifest(rw, "[[mount]]\nhost = \"../proj/data\"\nguest = \"/data\"\nmode = \"rw\"\n")
	if r := e.run("up", rw, "--profile", "dev", "--allow-manifest-mounts"); r.code != 126 || !strings.Contains(r.stderr, "read_write_forbidden") {
		t.Errorf("manifest rw without --allow-rw-mount: %s", r)
	}
	e.assertClean()

	r = e.must("up", proj, "--name", "m", "--allow-manifest-mounts", "--allow-manifest-secrets")
	defer e.run("down", "m")
	if !strings.Contains(r.stderr, "granted by the operator") || !strings.Contains(r.stderr, "host directory "+data+" -> /data (ro)") || !strings.Contains(r.stderr, "msecret:API_KEY") {
		t.Errorf("the manifest's mounts and secrets were not printed before boot: %s", r)
	}
	if x := e.must("exec", "m", "--", "sh", "-c", "echo $API_KEY"); x.stdout != "[secret:msecret]\n" {
		t.Errorf("the manifest's secret: %s", x)
	}
	rf := filepath.Join(base, "receipt.json")
	if x := e.must("exec", "m", "--receipt", rf, "--", "cat", "/data/hello"); x.stdout != "from the manifest's directory\n" {
		t.Errorf("read through the manifest's share: %s", x)
	}
	// The receipt names the host path, the volume, modes and origin.
	e.must("receipt", "verify", rf)
	if rb, _ := os.ReadFile(rf); !bytes.Contains(rb, []byte(`{"guest_path":"/data","kind":"host_dir","origin":"manifest","read_only":true,"source":"`+data+`"}`)) ||
		!bytes.Contains(rb, []byte(`{"guest_path":"/cache","kind":"volume","origin":"manifest","read_only":false,"source":"mcache"}`)) {
		t.Errorf("the receipt does not list the mounts: %s", rb)
	}
	if x := e.run("exec", "m", "--", "touch", "/data/new"); x.code == 0 {
		t.Errorf("the manifest's read-only share is writable")
	}
	e.must("exec", "m", "--", "sh", "-c", "echo kept > /cache/f")
	st := e.stateOf("m")
	pb, err := os.ReadFile(filepath.Join(e.state, "sb", st["id"].(string), "plan.json"))
	if err != nil || !bytes.Contains(pb, []byte(`"allow_manifest_mounts":true`)) || !bytes.Contains(pb, []byte(`"allow_manifest_secrets":true`)) || bytes.Count(pb, []byte(`"origin":"manifest"`)) != 3 {
		t.Errorf("the signed plan does not record the manifest's mounts, secret and the consents: %v %s", err, pb)
	}
	e.must("down", "m")
	e.must("volume", "rm", "mcache")
	e.must("secret", "rm", "msecret")
	e.assertClean()
}

// TestVolumes: data written by one sandbox is there for the next; a
// read-write attachment is exclusive, read-only ones share; rm of an
// attached volume is refused; a crashed holder releases its lock.
func TestVolumes(t *testing.T) {
	e := newEnv(t)
	e.must("volume", "create", "data", "--size", "64M")
	if r := e.run("volume", "create", "data"); r.code != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Errorf("create twice: %s", r)
	}
	if r := e.run("run", "-v", "nope:/d", "--", "true"); r.code != 2 || !strings.Contains(r.stderr, "volume create nope") {
		t.Errorf("missing volume: %s", r)
	}
	if r := e.run("run", "--profile", "restrictive", "-v", "data:/d", "--", "true"); r.code != 126 || !strings.Contains(r.stderr, "volume.forbidden") {
		t.Errorf("restrictive volume: %s", r)
	}

	e.must("up", "--name", "writer", "-v", "data:/data")
	if r := e.run("exec", "writer", "--", "sh", "-c", "echo persisted > /data/file && sync && mount | grep /data"); r.code != 0 || !strings.Contains(r.stdout, "ext4") {
		t.Fatalf("write to volume: %s", r)
	}
	holders := func() []any {
		r := e.must("volume", "ls", "--json")
		var out struct{ Volumes []map[string]any }
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || len(out.Volumes) != 1 {
			t.Fatalf("volume ls: %v %s", err, r)
		}
		return out.Volumes[0]["attached_to"].([]any)
	}
	if h := holders(); len(h) != 1 || h[0] != "writer" {
		t.Errorf("attached_to = %v", h)
	}
	// Exclusive: a second attachment, rw or ro, is refused without a boot.
	for _, v := range []string{"data:/d", "data:/d:ro"} {
		if r := e.run("run", "-v", v, "--", "true"); r.code != 1 || !strings.Contains(r.stderr, "writer") {
			t.Errorf("second attachment %s: %s", v, r)
		}
	}
	if r := e.run("volume", "rm", "data"); r.code != 1 || !strings.Contains(r.stderr, "attached") {
		t.Errorf("rm attached: %s", r)
	}
	var writer map[string]any
	for _, row := range e.sandboxes() {
		if row["name"] == "writer" {
			writer = row
		}
	}
	if v, _ := writer["volumes"].([]any); len(v) != 1 || v[0].(map[string]any)["name"] != "data" {
		t.Errorf("ls --json volumes: %v", writer["volumes"])
	}
	e.must("down", "writer")
	if h := holders(); len(h) != 0 {
		t.Errorf("attached after down: %v", h)
	}

	// Read-only attachments share, and see the data of the first sandbox.
	e.must("up", "--name", "reader", "-v", "data:/data:ro")
	if r := e.run("run", "-v", "data:/data:ro", "--", "cat", "/data/file"); r.code != 0 || r.stdout != "persisted\n" {
		t.Errorf("second ro reader: %s", r)
	}
	if r := e.run("exec", "reader", "--", "sh", "-c", "touch /data/x"); r.code == 0 {
		t.Errorf("write to a ro volume succeeded")
	}
	if r := e.run("run", "-v", "data:/d", "--", "true"); r.code != 1 {
		t.Errorf("rw while ro held: %s", r)
	}
	// The holder dies without cleaning up: the lock goes with it.
	st := e.stateOf("reader")
	syscall.Kill(int(st["supervisor_pid"].(float64)), syscall.SIGKILL)
	waitFor(t, "the crashed holder's lock", 20e9, func() bool {
		return e.run("volume", "resize", "data", "--size", "128M").code == 0
	})
	r := e.must("volume", "inspect", "data")
	var info map[string]any
	json.Unmarshal([]byte(r.stdout), &info)
	if info["size_bytes"].(float64) != 128<<20 {
		t.Errorf("after resize: %v", info)
	}
	if out, err := exec.Command("e2fsck", "-n", "-f", filepath.Join(e.data, "volumes", "data", "disk.img")).CombinedOutput(); err != nil {
		t.Errorf("volume not clean after use and resize: %v %s", err, out)
	}
	e.run("down", "--all")
	e.must("volume", "rm", "data")
	if r := e.run("volume", "inspect", "data"); r.code != 3 {
		t.Errorf("inspect removed: %s", r)
	}
}

// TestSecrets hands a secret to a sandbox as an env variable and as a file
// and then looks for its value everywhere mvm writes: every file under the
// state, data and cache directories and every line mvmctl printed.
func TestSecrets(t *testing.T) {
	e := newEnv(t)
	const value = "sk-e2e-9f8e7d6c5b4a-NEVER-LEAK"
	e.recordOutput()
	runIn := func(stdin string, args ...string) result {
		return e.runIn(strings.NewReader(stdin), args...)
	}
	run := e.run

	if r := runIn(value+"\n", "secret", "set", "openai"); r.code != 0 {
		t.Fatalf("secret set: %s", r)
	}
	if r := run("secret", "set", "argv", value); r.code != 2 {
		t.Errorf("value on argv accepted: %s", r)
	}
	if st, err := os.Stat(filepath.Join(e.data, "secrets", "openai.json")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v %v", st, err)
	}
	if r := run("secret", "ls", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"name":"openai"`) {
		t.Errorf("secret ls: %s", r)
	}
	if r := run("run", "--secret", "missing", "--", "true"); r.code != 2 || !strings.Contains(r.stderr, "secret set missing") {
		t.Errorf("missing secret: %s", r)
	}
	if r := run("run", "--profile", "restrictive", "--secret", "openai", "--", "true"); r.code != 126 {
		t.Errorf("restrictive secret: %s", r)
	}
	if r := run("run", "--dry-run", "--json", "--secret", "openai:OPENAI_API_KEY", "--", "true"); r.code != 0 || !strings.Contains(r.stdout, `"target":"env:OPENAI_API_KEY"`) {
		t.Errorf("dry run: %s", r)
	}

	receipt := filepath.Join(t.TempDir(), "receipt.json")
	if r := run("up", "--name", "sec", "--secret", "openai", "--secret", "openai:API_KEY", "--secret", "openai:/run/secrets/openai"); r.code != 0 {
		t.Fatalf("up: %s", r)
	}
	r := run("exec", "sec", "--json", "--receipt", receipt, "--", "sh", "-c",
		`echo "env=$openai"; echo "api=$API_KEY"; cat /run/secrets/openai; echo; stat -c '%a %u' /run/secrets/openai; mount | grep ' /run '; echo "$API_KEY" >&2`)
	if r.code != 0 {
		t.Fatalf("exec: %s", r)
	}
	var res map[string]any
	json.Unmarshal([]byte(r.stdout), &res)
	stdout, _ := res["stdout"].(string)
	for _, want := range []string{"env=[secret:openai]", "api=[secret:openai]", "[secret:openai]\n400 0", "tmpfs"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("exec --json stdout lacks %q: %q", want, stdout)
		}
	}
	if s, _ := res["stderr"].(string); s != "[secret:openai]\n" {
		t.Errorf("stderr = %q", s)
	}
	// The guest really got the value: compare without printing it.
	if r := run("exec", "sec", "--", "sh", "-c", `[ "$API_KEY" = "`+value+`" ] && [ "$(cat /run/secrets/openai)" = "$openai" ] && echo same`); r.stdout != "same\n" {
		t.Errorf("value in the guest differs: %s", r)
	}
	// Background processes' captured output is redacted too.
	if r := run("proc", "start", "sec", "--", "sh", "-c", "echo $API_KEY"); r.code == 0 {
		h := strings.Fields(r.stdout)
		if len(h) > 0 {
			if w := run("proc", "wait", "sec", h[0]); !strings.Contains(w.stdout, "[secret:openai]") {
				t.Errorf("proc wait: %s", w)
			}
		}
	}
	// Reading the file through mvm (CLI here; MCP's files_read and the
	// SDKs go through the same runtime call) gives the placeholder.
	if r := run("fs", "read", "sec", "/run/secrets/openai"); r.code != 0 || r.stdout != "[secret:openai]" {
		t.Errorf("fs read: %s", r)
	}
	// While a sandbox holds it, the value cannot change or vanish (its
	// output could no longer be redacted).
	if r := run("secret", "rm", "openai"); r.code != 1 || !strings.Contains(r.stderr, "in use by sec") {
		t.Errorf("rm in use: %s", r)
	}
	if r := runIn("other\n", "secret", "set", "openai"); r.code != 1 {
		t.Errorf("replace in use: %s", r)
	}
	run("ls", "--json")
	run("inspect", "sec")
	run("logs", "sec")
	run("audit", "verify")
	run("audit", "tail", "-n", "50")
	if r := run("down", "sec"); r.code != 0 {
		t.Errorf("down: %s", r)
	}
	// A transient run with a file secret, output streamed (not --json):
	// captured by mvmctl's caller here, so redacted as well.
	if r := run("run", "--secret", "openai:/run/secrets/key", "--", "cat", "/run/secrets/key"); r.code != 0 || r.stdout != "[secret:openai]" {
		t.Errorf("run file secret: %s", r)
	}
	run("secret", "ls")

	e.assertNotLeaked(value, receipt)
	e.must("secret", "rm", "openai")
	if r := e.run("secret", "rm", "openai"); r.code != 3 {
		t.Errorf("rm twice: %s", r)
	}
	e.assertClean()
}

// TestDeclaredWorkloadSecret boots an @mvm.app declaration whose env holds
// mvm.secret("openai"): refused until the secret is stored and the
// declaration approved (its secrets are a request), then the
// function (a warm worker, whose reply is read from a file in the guest,
// not captured from an exec) sees the value (compared by digest, never
// printed), its result, its exception and exec output come back redacted, and the value is in no
// file under the state, data and cache directories (the built image
// included) and in nothing mvmctl printed.
func TestDeclaredWorkloadSecret(t *testing.T) {
	e := newEnv(t)
	const value = "sk-decl-31415926-NEVER-LEAK"
	e.recordOutput()
	p := filepath.Join(t.TempDir(), "secw.py")
	writeFile(t, p, `import hashlib, os
import mvm

@mvm.app(name="secw", image=mvm.python_image("3.13"), env={"API_KEY": mvm.secret("openai")},
         entrypoints=[mvm.entrypoint_function(warm=True)])
def run(kind="digest"):
    v = os.environ["API_KEY"]
    if kind == "value":
        return {"key": v}
    if kind == "raise":
        raise ValueError("rejected key " + v)
    return hashlib.sha256(v.encode()).hexdigest()
`)
	if r := e.run("up", p, "--allow-manifest-secrets"); r.code != 2 || !strings.Contains(r.stderr, "E_SECRET_NOT_FOUND") || !strings.Contains(r.stderr, "secret set") {
		t.Fatalf("up with the secret not stored: %s", r)
	}
	e.assertClean()
	if r := e.runIn(strings.NewReader(value), "secret", "set", "openai"); r.code != 0 {
		t.Fatalf("secret set: %s", r)
	}
	// A declaration's secrets are a request: not handed over until the
	// declaration is approved (or --allow-manifest-secrets).
	if r := e.run("up", p); r.code != 126 || !strings.Contains(r.stderr, "openai:API_KEY") || !strings.Contains(r.stderr, "mvmctl approve") {
		t.Fatalf("up of an unapproved declaration with secrets: %s", r)
	}
	e.assertClean()
	e.must("approve", p)
	e.must("up", p)
	defer e.run("down", "secw")
	sum := sha256.Sum256([]byte(value))
	if r := e.must("invoke", "secw"); strings.TrimSpace(r.stdout) != `"`+hex.EncodeToString(sum[:])+`"` {
		t.Errorf("the function did not see the secret's value: %s", r)
	}
	if r := e.must("invoke", "secw", "--json", "--input", `{"kind": "value"}`); !strings.Contains(r.stdout, `{"key":"[secret:openai]"}`) {
		t.Errorf("invoke result not redacted: %s", r)
	}
	if r := e.run("invoke", "secw", "--json", "--input", `{"kind": "raise"}`); r.code != 1 || !strings.Contains(r.stdout, "rejected key [secret:openai]") {
		t.Errorf("invoke exception not redacted: %s", r)
	}
	if r := e.must("exec", "secw", "--", "sh", "-c", "echo $API_KEY"); r.stdout != "[secret:openai]\n" {
		t.Errorf("exec: %s", r)
	}
	if r := e.run("secret", "rm", "openai"); r.code != 1 || !strings.Contains(r.stderr, "in use by secw") {
		t.Errorf("rm while the workload holds it: %s", r)
	}
	if ls := e.must("ls", "--json"); !strings.Contains(ls.stdout, `"origin":"declaration"`) {
		t.Errorf("ls --json does not mark the declaration's secret: %s", ls)
	}
	e.must("inspect", "secw")
	e.must("logs", "secw")
	e.must("audit", "verify")
	e.must("audit", "tail", "-n", "50")
	e.must("down", "secw")
	e.assertNotLeaked(value)
	e.must("secret", "rm", "openai")
	e.assertClean()
}
