// Package pcapout writes the traced unix-socket connections as a pcapng
// file that Wireshark and tshark open with their own HTTP/2 and gRPC
// dissectors: every connection becomes a synthetic TCP flow over IPv4.
//
// Each connection with id N (the `conn` of the JSON output) gets
//
//	client 127.1.x.y:port  →  server 127.2.x.y:50051
//
// where x.y are the low 16 bits of N (x = N>>8 & 0xff, y = N & 0xff) and
// port = 32768 + (N>>16 & 0x7fff), so every connection of a file has its
// own address pair and the server port is always ServerPort (what to tell
// Wireshark to decode as HTTP/2). The flow opens with SYN, SYN-ACK, ACK at
// the connection's first captured byte; sequence numbers follow the
// capture's stream offsets, so bytes the capture lost are missing segments
// ("previous segment not captured") rather than wrong data. A segment
// carries at most MaxSegment bytes. A connection that ends because a
// socket was closed ends with FIN, FIN, ACK (client first: which end
// closed first is not known); one dropped for idleness or at the end of
// the trace just stops.
//
// gopacket's NgWriter cannot write per-packet comments, so each connection
// is also its own pcapng interface, added when the connection's first
// packet is written: its name is "connN", its description the socket path,
// and its comment names the socket path, both ends' pids, comms and socket
// inodes and their fake addresses. Wireshark shows them as
// frame.interface_name / frame.interface_description on every packet and
// in Statistics › Capture File Properties. Interface 0 is the tool itself
// and carries no packets.
//
// Which end is the client: the end that sent the HTTP/2 client preface;
// else the end whose socket is not the bound one (stream.End.Bound, when
// exactly one end is); else what the protocol decoder learned
// (stream.Conn.ClientEnd: HTTP/2 saw :path or :status, ttrpc a request or
// response frame); else the end that sent while its peer was not yet
// accepted (an embryo socket has no inode: that receiver is the server);
// else, once 256 KiB are waiting or the connection ends, the first sender. The first
// of these to be known decides. A connection's packets wait in memory
// until its direction is known and both ends have sent something (so that
// the comment can name both processes), or 256 KiB wait: they may be
// written after packets of other connections with later times.
//
// Payloads are the raw bytes sent, not redacted.
package pcapout

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"golang.org/x/net/http2"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/safefile"
	"github.com/containerdsnoop/containerdsnoop/internal/stream"
)

// ServerPort is the TCP port of the server end of every flow.
const ServerPort = 50051

// MaxSegment is the most payload one packet carries: an IPv4 packet's
// 65535 bytes less the IPv4 and TCP headers.
const MaxSegment = 65535 - 20 - 20

// unknownGap is how far the sequence number jumps where the capture lost
// an unknown number of bytes (the kernel's offset counter restarted).
const unknownGap = 1 << 16

// maxPending bounds what an undecided connection holds.
const maxPending = 256 << 10

// windowScale makes the advertised window (65535 << 14, 1 GiB) larger
// than anything a trace sends unacknowledged, so Wireshark does not flag
// "window full" on long one-way sends.
const windowScale = 14

// Options describe the file.
type Options struct {
	// Comment goes in the section header: what produced the file.
	Comment string
	// Version is the tool's version, for the section's application field.
	Version string
}

// Writer is a stream.Sink that writes pcapng. Add it to a pipeline with
// pipeline.AddSink, which calls it after the decoders, so a role a decoder
// learns from a chunk is known when the writer gets that chunk. Not safe for concurrent use.
type Writer struct {
	ng    *pcapgo.NgWriter
	file  io.Closer
	flows map[*stream.Conn]*flow
	buf   gopacket.SerializeBuffer
	eth   layers.Ethernet
	ip    layers.IPv4
	tcp   layers.TCP
	err   error
	done  bool
	// Packets counts the packets written.
	Packets uint64
}

