package pcapout_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"golang.org/x/net/http2"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/output"
	"github.com/containerdsnoop/containerdsnoop/internal/pcapout"
	"github.com/containerdsnoop/containerdsnoop/internal/pipeline"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

func load(t testing.TB, name string) []wirerec.Record {
	t.Helper()
	recs, err := wirerec.Load(filepath.Join("../../testdata/wire", name+".wire"))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func fixtureEvents(t testing.TB, name string) []capture.Event {
	t.Helper()
	return wirerec.Events(load(t, name), time.Unix(1767323045, 123456789))
}

// writePcap feeds events through a pipeline with a pcap writer on it and
// returns the file's path.
func writePcap(t testing.TB, evs []capture.Event) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "out.pcapng")
	w, err := pcapout.Create(path, pcapout.Options{Comment: "test capture", Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := output.New("json", io.Discard, output.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := pipeline.New(out, pipeline.Filter{})
	p.AddSink(w)
	for i := range evs {
		p.Feed(&evs[i])
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

type packet struct {
	iface    int
	time     time.Time
	src, dst string // ip:port
	tcp      layers.TCP
	payload  []byte
}

type capfile struct {
	packets []packet
	ifaces  []pcapgo.NgInterface
	section pcapgo.NgSectionInfo
}

func readPcap(t testing.TB, path string) capfile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	var c capfile
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		pkt := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if ip == nil || tcp == nil || pkt.ErrorLayer() != nil {
			t.Fatalf("packet %d is not Ethernet/IPv4/TCP: %v", len(c.packets)+1, pkt)
		}
		// Ethernet pads short frames to 60 bytes.
		if int(ip.Length) != 20+4*int(tcp.DataOffset)+len(tcp.Payload) || int(ip.Length) > len(data)-14 || (len(data) > 60 && int(ip.Length) != len(data)-14) {
			t.Fatalf("packet %d: IP length %d for %d bytes", len(c.packets)+1, ip.Length, len(data))
		}
		c.packets = append(c.packets, packet{
			iface: ci.InterfaceIndex, time: ci.Timestamp,
			src: fmt.Sprintf("%v:%d", ip.SrcIP, tcp.SrcPort),
			dst: fmt.Sprintf("%v:%d", ip.DstIP, tcp.DstPort),
			tcp: *tcp, payload: bytes.Clone(tcp.Payload),
		})
	}
	for i := range r.NInterfaces() {
		intf, err := r.Interface(i)
		if err != nil {
			t.Fatal(err)
		}
		c.ifaces = append(c.ifaces, intf)
	}
	c.section = r.SectionInfo()
	return c
}

// streams reassembles the payload sent from src by sequence number, and
// says where sequence numbers jump.
func streams(t testing.TB, pkts []packet, src string) (data []byte, gaps []uint32) {
	t.Helper()
	var next uint32
	started := false
	for _, p := range pkts {
		if p.src != src {
			continue
		}
		if p.tcp.SYN {
			next, started = p.tcp.Seq+1, true
			continue
		}
		if !started {
			t.Fatalf("%s sends before its SYN", src)
		}
		if len(p.payload) == 0 {
			continue
		}
		if p.tcp.Seq != next {
			gaps = append(gaps, p.tcp.Seq-next)
		}
		data = append(data, p.payload...)
		next = p.tcp.Seq + uint32(len(p.payload))
	}
	return data, gaps
}

// TestFlows checks the TCP flows against the recorded bytes: addresses,
// handshake, sequence numbers, segment sizes, the connection comments.
func TestFlows(t *testing.T) {
	for _, name := range []string{"unary_version", "two_conns", "large_split"} {
		t.Run(name, func(t *testing.T) {
			recs := load(t, name)
			c := readPcap(t, writePcap(t, fixtureEvents(t, name)))
			if !strings.Contains(c.section.Comment, "test capture") || !strings.HasPrefix(c.section.Application, "containerdsnoop") {
				t.Errorf("section %+v", c.section)
			}
			conns := map[uint32]bool{}
			for _, r := range recs {
				conns[r.Conn] = true
			}
			if len(c.ifaces) != len(conns)+1 {
				t.Fatalf("%d interfaces for %d connections", len(c.ifaces), len(conns))
			}
			for conn := range conns {
				client := fmt.Sprintf("127.1.0.%d:32768", conn)
				server := fmt.Sprintf("127.2.0.%d:50051", conn)
				var flow []packet
				for _, p := range c.packets {
					if (p.src == client && p.dst == server) || (p.src == server && p.dst == client) {
						flow = append(flow, p)
						if p.iface != int(conn) {
							t.Errorf("conn %d: packet on interface %d", conn, p.iface)
						}
					}
				}
				if len(flow) < 3 || flow[0].src != client || !flow[0].tcp.SYN || flow[0].tcp.ACK ||
					flow[1].src != server || !flow[1].tcp.SYN || !flow[1].tcp.ACK || flow[1].tcp.Ack != flow[0].tcp.Seq+1 ||
					flow[2].src != client || flow[2].tcp.SYN || !flow[2].tcp.ACK {
					t.Fatalf("conn %d: no handshake at the start", conn)
				}
				for _, p := range flow {
					if len(p.payload) > pcapout.MaxSegment {
						t.Errorf("segment of %d bytes", len(p.payload))
					}
				}
				up, gaps := streams(t, flow, client)
				if want := wirerec.Stream(recs, conn, false); !bytes.Equal(up, want) || len(gaps) > 0 {
					t.Errorf("conn %d client→server: %d bytes, gaps %v; want %d bytes", conn, len(up), gaps, len(want))
				}
				down, gaps := streams(t, flow, server)
				if want := wirerec.Stream(recs, conn, true); !bytes.Equal(down, want) || len(gaps) > 0 {
					t.Errorf("conn %d server→client: %d bytes, gaps %v; want %d bytes", conn, len(down), gaps, len(want))
				}
				intf := c.ifaces[conn]
				want := fmt.Sprintf("conn %d on /run/test.sock: client client pid 100 socket inode %d at %s; server server pid 200 socket inode %d at %s",
					conn, conn*2+1000, client, conn*2+1+1000, server)
				if intf.Name != fmt.Sprintf("conn%d", conn) || intf.Description != "/run/test.sock" || intf.Comment != want {
					t.Errorf("interface %+v\nwant comment %s", intf, want)
				}
			}
		})
	}
}

// TestGap: bytes the capture lost are missing segments of their size.
func TestGap(t *testing.T) {
	evs := fixtureEvents(t, "unary_version")
	// Drop a server chunk in the middle.
	drop := -1
	for i := len(evs) / 2; i < len(evs); i++ {
		if evs[i].PID == 200 && evs[i].Len > 0 {
			drop = i
			break
		}
	}
	lost := evs[drop].Len
	evs = slices.Delete(evs, drop, drop+1)
	c := readPcap(t, writePcap(t, evs))
	_, gaps := streams(t, c.packets, "127.2.0.1:50051")
	if len(gaps) != 1 || gaps[0] != lost {
		t.Errorf("gaps %v, want one of %d bytes", gaps, lost)
	}
}

// event builds a chunk for the synthetic tests.
func event(t0 time.Time, i int, fromServer bool, off uint64, data []byte) capture.Event {
	ev := capture.Event{
		Time: t0.Add(time.Duration(i) * time.Millisecond), Sock: 10, PeerSock: 11, Ino: 1010, PeerIno: 1011,
		Offset: off, Len: uint32(len(data)), SendLen: uint32(len(data)),
		PID: 100, TID: 100, PeerPID: 200, Comm: "cli", Path: "/run/x.sock", Data: data,
	}
	if fromServer {
		ev.Sock, ev.PeerSock, ev.Ino, ev.PeerIno = 11, 10, 1011, 1010
		ev.PID, ev.TID, ev.PeerPID, ev.Comm = 200, 200, 100, "srv"
	}
	return ev
}

// TestDirection: the server speaking first, a big send, a connection
// that is not HTTP/2.
func TestDirection(t *testing.T) {
	t0 := time.Unix(1767323045, 0)
	settings := []byte{0, 0, 0, 4, 0, 0, 0, 0, 0}
	big := append([]byte(http2.ClientPreface), bytes.Repeat([]byte{0}, 150000)...)

	t.Run("server first, big send", func(t *testing.T) {
		evs := []capture.Event{
			event(t0, 0, true, 0, settings),
			event(t0, 1, false, 0, big),
		}
		c := readPcap(t, writePcap(t, evs))
		if c.packets[0].src != "127.1.0.1:32768" || !c.packets[0].tcp.SYN {
			t.Fatalf("first packet from %s", c.packets[0].src)
		}
		var sizes []int
		for _, p := range c.packets {
			if p.src == "127.1.0.1:32768" && len(p.payload) > 0 {
				sizes = append(sizes, len(p.payload))
			}
		}
		if want := []int{pcapout.MaxSegment, pcapout.MaxSegment, len(big) - 2*pcapout.MaxSegment}; !slices.Equal(sizes, want) {
			t.Errorf("client segments %v, want %v", sizes, want)
		}
		up, gaps := streams(t, c.packets, "127.1.0.1:32768")
		if !bytes.Equal(up, big) || gaps != nil {
			t.Errorf("client stream of %d bytes, gaps %v", len(up), gaps)
		}
		if !strings.Contains(c.ifaces[1].Comment, "client cli pid 100 socket inode 1010") ||
			!strings.Contains(c.ifaces[1].Comment, "server srv pid 200 socket inode 1011") {
			t.Errorf("comment %q", c.ifaces[1].Comment)
		}
	})

	t.Run("not HTTP/2, peer not accepted", func(t *testing.T) {
		// The client's send began before the server accepted (its
		// receiver has no inode yet), and reached the ring buffer after
		// the server's first answer.
		srv := event(t0, 1, true, 0, []byte("banner\n"))
		cli := event(t0, 0, false, 0, []byte("hello\n"))
		cli.PeerIno = 0
		c := readPcap(t, writePcap(t, []capture.Event{srv, cli}))
		if c.packets[0].src != "127.1.0.1:32768" || !strings.Contains(c.ifaces[1].Comment, "client cli pid 100") {
			t.Errorf("first packet from %s; comment %q", c.packets[0].src, c.ifaces[1].Comment)
		}
	})

	t.Run("not HTTP/2, the server bound", func(t *testing.T) {
		srv := event(t0, 0, true, 0, []byte("banner\n"))
		srv.Bound = true
		cli := event(t0, 1, false, 0, []byte("hello\n"))
		c := readPcap(t, writePcap(t, []capture.Event{srv, cli}))
		if c.packets[0].src != "127.1.0.1:32768" || !strings.Contains(c.ifaces[1].Comment, "client cli pid 100") {
			t.Errorf("first packet from %s; comment %q", c.packets[0].src, c.ifaces[1].Comment)
		}
	})

	t.Run("unknown: the first sender", func(t *testing.T) {
		srv := event(t0, 0, true, 0, []byte("banner\n"))
		cli := event(t0, 1, false, 0, []byte("hello\n"))
		c := readPcap(t, writePcap(t, []capture.Event{srv, cli}))
		if c.packets[0].src != "127.1.0.1:32768" || !strings.Contains(c.ifaces[1].Comment, "client srv pid 200") {
			t.Errorf("first packet from %s; comment %q", c.packets[0].src, c.ifaces[1].Comment)
		}
	})

	t.Run("unknown gap", func(t *testing.T) {
		evs := []capture.Event{
			event(t0, 0, false, 0, big[:100]),
			event(t0, 1, true, 0, settings),
			event(t0, 2, false, 50, big[100:200]), // the kernel's counter restarted
		}
		c := readPcap(t, writePcap(t, evs))
		if _, gaps := streams(t, c.packets, "127.1.0.1:32768"); len(gaps) != 1 {
			t.Errorf("gaps %v, want one", gaps)
		}
	})
}

// TestClose: a connection whose socket was closed ends with FINs; the
// sequence numbers stay consistent (tshark's analysis checks them too).
func TestClose(t *testing.T) {
	evs := fixtureEvents(t, "unary_version")
	last := evs[len(evs)-1]
	last.Close, last.Data, last.Len, last.Time = true, nil, 0, last.Time.Add(time.Millisecond)
	evs = append(evs, last)
	c := readPcap(t, writePcap(t, evs))
	n := len(c.packets)
	if n < 6 {
		t.Fatalf("%d packets", n)
	}
	fin1, fin2, ack := c.packets[n-3].tcp, c.packets[n-2].tcp, c.packets[n-1].tcp
	if c.packets[n-3].src != "127.1.0.1:32768" || !fin1.FIN || !fin2.FIN || ack.FIN || !ack.ACK ||
		fin2.Ack != fin1.Seq+1 || ack.Seq != fin1.Seq+1 || ack.Ack != fin2.Seq+1 {
		t.Errorf("teardown %+v / %+v / %+v", fin1, fin2, ack)
	}
	up, _ := streams(t, c.packets, "127.1.0.1:32768")
	if want := wirerec.Stream(load(t, "unary_version"), 1, false); !bytes.Equal(up, want) {
		t.Errorf("client stream of %d bytes, want %d", len(up), len(want))
	}
}

// TestMidStream: a connection joined after its first bytes, starting
// with a server chunk, is still oriented by what its decoder learned:
// HTTP/2 headers (:status), ttrpc response frames. Neither end is marked
// bound and both are accepted, so nothing else tells, and the fallback
// (the first sender) would make the server the client.
func TestMidStream(t *testing.T) {
	for _, name := range []string{"long_lived", "ttrpc_task"} {
		t.Run(name, func(t *testing.T) {
			evs := fixtureEvents(t, name)
			// Start at a server chunk well into the connection.
			start := len(evs) / 2
			for evs[start].PID != 200 {
				start++
			}
			evs = evs[start:]
			for i := range evs {
				evs[i].Bound = false
			}
			c := readPcap(t, writePcap(t, evs))
			if len(c.packets) == 0 || len(c.ifaces) < 2 {
				t.Fatalf("%d packets, %d interfaces", len(c.packets), len(c.ifaces))
			}
			if c.packets[0].src != "127.1.0.1:32768" || !strings.Contains(c.ifaces[1].Comment, "client client pid 100") {
				t.Errorf("first packet from %s; comment %q", c.packets[0].src, c.ifaces[1].Comment)
			}
		})
	}
}

// TestTshark opens the files with Wireshark's own dissectors: HTTP/2 on
// the server port, and gRPC inside it.
func TestTshark(t *testing.T) {
	tshark := privileged.RequireBinary(t, "tshark")
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"unary_version", []string{
			"127.1.0.1 /runtime.v1.RuntimeService/Version",
			"127.1.0.1 /runtime.v1.ImageService/ImageFsInfo",
			"127.1.0.1 /runtime.v1.RuntimeService/ListContainers",
		}},
		{"two_conns", []string{
			"127.1.0.1 /runtime.v1.RuntimeService/Version",
			"127.1.0.2 /runtime.v1.RuntimeService/Version",
			"127.1.0.1 /runtime.v1.RuntimeService/ListPodSandbox",
			"127.1.0.2 /runtime.v1.RuntimeService/ListPodSandbox",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs := fixtureEvents(t, tc.name)
			// The last connection's socket is closed: FINs.
			last := evs[len(evs)-1]
			last.Close, last.Data, last.Len = true, nil, 0
			path := writePcap(t, append(evs, last))
			args := []string{"-r", path, "-d", fmt.Sprintf("tcp.port==%d,http2", pcapout.ServerPort),
				"-Y", "grpc && http2.headers.path", "-T", "fields", "-E", "separator=/s", "-e", "ip.src", "-e", "http2.headers.path"}
			cmd := exec.Command(tshark, args...)
			cmd.Env = append(os.Environ(), "HOME="+t.TempDir()) // no user preferences
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("tshark %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
			}
			got := strings.Split(strings.TrimSpace(string(out)), "\n")
			if !slices.Equal(got, tc.want) {
				t.Errorf("tshark %s:\n%s\nwant\n%s", strings.Join(args, " "), out, strings.Join(tc.want, "\n"))
			}

			// The gRPC messages are dissected too, with their lengths.
			cmd = exec.Command(tshark, "-r", path, "-d", fmt.Sprintf("tcp.port==%d,http2", pcapout.ServerPort),
				"-Y", "grpc.message_length", "-T", "fields", "-e", "grpc.message_length")
			cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
			out, err = cmd.Output()
			if err != nil || len(strings.Fields(string(out))) < len(tc.want) {
				t.Errorf("gRPC messages: %v %q", err, out)
			}
			// No TCP analysis warnings: sequence numbers are consistent.
			cmd = exec.Command(tshark, "-r", path, "-Y", "tcp.analysis.flags")
			cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
			out, err = cmd.Output()
			if err != nil || len(bytes.TrimSpace(out)) > 0 {
				t.Errorf("TCP analysis: %v\n%s", err, out)
			}
		})
	}
}
