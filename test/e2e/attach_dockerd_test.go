//go:build linux

package e2e

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/dockerdtest"
)

// TestAttachToDockerd attaches to Debian's dockerd mid-connection, as an
// operator would: dockerd has run containers on its one connection to
// containerd (so every method path it uses is in the header table, sent as
// an index from then on), and its Events/Subscribe stream has been open
// since it started. For the minute after the attach, containers are run,
// exec'd into, stopped and removed. A tracer started before dockerd is the
// reference; the late tracer must show every call and every event it shows
// after the attach, nothing differently, and at least 99 % of the calls
// of the first minute with their method and status (see attachReport).
func TestAttachToDockerd(t *testing.T) {
	c := containerdtest.Start(t)
	full := startTracer(t, "--output", "json", "--socket", c.Socket)
	d := dockerdtest.Start(t, c)

	lifecycle := func(name string) {
		id := d.Docker(t, "run", "-d", "--name", name, "--network", "none", dockerdtest.Image, "sleep", "600")
		d.Docker(t, "exec", id, "true")
		d.Docker(t, "stop", "-t", "1", id)
		d.Docker(t, "rm", id)
	}
	// Old: each method dockerd uses for a container's life is in the table.
	for i := range 3 {
		lifecycle(fmt.Sprintf("before-%d", i))
	}
	// Without peer probes, attached at the same point (docs/attach.md,
	// "Inference"): started first, so the late tracer's window is as before.
	blind := startTracer(t, "--output", "json", "--peer-probes=false", "--socket", c.Socket)
	late := startTracer(t, "--output", "json", "--socket", c.Socket)
	attached := time.Now()
	// A minute of container changes, as the requirement is stated over
	// the first minute after attaching.
	for i := 0; time.Since(attached) < attachWindow; i++ {
		lifecycle(fmt.Sprintf("after-%d", i))
	}
	fullRecs, _, until := markEnd(t, c, full, late)
	checkBlind(t, "dockerd", fullRecs, blind, d.PID, attached, until)
	blind.stop(os.Interrupt)
	late.stop(os.Interrupt)
	full.stop(os.Interrupt)
	// What the late tracer still held for its peer fields (up to 5 s) is
	// printed by the time it exits.
	lateRecs := late.records()

	rep := compareAttach(t, fullRecs, lateRecs, d.PID, attached, until, attachWindow)
	t.Logf("dockerd %s", rep)
	if rep.oldStreamMsgs == 0 {
		t.Error("no message on a stream opened before the attach: dockerd's event stream was not seen")
	}
	rep.check(t)
}
