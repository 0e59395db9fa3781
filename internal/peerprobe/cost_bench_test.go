package peerprobe

import (
	"bufio"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerdsnoop/containerdsnoop/internal/bpf"
	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// BenchmarkPeerProbeCost measures what a peer probe costs the probed
// process per header field: a stripped program encodes request blocks with
// and without the probe, while the tracer drains the ring buffer. Reported
// as ns/field (unprobed, probed); b.N is not used, one run is the sample.
func BenchmarkPeerProbeCost(b *testing.B) {
	privileged.Require(b)
	bin := filepath.Join(b.TempDir(), "writeloop")
	if out, err := exec.Command("go", "build", "-ldflags=-s -w", "-o", bin, "./testdata/writeloop").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	run := func(probe bool) float64 {
		cmd := exec.Command(bin, "-n", "200000")
		in, _ := cmd.StdinPipe()
		outp, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer cmd.Wait()
		sc := bufio.NewScanner(outp)
		sc.Scan() // ready
		if probe {
			tr, err := bpf.Open(bpf.Options{PeerProbes: true, RingBufSize: 64 << 20})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			m := New(tr, nil, 0)
			defer m.Close()
			if v := m.Examine(uint32(cmd.Process.Pid)); !strings.HasPrefix(v, "probed") {
				b.Fatal(v)
			}
			go func() {
				var ev capture.Event
				for tr.Read(&ev) == nil {
				}
			}()
		}
		io.WriteString(in, "go\n")
		sc.Scan()
		ns, err := strconv.ParseFloat(strings.TrimSpace(sc.Text()), 64)
		if err != nil {
			b.Fatalf("writeloop said %q", sc.Text())
		}
		in.Close()
		return ns
	}
	plain := run(false)
	probed := run(true)
	b.ReportMetric(plain, "ns/field-unprobed")
	b.ReportMetric(probed, "ns/field-probed")
}