type op struct {
	end  int
	gap  uint64 // a Gap when data is nil; 0 means an unknown size
	t    time.Time
	data []byte
}

type flow struct {
	id     uint64
	sc     *stream.Conn
	client int // end index; -1 while undecided
	hint   int // the client end as far as known, -1 if not
	iface  int
	// next is each end's next sequence number.
	next    [2]uint32
	addr    [2][4]byte
	port    [2]uint16
	first   time.Time
	sender  int // the first end that sent
	sent    [2]bool
	pending []op
	size    int
}

// Create creates path, new (an existing path is an error, see
// internal/safefile) and readable by its owner only (it holds whatever the
// traced processes sent), and writes the pcapng header.
func Create(path string, opts Options) (*Writer, error) {
	f, err := safefile.Create(path)
	if err != nil {
		return nil, err
	}
	w, err := New(f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	w.file = f
	return w, nil
}

// New writes the pcapng section header and the tool's interface to out.
func New(out io.Writer, opts Options) (*Writer, error) {
	app := "containerdsnoop"
	if opts.Version != "" {
		app += " " + opts.Version
	}
	ng, err := pcapgo.NewNgWriterInterface(out, pcapgo.NgInterface{
		Name:        "containerdsnoop",
		Description: "gRPC on unix sockets as synthetic TCP flows; each connection is an interface of its own",
		OS:          runtime.GOOS,
		LinkType:    layers.LinkTypeEthernet,
	}, pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{
		Hardware:    runtime.GOARCH,
		OS:          runtime.GOOS,
		Application: app,
		Comment:     opts.Comment,
	}})
	if err != nil {
		return nil, fmt.Errorf("write pcapng header: %w", err)
	}
	w := &Writer{ng: ng, flows: map[*stream.Conn]*flow{}, buf: gopacket.NewSerializeBuffer()}
	w.eth.EthernetType = layers.EthernetTypeIPv4
	w.ip = layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment}
	w.tcp.SetNetworkLayerForChecksum(&w.ip)
	return w, nil
}

func clientPort(id uint64) uint16 { return 32768 + uint16(id>>16&0x7fff) }

// Err is the first error writing the file.
func (w *Writer) Err() error { return w.err }

func (w *Writer) flow(sc *stream.Conn, t time.Time) *flow {
	f := w.flows[sc]
	if f != nil && f.id == sc.ID {
		return f
	}
	if f != nil {
		// The decoder saw a new connection start on the same sockets.
		w.finish(f)
	}
	f = &flow{id: sc.ID, sc: sc, client: -1, hint: -1, first: t, sender: -1}
	w.flows[sc] = f
	return f
}

// Bytes implements stream.Sink.
func (w *Writer) Bytes(sc *stream.Conn, end int, ev *capture.Event, data []byte) {
	if w.done || len(data) == 0 {
		return
	}
	f := w.flow(sc, ev.Time)
	if f.client >= 0 {
		w.segments(f, end, ev.Time, data)
		return
	}
	if f.sender < 0 {
		f.sender = end
	}
	if f.hint < 0 {
		f.hint = clientOf(f, sc, end, ev, data)
	}
	f.sent[end] = true
	f.pending = append(f.pending, op{end: end, t: ev.Time, data: bytes.Clone(data)})
	f.size += len(data)
	// Wait for both ends, so that the interface comment can name both
	// processes, unless that holds too much.
	switch {
	case f.hint >= 0 && f.sent[0] && f.sent[1]:
		w.decide(f, f.hint)
	case f.size > maxPending:
		w.finish(f)
	}
}

// Gap implements stream.Sink.
func (w *Writer) Gap(sc *stream.Conn, end int, n uint64) {
	if w.done {
		return
	}
	f := w.flow(sc, sc.Last)
	if f.client < 0 {
		f.pending = append(f.pending, op{end: end, gap: n})
		return
	}
	f.skip(end, n)
}

