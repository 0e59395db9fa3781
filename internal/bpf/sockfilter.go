package bpf

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The kernel side of --socket (bpf/snoop.bpf.c, "--socket"): only sends on
// connections whose listener is bound to the selected socket file enter the
// ring buffer. The file is identified by its directory (device and inode)
// and name, so a listener re-created at the same path (containerd
// restarting: a new socket inode) is matched from its first byte without
// any help from here. What can change the identity is the path itself
// resolving elsewhere (a symlink re-pointed, the directory re-created):
// the path is resolved again every socketRecheck, and every identity seen
// is kept (connections accepted before the change go on), up to the map's
// size.

const socketRecheck = time.Second

// errNoKernelFilter says the kernel cannot compare this path; the
// userspace filter (pipeline) still applies.
var errNoKernelFilter = errors.New("socket not filtered in the kernel")

// Filesystems whose stat(2) device or inode numbers are not the ones the
// kernel's own structures hold (btrfs subvolumes report an anonymous
// device; overlayfs maps inode numbers).
const (
	btrfsMagic   = 0x9123683e
	overlayMagic = 0x794c7630
)

// socketKey resolves path (symlinks followed, the socket itself need not
// exist yet) to the identity the kernel compares.
func socketKey(path string) (snoopSockPathKey, error) {
	var key snoopSockPathKey
	if strings.HasPrefix(path, "@") {
		return key, fmt.Errorf("%w: abstract socket %s has no file", errNoKernelFilter, path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return key, err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		// Not there yet (the tracer started before containerd): its
		// directory decides.
		dir, derr := filepath.EvalSymlinks(filepath.Dir(abs))
		if derr != nil {
			// Not even its directory: a tracer started before containerd
			// made it. Capture everything rather than miss the start.
			return key, fmt.Errorf("%w: %v", errNoKernelFilter, derr)
		}
		real = filepath.Join(dir, filepath.Base(abs))
	}
	dir, name := filepath.Split(real)
	if len(name) == 0 || len(name) > len(key.Name) {
		return key, fmt.Errorf("%w: socket name %q longer than %d bytes", errNoKernelFilter, name, len(key.Name))
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return key, fmt.Errorf("statfs %s: %w", dir, err)
	}
	if fs.Type == btrfsMagic || fs.Type == overlayMagic {
		return key, fmt.Errorf("%w: %s is on btrfs or overlayfs, whose stat numbers differ from the kernel's", errNoKernelFilter, dir)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return key, fmt.Errorf("stat %s: %w", dir, err)
	}
	key.DirIno = st.Ino
	// The kernel's dev_t: MAJOR << 20 | MINOR (stat(2) encodes it differently).
	key.Dev = unix.Major(st.Dev)<<20 | unix.Minor(st.Dev)
	key.NameLen = uint32(len(name))
	for i := 0; i < len(name); i++ {
		key.Name[i] = int8(name[i])
	}
	return key, nil
}

// watchSocket keeps the kernel's socket filter on what path resolves to.
// The first resolution is done before attaching (an error there disables
// the kernel filter); later ones run every socketRecheck until stop closes.
type socketWatch struct {
	path string
	seen []snoopSockPathKey // oldest first
	gen  uint32             // of the kernel's filter: bumped at each change
	stop chan struct{}
	done chan struct{}
}

func (t *Tracer) startSocketWatch(path string, first snoopSockPathKey) error {
	w := &socketWatch{path: path, stop: make(chan struct{}), done: make(chan struct{})}
	if err := w.add(t, first); err != nil {
		return err
	}
	t.sockWatch = w
	go func() {
		defer close(w.done)
		tick := time.NewTicker(socketRecheck)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
				if key, err := socketKey(w.path); err == nil {
					w.add(t, key) // a failed update keeps the identities it has
				}
			}
		}
	}()
	return nil
}

func (w *socketWatch) add(t *Tracer, key snoopSockPathKey) error {
	for _, k := range w.seen {
		if k == key {
			return nil
		}
	}
	if max := int(t.maps.SockFilter.MaxEntries()); len(w.seen) == max {
		if err := t.maps.SockFilter.Delete(w.seen[0]); err != nil {
			return fmt.Errorf("update socket filter: %w", err)
		}
		w.seen = w.seen[1:]
	}
	if err := t.maps.SockFilter.Put(key, uint8(1)); err != nil {
		return fmt.Errorf("update socket filter: %w", err)
	}
	w.seen = append(w.seen, key)
	// The kernel keeps each socket's answer until the generation moves
	// (bpf/snoop.bpf.c, sock_verdict): a connection not selected by the
	// old identities may be by the new one.
	w.gen++
	if err := t.maps.SockFilterGen.Put(uint32(0), w.gen); err != nil {
		return fmt.Errorf("update socket filter: %w", err)
	}
	return nil
}

func (w *socketWatch) close() {
	if w == nil {
		return
	}
	close(w.stop)
	<-w.done
}
