package bpf

import (
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"
)

// TestParkedSpoolWokenByRecord: once the ring buffer has been quiet, the
// spool parks (stops polling, sets the programs' reader_parked flag), and
// the next record must wake it through the programs' forced wakeup; were
// the flag ignored, the record would wait for the parked wait's safety
// timer and the wakeup count would not move.
func TestParkedSpoolWokenByRecord(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := tempDir(t)
		path := filepath.Join(dir, "parked.sock")
		// The in-kernel socket filter keeps the host's other unix traffic
		// out of the ring, which would never let it go quiet.
		tr, c := startCapture(t, Options{Attach: backend, IncludeSelf: true, Socket: path, PollInterval: 20 * time.Millisecond})
		if tr.parked == nil {
			t.Fatal("the programs' reader_parked flag could not be mapped")
		}
		client, _, _ := listenAt(t, path)
		ino := connIno(t, client)
		sent := 0
		for i := range 3 {
			waitParked(t, tr)
			before := tr.spool.parkedWakes.Load()
			msg := fmt.Sprintf("ping %d\n", i)
			if _, err := client.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			sent += len(msg)
			if got := c.waitFor(t, ino, sent); len(got) != sent {
				t.Fatalf("captured %d of %d bytes", len(got), sent)
			}
			if tr.spool.parkedWakes.Load() == before {
				t.Fatalf("send %d: the parked spool was not woken by the record (its safety timer ended the wait)", i)
			}
		}
	})
}

// waitParked waits until the spool has parked: the flag is set.
func waitParked(t *testing.T, tr *Tracer) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var v uint32
		if err := tr.parked.Get(&v); err != nil {
			t.Fatal(err)
		}
		if v == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the spool never parked: the ring buffer was never quiet for long")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestUnparkedSpoolWokenAtThreshold: a spool that is not parked waits on
// its timer (PollInterval, here an hour) and is woken early only when a
// record takes the unread data past a multiple of the wakeup threshold
// (a 32nd of the ring). It then reads everything there is, so at most a
// threshold's worth written after that wakeup waits for the timer. Each
// round writes two thresholds' worth: were a crossing not seen (or only
// the first), the round's bytes would wait for the hour.
func TestUnparkedSpoolWokenAtThreshold(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := tempDir(t)
		path := filepath.Join(dir, "threshold.sock")
		const ring = 1 << 20
		threshold := ring / 32
		_, c := startCapture(t, Options{Attach: backend, IncludeSelf: true, Socket: path, RingBufSize: ring, PollInterval: time.Hour})
		client, server, _ := listenAt(t, path)
		go io.Copy(io.Discard, server) // the sender must not block on a full socket
		ino := connIno(t, client)
		chunk := make([]byte, 4096)
		sent := 0
		for round := range 3 {
			for n := 0; n < 2*threshold; n += len(chunk) {
				if _, err := client.Write(chunk); err != nil {
					t.Fatal(err)
				}
				sent += len(chunk)
			}
			if got := c.waitFor(t, ino, sent-threshold); len(got) < sent-threshold {
				t.Fatalf("round %d: captured %d of %d bytes: the crossing of the wakeup threshold did not wake the spool", round, len(got), sent)
			}
		}
	})
}
