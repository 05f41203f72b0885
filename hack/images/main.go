// Command images writes this project's two images, svid-csi-driver and
// svid-csi-approver, as OCI image tarballs (`docker save` layout) from the
// binaries `make` builds, without Docker or a registry: `make images`. Load
// one with `ctr -n k8s.io images import`, `docker load` or `crane push`.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/svid-csi/svid-csi/internal/ociimage"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding svid-csi-driver and svid-csi-approver")
	out := flag.String("out", filepath.Join("bin", "images"), "directory to write <image>.tar into")
	tag := flag.String("tag", "dev", "image tag")
	flag.Parse()
	if err := run(*bin, *out, *tag); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(bin, out, tag string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", out, err)
	}
	for _, spec := range []ociimage.Spec{ociimage.DriverSpec(bin, tag), ociimage.ApproverSpec(bin, tag)} {
		path := filepath.Join(out, filepath.Base(spec.Entrypoint[0])+".tar")
		if err := ociimage.WriteTarball(spec, path); err != nil {
			return err
		}
		img, err := spec.Image()
		if err != nil {
			return err
		}
		digest, err := img.Digest()
		if err != nil {
			return fmt.Errorf("image %s: digest: %w", spec.Ref, err)
		}
		fmt.Printf("%s\t%s\t%s\n", path, spec.Ref, digest)
	}
	return nil
}
