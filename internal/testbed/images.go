package testbed

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// nodeImageRefs are the references of the images the bed builds.
type nodeImageRefs struct{ Driver, Approver string }

// TEMPORARY until internal/ociimage lands.
func buildNodeImages(binDir, outDir string) ([]string, nodeImageRefs, error) {
	refs := nodeImageRefs{Driver: "ghcr.io/svid-csi/svid-csi-driver:testbed", Approver: "ghcr.io/svid-csi/svid-csi-approver:testbed"}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, refs, fmt.Errorf("the tools image needs Debian's busybox-static (make deps): %w", err)
	}
	type file struct {
		path string
		data []byte
		link string
	}
	build := func(ref string, files []file, entry []string, user string) (string, error) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		dirs := map[string]bool{}
		for _, f := range files {
			for d := filepath.Dir(f.path); d != "." && d != "/" && !dirs[d]; d = filepath.Dir(d) {
				dirs[d] = true
				if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
					return "", err
				}
			}
			h := &tar.Header{Name: f.path, Mode: 0o755, ModTime: time.Unix(0, 0)}
			if f.link != "" {
				h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.link, 0o777
			} else {
				h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
			}
			if err := tw.WriteHeader(h); err != nil {
				return "", err
			}
			if _, err := tw.Write(f.data); err != nil {
				return "", err
			}
		}
		if err := tw.Close(); err != nil {
			return "", err
		}
		data := buf.Bytes()
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			return "", err
		}
		img, err := mutate.AppendLayers(empty.Image, layer)
		if err != nil {
			return "", err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return "", err
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", runtime.GOARCH
		cf.Config = v1.Config{Entrypoint: entry, User: user, Env: []string{"PATH=/bin"}}
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			return "", err
		}
		tag, err := name.NewTag(ref)
		if err != nil {
			return "", err
		}
		out := filepath.Join(outDir, filepath.Base(tag.RepositoryStr())+".tar")
		return out, tarball.WriteToFile(out, tag, img)
	}
	var tars []string
	tools := []file{{path: "bin/busybox", data: bb}}
	for _, l := range []string{"sh", "cat", "sleep", "ls", "stat", "id"} {
		tools = append(tools, file{path: "bin/" + l, link: "busybox"})
	}
	for _, im := range []struct {
		ref   string
		files []file
		entry []string
		user  string
	}{
		{"svid-csi.test/tools:testbed", tools, []string{"/bin/sleep", "2147483647"}, ""},
	} {
		out, err := build(im.ref, im.files, im.entry, im.user)
		if err != nil {
			return nil, refs, fmt.Errorf("build image %s: %w", im.ref, err)
		}
		tars = append(tars, out)
	}
	for _, im := range []struct{ ref, bin, user string }{
		{refs.Driver, "svid-csi-driver", "0:0"}, {refs.Approver, "svid-csi-approver", "65532:65532"},
	} {
		data, err := os.ReadFile(filepath.Join(binDir, im.bin))
		if err != nil {
			return nil, refs, fmt.Errorf("image %s: %w (make bin)", im.ref, err)
		}
		out, err := build(im.ref, []file{{path: im.bin, data: data}}, []string{"/" + im.bin}, im.user)
		if err != nil {
			return nil, refs, fmt.Errorf("build image %s: %w", im.ref, err)
		}
		tars = append(tars, out)
	}
	return tars, refs, nil
}
