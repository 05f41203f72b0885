package ociimage

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// finalStage is what a Dockerfile's last stage puts in the image.
type finalStage struct {
	from       string
	copies     map[string]string // destination → build-stage source
	user       string
	entrypoint []string
}

func parseFinalStage(t *testing.T, dockerfile string) finalStage {
	t.Helper()
	data, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	// Only the final stage: from the last FROM on.
	text := string(data)
	text = text[strings.LastIndex(text, "\nFROM ")+1:]
	var st finalStage
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			st = finalStage{copies: map[string]string{}}
			for _, a := range f[1:] {
				if !strings.HasPrefix(a, "--") {
					st.from = a
					break
				}
			}
		case "COPY":
			if len(f) != 4 || !strings.HasPrefix(f[1], "--from=") {
				t.Fatalf("%s: %q: want COPY --from=<stage> <src> <dst>", dockerfile, line)
			}
			st.copies[f[3]] = f[2]
		case "USER":
			st.user = f[1]
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(strings.TrimSpace(strings.TrimPrefix(line, f[0]))), &st.entrypoint); err != nil {
				t.Fatalf("%s: ENTRYPOINT must be in JSON form: %v", dockerfile, err)
			}
		case "RUN", "ADD", "ENV", "WORKDIR", "VOLUME":
			t.Fatalf("%s: %q in the final stage: the test bed's image would differ", dockerfile, line)
		}
	}
	return st
}

// The images the test bed runs and `make images` writes hold what the
// Dockerfiles' final stages hold: the same entrypoint, the same user, the
// same copied files (the binary, executable) and nothing else of ours.
func TestSpecsMatchDockerfiles(t *testing.T) {
	bin := t.TempDir()
	for _, c := range []struct {
		dockerfile string
		spec       Spec
	}{
		{"../../Dockerfile.driver", DriverSpec(bin, "dev")},
		{"../../Dockerfile.approver", ApproverSpec(bin, "dev")},
	} {
		t.Run(filepath.Base(c.dockerfile), func(t *testing.T) {
			st := parseFinalStage(t, c.dockerfile)
			if !strings.HasPrefix(st.from, "gcr.io/distroless/static") {
				t.Errorf("final stage FROM %s, want a distroless static base (one static binary)", st.from)
			}
			if !slices.Equal(st.entrypoint, c.spec.Entrypoint) {
				t.Errorf("ENTRYPOINT %q, spec %q", st.entrypoint, c.spec.Entrypoint)
			}
			if st.user != c.spec.User {
				t.Errorf("USER %q, spec %q", st.user, c.spec.User)
			}
			var files []string
			for _, f := range c.spec.Files {
				files = append(files, f.Path)
				src, ok := st.copies[f.Path]
				if !ok {
					t.Errorf("spec file %s: no COPY puts it there", f.Path)
					continue
				}
				if filepath.Base(src) != filepath.Base(f.Source) {
					t.Errorf("%s: Dockerfile copies %s, spec %s", f.Path, src, f.Source)
				}
				if f.Mode.Perm()&0o111 == 0 {
					t.Errorf("%s: mode %v, want executable", f.Path, f.Mode)
				}
			}
			for dst := range st.copies {
				if !slices.Contains(files, dst) {
					t.Errorf("Dockerfile copies %s, the spec does not", dst)
				}
			}
		})
	}
}

// A tarball reads back with its config, its layer's entries and modes, and
// the same inputs give the same digest.
func TestWriteTarball(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "svid-csi-driver")
	if err := os.WriteFile(bin, []byte("#!fake binary\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := DriverSpec(dir, "dev")
	spec.Files = append(spec.Files, File{Path: "/bin/sh", Mode: os.ModeSymlink, Link: "busybox"})
	out := filepath.Join(dir, "driver.tar")
	if err := WriteTarball(spec, out); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(spec.Ref)
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || !slices.Equal(cf.Config.Entrypoint, []string{"/svid-csi-driver"}) || cf.Config.User != "0:0" {
		t.Errorf("config: os %s, entrypoint %q, user %q", cf.OS, cf.Config.Entrypoint, cf.Config.User)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		got[h.Name] = string(rune(h.Typeflag)) + " " + os.FileMode(h.Mode).Perm().String() + " " + h.Linkname + string(body)
	}
	want := map[string]string{
		"svid-csi-driver": "0 -rwxr-xr-x #!fake binary\n",
		"bin/":            "5 -rwxr-xr-x ",
		"bin/sh":          "2 -rwxrwxrwx busybox",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("layer entry %s: %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("layer entries %v, want exactly %v", got, want)
	}
	d1, _ := img.Digest()
	again, err := spec.Image()
	if err != nil {
		t.Fatal(err)
	}
	if d2, _ := again.Digest(); d1 != d2 {
		t.Errorf("two builds of the same inputs: digests %s and %s", d1, d2)
	}
}
