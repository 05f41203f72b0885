package mount

import (
	"os"
	"path/filepath"
	"testing"
)

// TestRealTmpfs mounts a real tmpfs; it needs root (the driver runs as root).
func TestRealTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	target := filepath.Join(t.TempDir(), "pods", "uid", "mount")
	m := New()
	for range 2 { // idempotent
		if _, err := m.MountTmpfs(target); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := m.IsMounted(target); err != nil || !ok {
		t.Fatalf("IsMounted = %v, %v", ok, err)
	}
	if err := os.WriteFile(filepath.Join(target, "f"), []byte("x"), 0o400); err != nil {
		t.Fatal(err)
	}
	// The size limit holds.
	if err := os.WriteFile(filepath.Join(target, "big"), make([]byte, 5<<20), 0o400); err == nil {
		t.Error("wrote 5 MiB into a 4 MiB tmpfs")
	}
	for range 2 { // idempotent
		if err := m.Cleanup(target); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Errorf("target left: %v", err)
	}
	if ok, _ := m.IsMounted(target); ok {
		t.Error("still mounted")
	}
}

func TestFake(t *testing.T) {
	target := filepath.Join(t.TempDir(), "mount")
	m := NewFake()
	if _, err := m.MountTmpfs(target); err != nil {
		t.Fatal(err)
	}
	if ok, _ := m.IsMounted(target); !ok {
		t.Fatal("fake mount not recorded")
	}
	if err := m.Cleanup(target); err != nil {
		t.Fatal(err)
	}
	if ok, _ := m.IsMounted(target); ok {
		t.Fatal("fake unmount not recorded")
	}
}
