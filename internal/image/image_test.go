package image

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// TestReproducible: the same files give the same digest, at any time, and
// the tarball reads back with the binary where the entrypoint says.
func TestReproducible(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "containerdsnoop")
	if err := os.WriteFile(bin, []byte("\x7fELF not really"), 0o755); err != nil {
		t.Fatal(err)
	}
	opts := Options{Files: []File{{Path: "/containerdsnoop", Source: bin, Mode: 0o755}}, Arch: "amd64", Epoch: time.Unix(1700000000, 0).UTC(),
		Entrypoint: []string{"/containerdsnoop"}, Cmd: []string{"trace"}}
	a, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	// Files touched since: times in the image are the epoch, not theirs.
	os.Chtimes(bin, time.Now(), time.Now())
	b, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("digests differ: %s, %s", da, db)
	}
	out := filepath.Join(dir, "image.tar")
	if err := Write(out, "example.com/containerdsnoop:test", a); err != nil {
		t.Fatal(err)
	}
	img := readArchive(t, out)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Architecture != "amd64" || cf.OS != "linux" || cf.Config.Entrypoint[0] != "/containerdsnoop" || cf.Config.User != "0" {
		t.Errorf("config %+v", cf.Config)
	}
	if d, _ := img.Digest(); d != da {
		t.Errorf("read back digest %s, built %s", d, da)
	}
	if err := Write(out, "not a valid name!", a); err == nil {
		t.Error("invalid image name accepted")
	}
}

// readArchive unpacks an OCI archive and reads it with go-containerregistry's
// layout package, as an OCI tool would.
func readArchive(t *testing.T, path string) v1.Image {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("tar", "-xf", path, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("untar: %v: %s", err, out)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil || len(m.Manifests) != 1 || m.Manifests[0].Annotations["io.containerd.image.name"] != "example.com/containerdsnoop:test" {
		t.Fatalf("index %+v, %v", m, err)
	}
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
