// Package image builds containerdsnoop's container image without a
// container engine: one layer holding the static binary and its docs on
// an empty base, written as an OCI image archive that `ctr image import`
// and other OCI tools take. It uses go-containerregistry, the
// library behind crane and ko, rather than writing the tar and JSON by
// hand.
//
// The build is reproducible: the same binary gives the same image digest,
// wherever and whenever it is built (file times and the image's creation
// time are the given epoch, owners are root, entries sorted). The base is
// empty ("scratch") because the binary is static and needs nothing else,
// and because CI reaches no image registry to pull a base from; the
// Dockerfile's distroless base adds only CA certificates and /etc/passwd.
package image

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one file of the layer.
type File struct {
	// Path in the image, absolute.
	Path string
	// Source on this machine.
	Source string
	Mode   int64
}

// Options describe the image.
type Options struct {
	Files []File
	// Arch is the GOARCH the binary was built for.
	Arch string
	// Epoch is every timestamp in the image (SOURCE_DATE_EPOCH).
	Epoch time.Time
	// Entrypoint and Cmd are the image's defaults.
	Entrypoint, Cmd []string
	// Labels, e.g. org.opencontainers.image.version.
	Labels map[string]string
}

// Build returns the image.
func Build(o Options) (v1.Image, error) {
	layerTar, err := layer(o.Files, o.Epoch)
	if err != nil {
		return nil, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: v1.History{
		Created: v1.Time{Time: o.Epoch}, CreatedBy: "containerdsnoop internal/image", Comment: "the static binary and its docs",
	}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", o.Arch
	cf.Created = v1.Time{Time: o.Epoch}
	cf.Config.Entrypoint, cf.Config.Cmd = o.Entrypoint, o.Cmd
	cf.Config.Labels = o.Labels
	// Root: the tracer needs CAP_BPF and CAP_PERFMON, which Kubernetes
	// grants to root (deploy/daemonset.yaml).
	cf.Config.User = "0"
	return mutate.ConfigFile(img, cf)
}

// layer is a tar of files, with their directories, in a fixed order and
// with fixed metadata.
func layer(files []File, epoch time.Time) ([]byte, error) {
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	var addDir func(string) error
	addDir = func(d string) error {
		if d == "/" || d == "." || dirs[d] {
			return nil
		}
		if err := addDir(path.Dir(d)); err != nil {
			return err
		}
		dirs[d] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX})
	}
	for _, f := range files {
		if !path.IsAbs(f.Path) {
			return nil, fmt.Errorf("image path %q is not absolute", f.Path)
		}
		b, err := os.ReadFile(f.Source)
		if err != nil {
			return nil, err
		}
		if err := addDir(path.Dir(f.Path)); err != nil {
			return nil, err
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: f.Path[1:], Mode: f.Mode, Size: int64(len(b)), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Write writes img to file as an OCI image archive (an OCI image layout in
// a tar: oci-layout, index.json, blobs/sha256/...), naming it ref (e.g.
// ghcr.io/containerdsnoop/containerdsnoop:v1.2.3) in the index the way
// containerd's `ctr image import` and other OCI tools read it. Unlike a
// `docker save` tarball, the archive holds the manifest itself, so the
// digest Build's image has is the one containerd shows after the import.
// The file is created afresh, readable by all (nothing in it is secret).
func Write(file, ref string, img v1.Image) error {
	tag, err := parseTag(ref)
	if err != nil {
		return err
	}
	manifest, err := img.RawManifest()
	if err != nil {
		return err
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	mt, err := img.MediaType()
	if err != nil {
		return err
	}
	index, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: mt, Size: int64(len(manifest)), Digest: digest,
			Annotations: map[string]string{
				"io.containerd.image.name":          tag.Name(),
				"org.opencontainers.image.ref.name": tag.TagStr(),
			},
		}},
	})
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	blob := func(b []byte) error {
		h, _, err := v1.SHA256(bytes.NewReader(b))
		if err != nil {
			return err
		}
		return add("blobs/sha256/"+h.Hex, b)
	}
	if err := add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := add("index.json", index); err != nil {
		return err
	}
	for _, b := range [][]byte{manifest, config} {
		if err := blob(b); err != nil {
			return err
		}
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		if err := blob(b); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	os.Remove(file)
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func parseTag(ref string) (name.Tag, error) {
	t, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return name.Tag{}, fmt.Errorf("image name %q: %w", ref, err)
	}
	return t, nil
}
