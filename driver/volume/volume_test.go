package volume

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pair returns a "certificate" and "key" that belong together: the key's
// public half, hashed, is written into the certificate file.
func pair(t *testing.T) (cert, key []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	pub, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	sum := sha256.Sum256(pub)
	return sum[:], der
}

func matches(cert, key []byte) bool {
	k, err := x509.ParsePKCS8PrivateKey(key)
	if err != nil {
		return false
	}
	pub, _ := x509.MarshalPKIXPublicKey(&k.(*ecdsa.PrivateKey).PublicKey)
	sum := sha256.Sum256(pub)
	return bytes.Equal(sum[:], cert)
}

func TestWriteFilesLayout(t *testing.T) {
	dir := t.TempDir()
	cert, key := pair(t)
	if err := WriteFiles(dir, map[string][]byte{"tls.crt": cert, "tls.key": key, "ca.crt": []byte("ca")}, 4321); err != nil {
		t.Fatal(err)
	}
	first, _ := os.Readlink(filepath.Join(dir, "..data"))
	for _, name := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if l, _ := os.Readlink(filepath.Join(dir, name)); l != filepath.Join("..data", name) {
			t.Errorf("%s -> %q", name, l)
		}
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != FileMode {
			t.Errorf("%s: %v %v", name, fi, err)
		}
	}
	// A second generation without ca.crt: the old generation and the stale link go.
	cert2, key2 := pair(t)
	if err := WriteFiles(dir, map[string][]byte{"tls.crt": cert2, "tls.key": key2}, -1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "ca.crt")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale ca.crt link left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, first)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("old generation %s left: %v", first, err)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(entries) != 4 {
		t.Errorf("entries = %v, want ..data, one generation, tls.crt, tls.key", names)
	}
	got, err := ReadFiles(dir, "tls.crt", "tls.key")
	if err != nil || !bytes.Equal(got["tls.crt"], cert2) || !bytes.Equal(got["tls.key"], key2) {
		t.Fatalf("ReadFiles = %v", err)
	}
	if err := WriteFiles(dir, map[string][]byte{"../x": nil}, -1); err == nil {
		t.Error("a path escaping the directory was accepted")
	}
}

// TestRotationIsAtomic rotates pairs, each with a fresh key, while readers
// hammer the volume: a reader resolving ..data once never sees a key that
// does not match its certificate, and neither does an application reading
// tls.crt, tls.key, then tls.crt again through their own links, whenever
// both certificate reads agree. The links always exist and always point
// through ..data; a file is only ever missing to a read that resolved the
// generation ..data was just swapped away from.
func TestRotationIsAtomic(t *testing.T) {
	dir := t.TempDir()
	names := []string{"tls.crt", "tls.key"}
	write := func() {
		cert, key := pair(t)
		if err := WriteFiles(dir, map[string][]byte{"tls.crt": cert, "tls.key": key}, -1); err != nil {
			t.Error(err)
		}
	}
	write()
	var stop atomic.Bool
	var reads, mismatches atomic.Int64
	var linkReads, stable, linkMismatches, missing, pruned, badLinks atomic.Int64
	var badLink atomic.Value // the last wrong link target seen
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
				files, err := ReadFiles(dir, "tls.crt", "tls.key")
				if err != nil {
					// The generation was replaced between resolving and reading: retry.
					if errors.Is(err, fs.ErrNotExist) {
						continue
					}
					t.Error(err)
					return
				}
				reads.Add(1)
				if !matches(files["tls.crt"], files["tls.key"]) {
					mismatches.Add(1)
				}
			}
		})
	}
	// readLink reads one user-visible file as an application would. A
	// missing file is retried, and counted as missing unless ..data was
	// swapped during the read, with the link still there: the read then
	// resolved ..data to the generation just replaced, and found it pruned.
	readLink := func(name string) ([]byte, bool) {
		before, _ := os.Readlink(filepath.Join(dir, dataLink))
		data, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			after, _ := os.Readlink(filepath.Join(dir, dataLink))
			if _, lerr := os.Lstat(filepath.Join(dir, name)); lerr != nil || before == after {
				missing.Add(1)
			} else {
				pruned.Add(1)
			}
			return nil, false
		}
		if err != nil {
			t.Error(err)
			stop.Store(true)
			return nil, false
		}
		return data, true
	}
	for range 3 {
		wg.Go(func() {
			for !stop.Load() {
				cert1, ok1 := readLink("tls.crt")
				key, ok2 := readLink("tls.key")
				cert2, ok3 := readLink("tls.crt")
				if !ok1 || !ok2 || !ok3 {
					continue
				}
				linkReads.Add(1)
				if bytes.Equal(cert1, cert2) { // no rotation in between
					stable.Add(1)
					if !matches(cert1, key) {
						linkMismatches.Add(1)
					}
				}
			}
		})
	}
	wg.Go(func() {
		for !stop.Load() {
			for _, name := range names {
				if l, err := os.Readlink(filepath.Join(dir, name)); err != nil || l != filepath.Join(dataLink, name) {
					badLinks.Add(1)
					badLink.Store(name + " -> " + l)
				}
			}
		}
	})
	deadline := time.Now().Add(time.Second)
	rotations := 0
	for time.Now().Before(deadline) {
		write()
		rotations++
	}
	stop.Store(true)
	wg.Wait()
	if mismatches.Load() != 0 {
		t.Errorf("%d of %d reads through ..data saw a key that does not match the certificate", mismatches.Load(), reads.Load())
	}
	if linkMismatches.Load() != 0 {
		t.Errorf("%d of %d reads through the links with the same certificate before and after saw a key that does not match it", linkMismatches.Load(), stable.Load())
	}
	if missing.Load() != 0 {
		t.Errorf("a user-visible file was missing %d times while ..data stayed", missing.Load())
	}
	if badLinks.Load() != 0 {
		t.Errorf("a user-visible link did not point through %s %d times, e.g. %v", dataLink, badLinks.Load(), badLink.Load())
	}
	if reads.Load() == 0 || stable.Load() == 0 || rotations < 10 {
		t.Fatalf("too little concurrency: %d reads through ..data, %d stable of %d through the links, %d rotations", reads.Load(), stable.Load(), linkReads.Load(), rotations)
	}
	t.Logf("%d reads through ..data, %d through the links (%d stable, %d retried after a prune) over %d rotations",
		reads.Load(), linkReads.Load(), stable.Load(), pruned.Load(), rotations)
}

