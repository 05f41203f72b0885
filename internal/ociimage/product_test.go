package ociimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// finalStage is what a Dockerfile's last stage puts in the image.
type finalStage struct {
	from       string
	copies     map[string]string // destination → build-stage source
	user       string
	entrypoint []string
	buildText  string // everything before the final FROM
}

// instructions joins continued lines and drops comments and blank lines.
func instructions(text string) []string {
	var out []string
	cur := ""
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if cur == "" && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if body, ok := strings.CutSuffix(line, `\`); ok {
			cur += body + " "
			continue
		}
		out = append(out, cur+line)
		cur = ""
	}
	return out
}

func parseFinalStage(t *testing.T, dockerfile string) finalStage {
	t.Helper()
	data, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	i := strings.LastIndex(text, "\nFROM ")
	if i < 0 {
		t.Fatalf("%s: no FROM", dockerfile)
	}
	st := finalStage{copies: map[string]string{}, buildText: text[:i]}
	for _, ins := range instructions(text[i+1:]) {
		f := strings.Fields(ins)
		switch strings.ToUpper(f[0]) {
		case "FROM":
			if len(f) != 2 {
				t.Fatalf("%s: %q: want FROM <image>", dockerfile, ins)
			}
			st.from = f[1]
		case "COPY":
			if len(f) != 4 || f[1] != "--from=build" {
				t.Fatalf("%s: %q: want COPY --from=build <src> <dst> (other flags and sources are not in the Go spec)", dockerfile, ins)
			}
			st.copies[f[3]] = f[2]
		case "USER":
			st.user = f[1]
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(strings.TrimSpace(ins[len(f[0]):])), &st.entrypoint); err != nil {
				t.Fatalf("%s: ENTRYPOINT must be in JSON form: %v", dockerfile, err)
			}
		default: // RUN, ENV, WORKDIR, CMD, ...: the Go spec would not reproduce it
			t.Fatalf("%s: %q in the final stage: the Go spec (and so the test bed's image) would differ", dockerfile, ins)
		}
	}
	return st
}

// The images the test bed runs and `make images` writes hold what the
// Dockerfiles' final stages hold: the same entrypoint, the same user, exactly
// the copied files (the built binaries, root-owned 0755).
func TestSpecsMatchDockerfiles(t *testing.T) {
	bin := t.TempDir()
	for _, c := range []struct {
		dockerfile string
		spec       Spec
		name       string
	}{
		{"../../Dockerfile.driver", DriverSpec(bin, "dev"), "svid-csi-driver"},
		{"../../Dockerfile.approver", ApproverSpec(bin, "dev"), "svid-csi-approver"},
	} {
		t.Run(filepath.Base(c.dockerfile), func(t *testing.T) {
			st := parseFinalStage(t, c.dockerfile)
			// One static binary needs nothing from its base; the tag names a
			// variant (distroless has no version tags), never `latest`.
			base, tag, ok := strings.Cut(strings.Split(st.from, "@")[0], ":")
			if base != "gcr.io/distroless/static-debian12" || !ok || tag == "latest" {
				t.Errorf("final stage FROM %s, want gcr.io/distroless/static-debian12 with a variant tag other than latest", st.from)
			}
			if want := Repository + c.name + ":dev"; c.spec.Ref != want {
				t.Errorf("spec ref %q, want %q", c.spec.Ref, want)
			}
			if !slices.Equal(st.entrypoint, c.spec.Entrypoint) || len(st.entrypoint) == 0 {
				t.Errorf("ENTRYPOINT %q, spec %q", st.entrypoint, c.spec.Entrypoint)
			}
			if st.user != c.spec.User || st.user == "" {
				t.Errorf("USER %q, spec %q", st.user, c.spec.User)
			}
			if c.spec.Cmd != nil || c.spec.Env != nil || c.spec.WorkingDir != "" {
				t.Errorf("spec sets Cmd %q, Env %q, WorkingDir %q: the Dockerfile does not", c.spec.Cmd, c.spec.Env, c.spec.WorkingDir)
			}
			var files []string
			for _, f := range c.spec.Files {
				files = append(files, f.Path)
				src, ok := st.copies[f.Path]
				if !ok {
					t.Errorf("spec file %s: no COPY puts it there", f.Path)
					continue
				}
				// src is what the build stage's go build writes, and the spec
				// copies the binary `make` builds under the same name.
				if !strings.Contains(st.buildText, "-o "+src+" ") {
					t.Errorf("%s: COPY source %s is not a go build output of the build stage", f.Path, src)
				}
				if want := filepath.Join(bin, filepath.Base(src)); f.Source != want || f.Data != nil {
					t.Errorf("%s: spec copies %q (data %d bytes), want the built binary %s", f.Path, f.Source, len(f.Data), want)
				}
				if f.Mode != 0o755 || f.Uid != 0 || f.Gid != 0 {
					t.Errorf("%s: mode %v, owner %d:%d; COPY gives the build's 0755, root-owned", f.Path, f.Mode, f.Uid, f.Gid)
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

func TestInstructions(t *testing.T) {
	got := instructions("# c\n\nFROM a\nRUN x \\\n  && y\n# c\nUSER 1\n")
	if want := []string{"FROM a", "RUN x  && y", "USER 1"}; !slices.Equal(got, want) {
		t.Errorf("instructions = %q, want %q", got, want)
	}
}

// entry is a layer entry as the tests compare it.
type entry struct {
	name, link, body string
	typ              byte
	mode             int64
	uid, gid         int
	mtime            time.Time
}

// A tarball reads back with its tag, its config, exactly its layer's entries
// (parents added, sorted, modes, owners, fixed times), and the same inputs
// give the same bytes.
func TestWriteTarball(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "svid-csi-driver"), []byte("#!fake binary\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := DriverSpec(dir, "dev")
	spec.Cmd, spec.Env, spec.WorkingDir = []string{"-v=2"}, []string{"A=b"}, "/tmp"
	spec.Files = append(spec.Files,
		File{Path: "/usr/bin/sh", Mode: os.ModeSymlink, Link: "busybox"},
		File{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
		File{Path: "/etc/app/conf", Data: []byte("k=v\n"), Mode: 0o600, Uid: 65532, Gid: 65533},
		File{Path: "/etc/empty"},
	)
	out := filepath.Join(dir, "driver.tar")
	if err := WriteTarball(spec, out); err != nil {
		t.Fatal(err)
	}

	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(out) })
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{"ghcr.io/svid-csi/svid-csi-driver:dev"}) {
		t.Errorf("manifest.json %+v, want one image tagged ghcr.io/svid-csi/svid-csi-driver:dev", m)
	}
	tag, _ := name.NewTag(spec.Ref)
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil { // digests, diff IDs and sizes agree
		t.Errorf("validate: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	c := cf.Config
	if !slices.Equal(c.Entrypoint, []string{"/svid-csi-driver"}) || c.User != "0:0" ||
		!slices.Equal(c.Cmd, spec.Cmd) || !slices.Equal(c.Env, spec.Env) || c.WorkingDir != "/tmp" {
		t.Errorf("config: entrypoint %q, user %q, cmd %q, env %q, workdir %q", c.Entrypoint, c.User, c.Cmd, c.Env, c.WorkingDir)
	}
	if !cf.Created.Equal(time.Unix(0, 0)) {
		t.Errorf("created %v, want the epoch", cf.Created)
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
	var got []entry
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
		got = append(got, entry{h.Name, h.Linkname, string(body), h.Typeflag, h.Mode, h.Uid, h.Gid, h.ModTime.UTC()})
	}
	epoch := time.Unix(0, 0).UTC()
	want := []entry{
		{name: "etc/", typ: tar.TypeDir, mode: 0o755, mtime: epoch},
		{name: "etc/app/", typ: tar.TypeDir, mode: 0o755, mtime: epoch},
		{name: "etc/app/conf", body: "k=v\n", typ: tar.TypeReg, mode: 0o600, uid: 65532, gid: 65533, mtime: epoch},
		{name: "etc/empty", typ: tar.TypeReg, mode: 0o644, mtime: epoch},
		{name: "svid-csi-driver", body: "#!fake binary\n", typ: tar.TypeReg, mode: 0o755, mtime: epoch},
		{name: "tmp/", typ: tar.TypeDir, mode: 0o1777, mtime: epoch},
		{name: "usr/", typ: tar.TypeDir, mode: 0o755, mtime: epoch},
		{name: "usr/bin/", typ: tar.TypeDir, mode: 0o755, mtime: epoch},
		{name: "usr/bin/sh", link: "busybox", typ: tar.TypeSymlink, mode: 0o777, mtime: epoch},
	}
	if !slices.Equal(got, want) {
		t.Errorf("layer entries:\n got %v\nwant %v", got, want)
	}

	// Same inputs, same bytes, same digest: written again, and built in memory.
	again := filepath.Join(dir, "again.tar")
	if err := WriteTarball(spec, again); err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(out)
	b2, _ := os.ReadFile(again)
	if !bytes.Equal(b1, b2) {
		t.Error("two tarballs of the same inputs differ")
	}
	d1, _ := img.Digest()
	mem, err := spec.Image()
	if err != nil {
		t.Fatal(err)
	}
	if d2, _ := mem.Digest(); d1 != d2 {
		t.Errorf("digests %s (tarball) and %s (in memory)", d1, d2)
	}
}

func TestSpecErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	for _, c := range []struct {
		files []File
		want  string
	}{
		{[]File{{Path: "rel"}}, `file "rel": path must be absolute and clean`},
		{[]File{{Path: "/a/../b"}}, `file "/a/../b": path must be absolute and clean`},
		{[]File{{Path: "/"}}, `file "/": path must be absolute and clean`},
		{[]File{{Path: "/a"}, {Path: "/a"}}, "file /a: listed twice"},
		{[]File{{Path: "/a"}, {Path: "/a/b"}}, "file /a/b: parent /a is not a directory"},
		{[]File{{Path: "/a", Data: []byte("x"), Source: missing}}, "file /a: both Data and Source " + missing},
		{[]File{{Path: "/a", Source: missing}}, "file /a: open " + missing + ": no such file or directory"},
		{[]File{{Path: "/a", Mode: os.ModeSymlink}}, "file /a: a symlink needs Link and has no Data or Source"},
		{[]File{{Path: "/a", Mode: os.ModeDir, Data: []byte("x")}}, "file /a: a directory has no Data, Source or Link"},
		{[]File{{Path: "/a", Link: "b"}}, "file /a: a regular file has no Link"},
		{[]File{{Path: "/a", Mode: os.ModeNamedPipe}}, "file /a: mode p---------: only regular files, directories and symlinks"},
		{[]File{{Path: "/a", Uid: -1}}, "file /a: uid -1, gid 0: must not be negative"},
	} {
		_, err := Spec{Ref: "x:y", Files: c.files}.Image()
		if want := "image x:y: " + c.want; fmt.Sprint(err) != want {
			t.Errorf("files %+v: error %v, want %s", c.files, err, want)
		}
	}
	if err := WriteTarball(Spec{Ref: "Bad Ref"}, filepath.Join(t.TempDir(), "x.tar")); err == nil || !strings.HasPrefix(err.Error(), `image ref "Bad Ref": `) {
		t.Errorf("bad ref: %v", err)
	}
}
