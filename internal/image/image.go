// Package image builds containerdsnoop's container image without a
// container engine: one layer holding the static binary and its docs on
// an empty base, written as an image tarball that `ctr image import`,
// `docker load` and `crane push` take. It uses go-containerregistry, the
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

// Write writes img as an image tarball named ref (e.g.
// ghcr.io/containerdsnoop/containerdsnoop:v1.2.3) to file, created
// afresh and readable by all (it holds nothing secret).
func Write(file, ref string, img v1.Image) error {
	tag, err := parseTag(ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(file, tag, img)
}

func parseTag(ref string) (name.Tag, error) {
	t, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return name.Tag{}, fmt.Errorf("image name %q: %w", ref, err)
	}
	return t, nil
}
