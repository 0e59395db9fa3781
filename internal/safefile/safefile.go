// Package safefile creates the files the tracer writes (--record, --pcap).
// The tracer runs as root and the path is often in a world-writable
// directory such as /tmp: opened in place, a symlink planted there would
// make root overwrite its target, and a file someone else created first
// would keep its owner and mode, letting that user read the raw,
// unredacted bytes. So a file is only ever created new: O_CREAT|O_EXCL
// (which also refuses a symlink, dangling or not) with O_NOFOLLOW, mode
// 0600, and an existing path is an error.
package safefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// Create creates path as a new file readable and writable by its owner
// only. It fails if anything (a file, a symlink, a directory) is already
// there.
func Create(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, fs.ErrExist) || errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%s already exists: it is never overwritten (it could be a symlink or someone else's file); remove it or choose a new name", path)
	}
	return f, err
}
