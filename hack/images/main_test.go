package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// run writes one tarball per image, tagged, from the binaries in -bin.
func TestRun(t *testing.T) {
	bin, out := t.TempDir(), filepath.Join(t.TempDir(), "images")
	for _, b := range []string{"svid-csi-driver", "svid-csi-approver"} {
		if err := os.WriteFile(filepath.Join(bin, b), []byte("fake "+b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := run(bin, out, "v9"); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"svid-csi-driver", "svid-csi-approver"} {
		tag, _ := name.NewTag("ghcr.io/svid-csi/" + b + ":v9")
		img, err := tarball.ImageFromPath(filepath.Join(out, b+".tar"), &tag)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if cf, err := img.ConfigFile(); err != nil || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/"+b {
			t.Errorf("%s: config %+v, %v", b, cf, err)
		}
	}
	if err := run(filepath.Join(bin, "missing"), out, "v9"); err == nil {
		t.Error("run without binaries succeeded")
	}
}
