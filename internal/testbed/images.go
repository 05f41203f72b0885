package testbed

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/svid-csi/svid-csi/internal/ociimage"
)

// imageTag is the tag of the images the bed builds from bin/ (the bed's
// kustomize component sets it).
const imageTag = "testbed"

// toolsImage is a static busybox: the pod sandboxes' "pause" image and the
// bed's workloads' image.
const toolsImage = "svid-csi.test/tools:" + imageTag

// buildNodeImages writes the node's image tarballs into outDir: this
// project's two images exactly as `make images` builds them, and the tools
// image.
func buildNodeImages(binDir, outDir string) ([]string, NodeImages, error) {
	driver, approver := ociimage.DriverSpec(binDir, imageTag), ociimage.ApproverSpec(binDir, imageTag)
	refs := NodeImages{Driver: driver.Ref, Approver: approver.Ref, Tools: toolsImage}
	const busybox = "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		return nil, refs, fmt.Errorf("the tools image needs Debian's busybox-static (make deps): %w", err)
	}
	tools := ociimage.Spec{
		Ref:        toolsImage,
		Entrypoint: []string{"/bin/sleep", "2147483647"},
		Env:        []string{"PATH=/bin"},
		Files:      []ociimage.File{{Path: "/bin/busybox", Mode: 0o755, Source: busybox}},
	}
	for _, applet := range []string{"sh", "cat", "sleep", "ls", "stat", "id"} {
		tools.Files = append(tools.Files, ociimage.File{Path: "/bin/" + applet, Mode: os.ModeSymlink, Link: "busybox"})
	}
	var tars []string
	for _, spec := range []ociimage.Spec{tools, driver, approver} {
		out := filepath.Join(outDir, filepath.Base(spec.Files[0].Path)+".tar")
		if err := ociimage.WriteTarball(spec, out); err != nil {
			return nil, refs, fmt.Errorf("%w (make bin builds this project's binaries)", err)
		}
		tars = append(tars, out)
	}
	return tars, refs, nil
}
