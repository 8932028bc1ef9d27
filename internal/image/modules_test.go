package image

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// writeFakeModule writes a minimal ELF64 relocatable file whose .modinfo
// section holds the given key=value entries.
func writeFakeModule(t *testing.T, path string, modinfo ...string) {
	t.Helper()
	info := []byte(strings.Join(modinfo, "\x00") + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	infoOff := uint64(ehsize)
	strOff := infoOff + uint64(len(info))
	shOff := (strOff + uint64(len(shstr)) + 7) &^ 7
	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: ehsize, Shentsize: shentsize, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], "\x7fELF")
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	binary.Write(&b, binary.LittleEndian, hdr)
	b.Write(info)
	b.Write(shstr)
	b.Write(make([]byte, shOff-uint64(b.Len())))
	sections := []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: infoOff, Size: uint64(len(info)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: strOff, Size: uint64(len(shstr)), Addralign: 1},
	}
	for _, s := range sections {
		binary.Write(&b, binary.LittleEndian, s)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakeModulesDir builds a modules tree:
//
//	d-e -> a -> b -> c, a -> c; f -> builtin_mod (built in);
//	cyc1 <-> cyc2; g -> missing
func fakeModulesDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "lib", "modules", "6.1.0-test")
	mods := map[string]string{
		"kernel/drivers/a.ko":   "a,depends=b,c",
		"kernel/drivers/b.ko":   "b,depends=c",
		"kernel/lib/c.ko":       "c,depends=",
		"kernel/fs/d-e.ko":      "d_e,depends=a",
		"kernel/fs/f.ko":        "f,depends=builtin_mod",
		"kernel/net/cyc1.ko":    "cyc1,depends=cyc2",
		"kernel/net/cyc2.ko":    "cyc2,depends=cyc1",
		"kernel/net/g.ko":       "g,depends=missing",
		"kernel/net/nodeps.ko":  "nodeps",
		"kernel/net/virtio.ko":  "virtio,depends=",
		"kernel/x/softdeps.ko":  "softdeps,depends=c",
		"kernel/x/README":       "",
		"kernel/x/notamodule.o": "",
	}
	for rel, spec := range mods {
		p := filepath.Join(dir, rel)
		if !strings.HasSuffix(rel, ".ko") {
			os.MkdirAll(filepath.Dir(p), 0o755)
			os.WriteFile(p, []byte("x"), 0o644)
			continue
		}
		name, deps, _ := strings.Cut(spec, ",")
		info := []string{"license=GPL", "name=" + name, "vermagic=6.1.0-test SMP mod_unload"}
		if deps != "" {
			info = append(info, deps)
		}
		writeFakeModule(t, p, info...)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\nkernel/lib/builtin-mod.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func baseNames(paths []string) []string {
	var out []string
	for _, p := range paths {
		out = append(out, filepath.Base(p))
	}
	return out
}

func TestModuleClosureFake(t *testing.T) {
	dir := fakeModulesDir(t)
	cases := []struct {
		names []string
		want  []string
	}{
		{[]string{"d_e"}, []string{"c.ko", "b.ko", "a.ko", "d-e.ko"}},
		{[]string{"d-e"}, []string{"c.ko", "b.ko", "a.ko", "d-e.ko"}},
		{[]string{"c", "a", "c", "b"}, []string{"c.ko", "b.ko", "a.ko"}},
		{[]string{"f"}, []string{"f.ko"}},
		{[]string{"ext4", "builtin_mod"}, nil},
		{[]string{"nodeps", "virtio"}, []string{"nodeps.ko", "virtio.ko"}},
	}
	for _, c := range cases {
		got, err := ModuleClosure(dir, c.names)
		if err != nil {
			t.Errorf("%v: %v", c.names, err)
			continue
		}
		for _, p := range got {
			if !filepath.IsAbs(p) {
				t.Errorf("%v: path %s not absolute", c.names, p)
			}
		}
		if !slices.Equal(baseNames(got), c.want) {
			t.Errorf("%v: got %v, want %v", c.names, baseNames(got), c.want)
		}
	}
}

func TestModuleClosureErrors(t *testing.T) {
	dir := fakeModulesDir(t)
	cases := map[string][]string{
		"no_such_module": {"c", "no_such_module"},
		"missing":        {"g"},
		"cycle":          {"cyc1"},
	}
	for want, names := range cases {
		_, err := ModuleClosure(dir, names)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: got error %v, want one naming %q", names, err, want)
		}
	}
	if _, err := ModuleClosure(filepath.Join(dir, "nonexistent"), []string{"a"}); err == nil {
		t.Error("expected an error for a missing modules dir")
	}
}

func TestModuleClosureReal(t *testing.T) {
	_, k := realKernel(t)
	names := []string{"virtio_console", "virtio_blk", "virtio-net", "overlay", "erofs", "vmw_vsock_virtio_transport", "virtio_mmio", "ext4"}
	got, err := ModuleClosure(k.ModulesDir, names)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("load order: %v", baseNames(got))
	pos := map[string]int{}
	for i, p := range got {
		n := normModule(p)
		if _, dup := pos[n]; dup {
			t.Errorf("%s listed twice", n)
		}
		pos[n] = i
	}
	for _, n := range []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_console", "virtio_blk", "virtio_net", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "overlay", "erofs"} {
		if _, ok := pos[n]; !ok {
			t.Errorf("closure lacks %s", n)
		}
	}
	if _, ok := pos["ext4"]; ok {
		t.Error("built-in ext4 should be skipped")
	}
	// Every dependency comes before its dependent.
	for i, p := range got {
		deps, err := moduleDepends(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range deps {
			j, ok := pos[normModule(d)]
			if !ok {
				t.Errorf("%s needs %s, which is not in the closure", filepath.Base(p), d)
			} else if j >= i {
				t.Errorf("%s (at %d) needs %s (at %d) first", filepath.Base(p), i, d, j)
			}
		}
	}
	if _, err := ModuleClosure(k.ModulesDir, []string{"virtio_console", "definitely_not_a_module"}); err == nil || !strings.Contains(err.Error(), "definitely_not_a_module") {
		t.Errorf("unknown module: got %v", err)
	}
}