func TestStoreRoundTripAndRecovery(t *testing.T) {
	root := t.TempDir()
	s, err := NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	metas := []Meta{
		{VolumeID: "csi-abc", TargetPath: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/spiffe/mount", PodNamespace: "ns", PodName: "p", PodUID: "u", ServiceAccount: "sa", FSGroup: 1000},
		{VolumeID: "weird/id with spaces", TargetPath: "/t", FSGroup: -1},
	}
	for _, m := range metas {
		if err := s.Save(m); err != nil {
			t.Fatal(err)
		}
	}
	// Leftovers of a crash: a temporary file and a corrupt state file.
	_ = os.WriteFile(filepath.Join(root, "volumes", ".tmp-123"), []byte("{"), 0o600)
	_ = os.WriteFile(filepath.Join(root, "volumes", "0123.json"), []byte("{"), 0o600)

	// A new process finds everything again.
	s2, err := NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s2.List()
	if err == nil || !strings.Contains(err.Error(), "0123.json") {
		t.Errorf("corrupt state not reported: %v", err)
	}
	if len(got) != 2 {
		t.Fatalf("List = %+v", got)
	}
	byID := map[string]Meta{}
	for _, m := range got {
		byID[m.VolumeID] = m
	}
	if m := byID["csi-abc"]; m.TargetPath != metas[0].TargetPath || m.FSGroup != 1000 || m.PodUID != "u" {
		t.Errorf("recovered %+v", m)
	}
	entries, _ := os.ReadDir(filepath.Join(root, "volumes"))
	if len(entries) != 2 {
		t.Errorf("leftovers not cleaned: %d entries", len(entries))
	}
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(root, "volumes", e.Name()))
		if strings.Contains(strings.ToLower(string(data)), "token") || strings.Contains(string(data), "PRIVATE KEY") {
			t.Errorf("state holds secrets: %s", data)
		}
	}
	if err := s2.Delete("csi-abc"); err != nil {
		t.Fatal(err)
	}
	if err := s2.Delete("csi-abc"); err != nil {
		t.Fatal("Delete is not idempotent:", err)
	}
	if got, _ := s2.List(); len(got) != 1 {
		t.Errorf("after Delete: %+v", got)
	}
}

// UpdateFiles replaces one file of the set and carries the others over as
// the very same files (hard links), in one swap of ..data.
func TestUpdateFilesKeepsTheOthers(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFiles(dir, map[string][]byte{"tls.crt": []byte("cert"), "tls.key": []byte("key"), "ca.crt": []byte("old ca")}, -1); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Readlink(filepath.Join(dir, dataLink))
	stat := func(name string) fs.FileInfo {
		t.Helper()
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	certBefore, keyBefore := stat("tls.crt"), stat("tls.key")

	if err := UpdateFiles(dir, []string{"tls.crt", "tls.key"}, map[string][]byte{"ca.crt": []byte("new ca")}, -1); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Readlink(filepath.Join(dir, dataLink))
	if after == before {
		t.Fatal("..data not swapped")
	}
	files, err := ReadFiles(dir, "tls.crt", "tls.key", "ca.crt")
	if err != nil {
		t.Fatal(err)
	}
	if string(files["tls.crt"]) != "cert" || string(files["tls.key"]) != "key" || string(files["ca.crt"]) != "new ca" {
		t.Fatalf("files after update = %q", files)
	}
	if !os.SameFile(certBefore, stat("tls.crt")) || !os.SameFile(keyBefore, stat("tls.key")) {
		t.Error("the kept files were rewritten, not carried over")
	}
	if stat("ca.crt").Mode().Perm() != FileMode {
		t.Errorf("ca.crt mode %v", stat("ca.crt").Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(dir, before)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("old generation %s not pruned: %v", before, err)
	}

	// A file to keep that is not in the set fails and leaves the set as it was.
	if err := UpdateFiles(dir, []string{"tls.crt", "nope"}, map[string][]byte{"ca.crt": []byte("x")}, -1); err == nil {
		t.Fatal("keeping a missing file: want an error")
	}
	if err := UpdateFiles(dir, []string{"ca.crt"}, map[string][]byte{"ca.crt": []byte("x")}, -1); err == nil {
		t.Fatal("a file both kept and changed: want an error")
	}
	if l, _ := os.Readlink(filepath.Join(dir, dataLink)); l != after {
		t.Errorf("a failed update swapped ..data to %s", l)
	}
	if files, _ := ReadFiles(dir, "ca.crt"); string(files["ca.crt"]) != "new ca" {
		t.Errorf("a failed update changed ca.crt to %q", files["ca.crt"])
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 5 { // ..data, one generation, three links
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("entries after failed updates = %v, want no leftovers", names)
	}
}
