//go:build linux

package containerdtest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// CRINamespace is the containerd namespace the CRI plugin keeps its images,
// containers and tasks in.
const CRINamespace = "k8s.io"

// busyboxApplets are the commands the image built by WriteBusyboxImage
// offers in /bin besides busybox itself, so that pods can run commands the
// way kubelet passes them (`sleep 3600`, `echo hello`) rather than as
// busybox arguments.
var busyboxApplets = []string{"sh", "sleep", "echo", "cat", "true"}

// ImportBusyboxImage builds an image from the host's static busybox (see
// WriteBusyboxImage) whose entrypoint sleeps forever, and imports it into
// c's CRI namespace as name. The same image serves as a pod's sandbox
// (pause) image, when name is SandboxImage, and as a workload image, whose
// command CRI containers override. t fails if the import fails.
func ImportBusyboxImage(t testing.TB, c *Containerd, name string) {
	t.Helper()
	archive := WriteBusyboxImage(t, name, "/bin/busybox", "sleep", "2147483647")
	if _, err := c.Ctr(t, "-n", CRINamespace, "images", "import", archive); err != nil {
		t.Fatalf("import image %s: %v", name, err)
	}
}

// WriteBusyboxImage writes an OCI image archive, importable with
// `ctr images import`, named name, whose only layer is the host's static
// busybox with a few applet links (sh, sleep, echo, ...) in /bin, and
// whose entrypoint is entrypoint. No registry is reachable from the test
// machines, so images have to be made locally; busybox-static is one of the
// test dependencies. The archive lives in a temporary directory of t.
func WriteBusyboxImage(t testing.TB, name string, entrypoint ...string) string {
	t.Helper()
	layer := busyboxLayer(t)
	mtime := time.Unix(0, 0)

	type descriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	blobs := map[string][]byte{}
	add := func(mediaType string, data []byte) descriptor {
		sum := sha256.Sum256(data)
		blobs[hex.EncodeToString(sum[:])] = data
		return descriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: len(data)}
	}
	mustJSON := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	// The layer is uncompressed, so its digest is also its diff ID.
	layerDesc := add("application/vnd.oci.image.layer.v1.tar", layer)
	config := add("application/vnd.oci.image.config.v1+json", mustJSON(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": entrypoint, "Env": []string{"PATH=/bin"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDesc.Digest}},
	}))
	manifest := add("application/vnd.oci.image.manifest.v1+json", mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        config,
		"layers":        []descriptor{layerDesc},
	}))
	manifest.Annotations = map[string]string{"io.containerd.image.name": name}
	index := mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []descriptor{manifest},
	})

	var archive bytes.Buffer
	aw := tar.NewWriter(&archive)
	file := func(name string, data []byte) {
		if err := aw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}); err != nil {
			t.Fatal(err)
		}
		if _, err := aw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	file("index.json", index)
	for sum, data := range blobs {
		file("blobs/sha256/"+sum, data)
	}
	if err := aw.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "image.tar")
	if err := os.WriteFile(path, archive.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// WriteBusyboxRootfs writes the layer of WriteBusyboxImage alone, a root
// filesystem tarball, for `docker import` (Debian 12's docker cannot load
// OCI archives). The file lives in a temporary directory of t.
func WriteBusyboxRootfs(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rootfs.tar")
	if err := os.WriteFile(path, busyboxLayer(t), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// busyboxLayer is a tar of the host's static busybox in /bin with applet
// links.
func busyboxLayer(t testing.TB) []byte {
	t.Helper()
	bbPath := privileged.RequireBinary(t, "busybox")
	bb, err := os.ReadFile(bbPath)
	if err != nil {
		t.Fatalf("read busybox: %v", err)
	}

	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	mtime := time.Unix(0, 0)
	headers := []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime},
		{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb)), ModTime: mtime},
	}
	for _, applet := range busyboxApplets {
		headers = append(headers, &tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777, ModTime: mtime})
	}
	for _, h := range headers {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(bb); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}

	return layer.Bytes()
}
