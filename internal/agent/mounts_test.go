package agent

import (
	"encoding/base64"
	"testing"
)

func TestParseMounts(t *testing.T) {
	arg := base64.RawURLEncoding.EncodeToString([]byte(`[{"k":"virtiofs","s":"mvmfs0","t":"/work","ro":true},{"k":"ext4","s":"mvmvol0","t":"/data"}]`))
	ms, err := parseMounts("console=ttyS0 mvm.mounts=" + arg + " mvm.virtiofs=1")
	if err != nil || len(ms) != 2 || ms[0] != (guestMount{"virtiofs", "mvmfs0", "/work", true}) || ms[1] != (guestMount{"ext4", "mvmvol0", "/data", false}) {
		t.Fatalf("%+v %v", ms, err)
	}
	if ms, err := parseMounts("console=ttyS0"); err != nil || ms != nil {
		t.Fatalf("no mounts: %+v %v", ms, err)
	}
	for _, bad := range []string{
		`[{"k":"virtiofs","s":"x","t":"relative"}]`,
		`[{"k":"virtiofs","s":"x","t":"/a/../b"}]`,
		`[{"k":"virtiofs","s":"x","t":"/"}]`,
		`[{"k":"nfs","s":"x","t":"/a"}]`,
		`not json`,
	} {
		if _, err := parseMounts("mvm.mounts=" + base64.RawURLEncoding.EncodeToString([]byte(bad))); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
	if _, err := parseMounts("mvm.mounts=!!!"); err == nil {
		t.Error("accepted bad base64")
	}
}
