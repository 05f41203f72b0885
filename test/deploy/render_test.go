package deploy_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.yaml from the rendered overlays")

// target is one directory `kubectl apply -k` can be pointed at.
type target struct {
	name string // golden file testdata/<name>.golden.yaml
	dir  string // relative to this package
}

// targets are the base, every overlay, and (test only) all components at once.
var targets = []target{
	{"base", "../../kustomize"},
	{"ca-bundle", "../../overlays/ca-bundle"},
	{"runtime-issuer", "../../overlays/runtime-issuer"},
	{"node-selection", "../../overlays/node-selection"},
	{"kubelet-root-dir", "../../overlays/kubelet-root-dir"},
	{"pod-token", "../../overlays/pod-token"},
	{"example", "../../overlays/example"},
	{"combined", "testdata/combined"},
	{"mode-switch", "testdata/mode-switch"},
}

// rendered is the output of one kustomize build.
type rendered struct {
	yaml    []byte
	objects []*unstructured.Unstructured
}

// render builds dir as `kubectl kustomize` does (default options: load
// restrictions to the root, no plugins, no remote bases reachable here).
func render(t testing.TB, dir string) rendered {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	return renderFS(t, filesys.MakeFsOnDisk(), abs)
}

// renderFS builds dir of a file system.
func renderFS(t testing.TB, fs filesys.FileSystem, dir string) rendered {
	t.Helper()
	r, err := testbed.Render(fs, dir)
	if err != nil {
		t.Fatal(err)
	}
	return rendered{yaml: r.YAML, objects: r.Objects}
}

func TestGolden(t *testing.T) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			got := render(t, tg.dir).yaml
			golden := filepath.Join("testdata", tg.name+".golden.yaml")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./test/deploy/ -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("kustomize build %s differs from %s (run go test ./test/deploy/ -update and review the diff):\n%s",
					tg.dir, golden, lineDiff(string(want), string(got)))
			}
		})
	}
}

// find returns the rendered objects of a kind.
func find(objs []*unstructured.Unstructured, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// findOne returns the one object of a kind and name, or fails.
func findOne(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range find(objs, kind) {
		if o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %q rendered", kind, name)
	return nil
}
