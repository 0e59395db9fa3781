package bpf

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Probes that cilium/ebpf cannot create through the perf PMU (a kretprobe
// with maxactive, which the kprobe backend asks for; a kprobe or uprobe on
// a kernel without the PMU) are entries in tracefs's kprobe_events or
// uprobe_events, named GROUP/EVENT, which the link removes on Close. A
// tracer killed with SIGKILL (an OOM kill, a pod past its grace period)
// closes nothing: its entries stay, unattached, and a DaemonSet that keeps
// restarting would add more each time. So this process's groups are named
// after it (probeGroupPrefix; cilium/ebpf appends a random suffix), and
// Open removes the entries of tracers that are gone.

// probeGroupPrefix is the tracefs group prefix of this process's probes.
var probeGroupPrefix = "containerdsnoop_" + strconv.Itoa(os.Getpid())

// probeGroup matches the groups probeGroupPrefix makes; the pid is the
// first submatch.
var probeGroup = regexp.MustCompile(`^containerdsnoop_([0-9]+)_[0-9a-f]+$`)

// removeStaleProbes removes, from kprobe_events and uprobe_events in the
// tracefs at dir, the entries of tracers whose process no longer exists,
// and returns how many it removed. An entry still in use is refused by
// the kernel (EBUSY) and left; one whose pid a new process took is left
// until that process is gone too.
func removeStaleProbes(dir string) (int, error) {
	var removed int
	var errs []error
	for _, file := range []string{"kprobe_events", "uprobe_events"} {
		n, err := removeStaleIn(filepath.Join(dir, file))
		removed += n
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

func removeStaleIn(path string) (int, error) {
	stale, err := staleEvents(path)
	if err != nil || len(stale) == 0 {
		return 0, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var removed int
	var errs []error
	for _, ev := range stale {
		// One write per removal: the kernel takes one command per write,
		// and one refused must not stop the others.
		if _, err := f.WriteString("-:" + ev + "\n"); err != nil {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}

// staleEvents lists the GROUP/EVENT names in a probe_events file whose
// group is a containerdsnoop tracer's that no longer runs. A line reads
// "p:GROUP/EVENT SYMBOL..." ("r4096:" for a kretprobe with maxactive).
func staleEvents(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var stale []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		def, _, _ := strings.Cut(sc.Text(), " ")
		_, name, ok := strings.Cut(def, ":")
		group, _, ok2 := strings.Cut(name, "/")
		if !ok || !ok2 {
			continue
		}
		m := probeGroup.FindStringSubmatch(group)
		if m == nil {
			continue
		}
		if _, err := os.Stat("/proc/" + m[1]); err == nil {
			continue // running (this process too), or its pid taken since: left alone
		}
		stale = append(stale, name)
	}
	return stale, sc.Err()
}
