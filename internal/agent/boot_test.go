package agent

import "testing"

func TestModuleParams(t *testing.T) {
	got := moduleParams("console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio-mmio.device=4K@0xd0001000:6 mvm.root=/dev/vda quiet loop.max_loop=4")
	if got["virtio_mmio"] != "device=4K@0xd0000000:5 device=4K@0xd0001000:6" {
		t.Errorf("virtio_mmio: %q", got["virtio_mmio"])
	}
	if got["loop"] != "max_loop=4" || got["mvm"] != "" || got["console"] != "" || len(got) != 2 {
		t.Errorf("params: %v", got)
	}
}
