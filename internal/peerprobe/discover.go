package peerprobe

import (
	"encoding/binary"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Processes already connected when the tracer starts are probed before it
// says it is ready (Connected), so their first calls after the attach are
// named too; the ones that talk later are probed when they first send a
// header block (Probe). The kernel's socket diagnostics (sock_diag, as
// `ss -x`) give every unix socket with its bound path and its peer's inode,
// which reaches the clients (kubelet's socket has no path of its own); the
// processes holding those sockets are found through /proc/PID/fd.

const (
	udiagShowName = 0x1
	udiagShowPeer = 0x4
	unixDiagName  = 0
	unixDiagPeer  = 2
	// maxDiagBytes bounds what is read from the kernel.
	maxDiagBytes = 64 << 20
)

// unixSocket is one AF_UNIX socket from sock_diag.
type unixSocket struct {
	ino, peer uint32
	path      string
}

// listUnixSockets dumps every AF_UNIX socket with its path and peer.
func listUnixSockets() ([]unixSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	// struct nlmsghdr + struct unix_diag_req
	req := make([]byte, 16+24)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	req[16] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(req[20:], 0xffffffff) // every state
	binary.NativeEndian.PutUint32(req[28:], udiagShowName|udiagShowPeer)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var out []unixSocket
	buf := make([]byte, 1<<16)
	total := 0
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, err
		}
		if total += n; total > maxDiagBytes {
			return out, errors.New("sock_diag: too much data")
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				return nil, errors.New("sock_diag: error from the kernel")
			}
			if s, ok := parseDiag(m.Data); ok {
				out = append(out, s)
			}
		}
	}
}

// parseDiag reads a struct unix_diag_msg and its attributes.
func parseDiag(b []byte) (unixSocket, bool) {
	if len(b) < 16 {
		return unixSocket{}, false
	}
	s := unixSocket{ino: binary.NativeEndian.Uint32(b[4:])}
	b = b[16:]
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		typ := binary.NativeEndian.Uint16(b[2:])
		if l < 4 || l > len(b) {
			break
		}
		v := b[4:l]
		switch typ {
		case unixDiagName:
			if len(v) > 0 && v[0] != 0 {
				s.path = strings.TrimRight(string(v), "\x00")
			}
		case unixDiagPeer:
			if len(v) >= 4 {
				s.peer = binary.NativeEndian.Uint32(v)
			}
		}
		b = b[(l+3)&^3:]
	}
	return s, true
}

// Connected returns the processes holding either end of a unix connection
// to a socket whose path want accepts.
func Connected(want func(path string) bool) ([]uint32, error) {
	socks, err := listUnixSockets()
	if err != nil {
		return nil, err
	}
	inos := map[uint32]bool{}
	for _, s := range socks {
		if s.path != "" && s.peer != 0 && want(s.path) {
			inos[s.ino], inos[s.peer] = true, true
		}
	}
	if len(inos) == 0 {
		return nil, nil
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []uint32
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		fds, err := os.ReadDir("/proc/" + p.Name() + "/fd")
		if err != nil {
			continue
		}
		for _, fd := range fds {
			l, err := os.Readlink("/proc/" + p.Name() + "/fd/" + fd.Name())
			if err != nil || !strings.HasPrefix(l, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(l[len("socket:["):], "]"), 10, 32)
			if err == nil && inos[uint32(ino)] {
				pids = append(pids, uint32(pid))
				break
			}
		}
	}
	return pids, nil
}