// Closed implements stream.Sink. A connection that ended because a socket
// was closed (not for idleness, or at exit) ends with FINs.
func (w *Writer) Closed(sc *stream.Conn) {
	if f := w.flows[sc]; f != nil {
		w.finish(f)
		delete(w.flows, sc)
		if sc.Closed && f.client >= 0 {
			w.fin(f, sc.Last)
		}
	}
}

// fin writes a teardown: which end closed first is not known, so the
// client's FIN comes first, as usual.
func (w *Writer) fin(f *flow, t time.Time) {
	client, server := f.client, stream.Peer(f.client)
	cs, ss := f.next[client], f.next[server]
	w.packet(f, client, t, cs, ss, tcpFIN|tcpACK, nil, nil)
	w.packet(f, server, t, ss, cs+1, tcpFIN|tcpACK, nil, nil)
	w.packet(f, client, t, cs+1, ss+1, tcpACK, nil, nil)
	f.next[client], f.next[server] = cs+1, ss+1
}

// finish writes what an undecided flow holds.
func (w *Writer) finish(f *flow) {
	switch {
	case f.client >= 0 || f.sender < 0:
	case f.hint >= 0:
		w.decide(f, f.hint)
	default:
		w.decide(f, f.sender)
	}
}

func (f *flow) skip(end int, n uint64) {
	if n == 0 {
		n = unknownGap
	}
	f.next[end] += uint32(n)
}

var preface = []byte(http2.ClientPreface)

// clientOf says which end is the client, -1 while that is unknown.
func clientOf(f *flow, sc *stream.Conn, end int, ev *capture.Event, data []byte) int {
	if !f.sent[end] && bytes.HasPrefix(data, preface) {
		return end
	}
	// The accepting end's socket carries the address; a client's may too
	// (bound before connect), so only one bound end tells.
	if b0, b1 := sc.Ends[0].Bound, sc.Ends[1].Bound; b0 != b1 {
		if b0 {
			return 1
		}
		return 0
	}
	if client, ok := sc.ClientEnd(); ok {
		return client
	}
	if ev.PeerIno == 0 && ev.PeerSock != 0 {
		return end
	}
	return -1
}

// decide fixes the flow's direction, writes its interface and handshake,
// then what was waiting.
func (w *Writer) decide(f *flow, client int) {
	server := stream.Peer(client)
	f.client = client
	f.addr[client] = [4]byte{127, 1, byte(f.id >> 8), byte(f.id)}
	f.addr[server] = [4]byte{127, 2, byte(f.id >> 8), byte(f.id)}
	f.port[client], f.port[server] = clientPort(f.id), ServerPort
	// Fixed initial sequence numbers, different per flow and direction.
	isn := uint32(f.id*0x9e3779b1) | 1
	f.next[client], f.next[server] = isn, isn^0x5bd1e995

	sc := f.sc
	ends := sc.Ends
	desc := func(e int) string {
		comm := ends[e].Comm
		if comm == "" {
			comm = "?"
		}
		return fmt.Sprintf("%s pid %d socket inode %d at %d.%d.%d.%d:%d", comm, ends[e].PID, ends[e].Ino,
			f.addr[e][0], f.addr[e][1], f.addr[e][2], f.addr[e][3], f.port[e])
	}
	path := sc.Socket
	if path == "" {
		path = "(unnamed socket)"
	}
	iface, err := w.ng.AddInterface(pcapgo.NgInterface{
		Name:        fmt.Sprintf("conn%d", f.id),
		Description: path,
		Comment:     fmt.Sprintf("conn %d on %s: client %s; server %s", f.id, path, desc(client), desc(server)),
		LinkType:    layers.LinkTypeEthernet,
	})
	if err != nil {
		w.fail(err)
		return
	}
	f.iface = iface

	synOpts := []layers.TCPOption{
		{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{byte(MaxSegment >> 8), byte(MaxSegment & 0xff)}},
		{OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{windowScale}},
	}
	cs, ss := f.next[client], f.next[server]
	w.packet(f, client, f.first, cs, 0, tcpSYN, synOpts, nil)
	w.packet(f, server, f.first, ss, cs+1, tcpSYN|tcpACK, synOpts, nil)
	w.packet(f, client, f.first, cs+1, ss+1, tcpACK, nil, nil)
	f.next[client], f.next[server] = cs+1, ss+1

	for _, o := range f.pending {
		if o.data == nil {
			f.skip(o.end, o.gap)
			continue
		}
		w.segments(f, o.end, o.t, o.data)
	}
	f.pending, f.size = nil, 0
}

const (
	tcpSYN = 1 << iota
	tcpACK
	tcpPSH
	tcpFIN
)

// segments writes data sent by end as packets of at most MaxSegment bytes.
func (w *Writer) segments(f *flow, end int, t time.Time, data []byte) {
	for len(data) > 0 && w.err == nil {
		n := min(len(data), MaxSegment)
		seq := f.next[end]
		f.next[end] += uint32(n)
		w.packet(f, end, t, seq, f.next[stream.Peer(end)], tcpACK|tcpPSH, nil, data[:n])
		data = data[n:]
	}
}

func (w *Writer) packet(f *flow, from int, t time.Time, seq, ack uint32, flags int, opts []layers.TCPOption, payload []byte) {
	if w.err != nil {
		return
	}
	to := stream.Peer(from)
	w.eth.SrcMAC, w.eth.DstMAC = serverMAC, clientMAC
	if from == f.client {
		w.eth.SrcMAC, w.eth.DstMAC = clientMAC, serverMAC
	}
	w.ip.SrcIP = f.addr[from][:]
	w.ip.DstIP = f.addr[to][:]
	w.ip.Id++
	w.tcp = layers.TCP{
		SrcPort: layers.TCPPort(f.port[from]), DstPort: layers.TCPPort(f.port[to]),
		Seq: seq, Ack: ack, Window: 65535, Options: opts,
		SYN: flags&tcpSYN != 0, ACK: flags&tcpACK != 0, PSH: flags&tcpPSH != 0, FIN: flags&tcpFIN != 0,
	}
	w.tcp.SetNetworkLayerForChecksum(&w.ip)
	err := gopacket.SerializeLayers(w.buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&w.eth, &w.ip, &w.tcp, gopacket.Payload(payload))
	if err != nil {
		w.fail(err)
		return
	}
	b := w.buf.Bytes()
	err = w.ng.WritePacket(gopacket.CaptureInfo{Timestamp: t, CaptureLength: len(b), Length: len(b), InterfaceIndex: f.iface}, b)
	if err != nil {
		w.fail(err)
		return
	}
	w.Packets++
}

// The fake Ethernet addresses (locally administered).
var (
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	serverMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
)

func (w *Writer) fail(err error) {
	if w.err == nil {
		w.err = fmt.Errorf("write pcap: %w", err)
	}
}

// Flush writes buffered packets to the file, e.g. while the capture is
// idle. Connections whose direction is still undecided keep waiting.
func (w *Writer) Flush() error {
	if w.err == nil && !w.done {
		if err := w.ng.Flush(); err != nil {
			w.fail(err)
		}
	}
	return w.err
}

// Close writes what undecided connections hold, flushes, and closes the
// file if Create opened it. Close the pipeline first, so that every
// connection has ended. It may be called more than once.
func (w *Writer) Close() error {
	if w.done {
		return w.err
	}
	for sc, f := range w.flows {
		w.finish(f)
		delete(w.flows, sc)
	}
	w.done = true
	if w.err == nil {
		if err := w.ng.Flush(); err != nil {
			w.fail(err)
		}
	}
	if w.file != nil {
		if err := w.file.Close(); err != nil && w.err == nil {
			w.err = err
		}
		w.file = nil
	}
	return w.err
}

var _ stream.Sink = (*Writer)(nil)
