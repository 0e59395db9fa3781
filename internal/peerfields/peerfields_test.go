package peerfields

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	xhpack "golang.org/x/net/http2/hpack"

	"github.com/containerdsnoop/containerdsnoop/internal/capture"
	"github.com/containerdsnoop/containerdsnoop/internal/h2/hpack"
)

// peer simulates one Go process's encoder as the probe reports it: x/net's
// own Encoder, with each WriteField call recorded as the BPF program does
// (field, insertion count, block so far).
type peer struct {
	pid      uint32
	ptr      uint64
	buf      bytes.Buffer
	enc      *xhpack.Encoder
	inserted uint64
	seq      *uint64
	t        time.Time
}

func newPeer(pid uint32, ptr uint64, seq *uint64) *peer {
	p := &peer{pid: pid, ptr: ptr, seq: seq, t: time.Unix(1000, 0)}
	p.enc = xhpack.NewEncoder(&p.buf)
	return p
}

// encode encodes one block and returns it with the probe events (nil
// events when probed is false: encoded before the probe was attached).
func (p *peer) encode(t *testing.T, fields []xhpack.HeaderField, probed bool) ([]byte, []capture.Event) {
	t.Helper()
	p.buf.Reset()
	var evs []capture.Event
	for _, f := range fields {
		p.t = p.t.Add(time.Millisecond)
		if probed {
			*p.seq++
			evs = append(evs, capture.Event{Time: p.t, PID: p.pid, Field: &capture.HeaderField{
				Encoder: p.ptr, Inserted: p.inserted, HasInserted: true, Seq: *p.seq,
				Name: f.Name, Value: f.Value, NameLen: len(f.Name), ValueLen: len(f.Value),
				// The probe reads at most 1023 bytes of the block.
				Prefix: bytes.Clone(p.buf.Bytes()[:min(p.buf.Len(), 1023)]), PrefixLen: p.buf.Len(), HasPrefix: true,
			}})
		}
		before := p.buf.Len()
		if err := p.enc.WriteField(f); err != nil {
			t.Fatal(err)
		}
		if p.buf.Bytes()[before]&0xc0 == 0x40 {
			p.inserted++
		}
	}
	return bytes.Clone(p.buf.Bytes()), evs
}

// sent stamps a send of the block just encoded, as the kernel does: after
// its calls, before the next block's.
func (p *peer) sent(ev capture.Event) *capture.Event {
	p.t = p.t.Add(time.Microsecond)
	ev.Time = p.t
	return &ev
}

func request(path string) []xhpack.HeaderField {
	return []xhpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: path}, {Name: ":authority", Value: "localhost"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "user-agent", Value: "grpc-go/1.58.3"},
		{Name: "te", Value: "trailers"}, {Name: "grpc-timeout", Value: "120000m"},
	}
}

var methods = []string{"/runtime.v1.RuntimeService/ListPodSandbox", "/runtime.v1.RuntimeService/ListContainers",
	"/runtime.v1.RuntimeService/ContainerStatus", "/runtime.v1.ImageService/ImageFsInfo", "/runtime.v1.RuntimeService/Version"}

// TestTieThenPin: a kubelet-like connection whose table never turns over,
// joined after 100 calls. With the probe attached at the join, every :path
// is known from the third block on, and nothing is ever wrong.
func TestTieThenPin(t *testing.T) {
	var seq uint64
	p := newPeer(42, 0xc000100000, &seq)
	for i := 0; i < 100; i++ {
		p.encode(t, request(methods[i%len(methods)]), false)
	}
	s := New()
	dir := s.Direction()
	dec := hpack.NewDecoder()
	dec.SetResolver(dir)
	firstKnown := -1
	for i := 0; i < 200; i++ {
		want := request(methods[(i*7)%len(methods)])
		block, evs := p.encode(t, want, true)
		for k := range evs {
			s.Add(&evs[k])
		}
		dir.Begin(p.sent(capture.Event{PID: 42, Sock: 1, Offset: uint64(i) * 1000}), block)
		got, err := dec.Decode(block)
		if err != nil {
			t.Fatal(err)
		}
		known := true
		for k, f := range got {
			if f.NameKnown && f.Name != want[k].Name || f.ValueKnown && f.Value != want[k].Value {
				t.Fatalf("block %d field %d: %+v, want %+v", i, k, f, want[k])
			}
			if k == 2 && !f.Known() {
				known = false
			}
		}
		if known && firstKnown < 0 {
			firstKnown = i
		}
		if !known && firstKnown >= 0 {
			t.Fatalf("block %d: :path unknown again after block %d", i, firstKnown)
		}
	}
	if firstKnown < 0 || firstKnown > 2 {
		t.Fatalf(":path known from block %d (stats %+v)", firstKnown, s.Stats)
	}
	if s.Stats.Ties != 1 || s.Stats.Pinned == 0 || s.Stats.Refused != 0 || s.Stats.Ambiguous != 0 {
		t.Fatalf("stats %+v", s.Stats)
	}
}

// TestTrailersLastField: grpc-go servers send grpc-status then
// grpc-message, both indexed once the table holds them. grpc-message is the
// block's last field, proved only once the direction is tied (its calls are
// then the block's own); grpc-status is proved before. From the third block
// on both are known, and an error status with a new message too.
func TestTrailersLastField(t *testing.T) {
	var seq uint64
	p := newPeer(5, 0x5, &seq)
	ok := []xhpack.HeaderField{{Name: "grpc-status", Value: "0"}, {Name: "grpc-message", Value: ""}}
	for i := 0; i < 20; i++ {
		p.encode(t, ok, false)
	}
	s := New()
	dir := s.Direction()
	dec := hpack.NewDecoder()
	dec.SetResolver(dir)
	for i := 0; i < 30; i++ {
		want := ok
		if i%10 == 9 {
			want = []xhpack.HeaderField{{Name: "grpc-status", Value: "5"}, {Name: "grpc-message", Value: fmt.Sprintf("container %d not found", i)}}
		}
		block, evs := p.encode(t, want, true)
		for k := range evs {
			s.Add(&evs[k])
		}
		dir.Begin(p.sent(capture.Event{PID: 5, Sock: 2, Offset: uint64(i)}), block)
		got, err := dec.Decode(block)
		if err != nil {
			t.Fatal(err)
		}
		for k, f := range got {
			if f.NameKnown && f.Name != want[k].Name || f.ValueKnown && f.Value != want[k].Value {
				t.Fatalf("block %d field %d: %+v, want %+v", i, k, f, want[k])
			}
			if i >= 2 && !f.Known() {
				t.Fatalf("block %d field %d unknown (stats %+v)", i, k, s.Stats)
			}
		}
	}
}

// TestNoProofNoPin: without probe events nothing is pinned, and the same
// connection keeps its paths unknown (the test measures the probes).
func TestNoProofNoPin(t *testing.T) {
	var seq uint64
	p := newPeer(42, 1, &seq)
	for i := 0; i < 50; i++ {
		p.encode(t, request(methods[i%len(methods)]), false)
	}
	s := New()
	dir := s.Direction()
	dec := hpack.NewDecoder()
	dec.SetResolver(dir)
	for i := 0; i < 50; i++ {
		block, _ := p.encode(t, request(methods[i%len(methods)]), false)
		dir.Begin(p.sent(capture.Event{PID: 42, Sock: 1, Offset: uint64(i)}), block)
		got, err := dec.Decode(block)
		if err != nil {
			t.Fatal(err)
		}
		if got[2].ValueKnown {
			t.Fatalf("block %d: :path known without probes", i)
		}
	}
}

// TestIdenticalBytesOtherContent: two connections of one process whose
// tables differ produce the same bytes for different paths. A proof from
// each is ambiguous: nothing is pinned, nothing wrong shown.
func TestIdenticalBytesOtherContent(t *testing.T) {
	var seq uint64
	a := newPeer(7, 0xa, &seq)
	b := newPeer(7, 0xb, &seq)
	a.encode(t, request("/a.A/One"), false)
	b.encode(t, request("/b.B/Two"), false)
	s := New()
	dir := s.Direction()
	dec := hpack.NewDecoder()
	dec.SetResolver(dir)
	for i := 0; i < 20; i++ {
		blockA, evA := a.encode(t, request("/a.A/One"), true)
		blockB, evB := b.encode(t, request("/b.B/Two"), true)
		if !bytes.Equal(blockA, blockB) {
			t.Fatalf("blocks differ: %x %x", blockA, blockB)
		}
		for k := range evA {
			s.Add(&evA[k])
		}
		for k := range evB {
			s.Add(&evB[k])
		}
		dir.Begin(a.sent(capture.Event{PID: 7, Sock: 1, Offset: uint64(i)}), blockA)
		got, err := dec.Decode(blockA)
		if err != nil {
			t.Fatal(err)
		}
		if got[2].ValueKnown {
			t.Fatalf("block %d: pinned %q from ambiguous proofs", i, got[2].Value)
		}
	}
	if s.Stats.Ambiguous == 0 {
		t.Fatalf("stats %+v", s.Stats)
	}
}

// TestPreProbeBlockNotPinned: a block encoded just before the probe was
// attached (no calls of its own) and sent in the same write as the next
// block: the next block's calls prove the same bytes, but a proof from one
// send never ties a direction.
func TestPreProbeBlockNotPinned(t *testing.T) {
	var seq uint64
	p := newPeer(9, 1, &seq)
	// Table state where the two paths sit at fixed indices, and then a
	// fresh entry is inserted by the pre-probe block so both blocks'
	// :path references have the same index but different entries.
	for i := 0; i < 10; i++ {
		p.encode(t, request(methods[i%len(methods)]), false)
	}
	pre, _ := p.encode(t, append(request(methods[0]), xhpack.HeaderField{Name: "x-new", Value: "1"}), false)
	post, evs := p.encode(t, append(request(methods[1]), xhpack.HeaderField{Name: "x-new", Value: "1"}), true)
	s := New()
	for k := range evs {
		s.Add(&evs[k])
	}
	dir := s.Direction()
	dec := hpack.NewDecoder()
	dec.SetResolver(dir)
	send := p.sent(capture.Event{PID: 9, Sock: 1, Offset: 0})
	for _, block := range [][]byte{pre, post} {
		dir.Begin(send, block) // one send
		got, err := dec.Decode(block)
		if err != nil {
			t.Fatal(err)
		}
		for k, f := range got {
			if f.Peer {
				t.Fatalf("field %d pinned from one send: %+v", k, f)
			}
		}
	}
}

// TestHoleEmptiesQueues: a jump in the sequence (records lost) drops every
// call, so no proof spans the loss.
func TestHoleEmptiesQueues(t *testing.T) {
	s := New()
	add := func(seq uint64) {
		s.Add(&capture.Event{PID: 1, Field: &capture.HeaderField{Encoder: 1, Seq: seq}})
	}
	add(1)
	add(2)
	add(4)
	// 3 may still come: two threads number their records in one order
	// and reserve them in the other. Meanwhile nothing is answered.
	dir := s.Direction()
	dir.Begin(&capture.Event{PID: 1, Time: time.Unix(1, 0)}, []byte{0xbe})
	if _, _, ok := dir.Resolve(hpack.Query{Block: []byte{0xbe}, Start: 0, End: 1}); ok || s.Stats.Holes != 0 || s.Stats.Unmatched != 1 {
		t.Fatalf("in flight: stats %+v", s.Stats)
	}
	add(3)
	if s.Stats.Holes != 0 || s.Stats.Late != 1 || len(s.procs[1].encs[1].fields) != 4 || len(s.missing) != 0 {
		t.Fatalf("late record: stats %+v", s.Stats)
	}
	// 6 never comes: lost once maxLate later records have.
	add(5)
	for q := uint64(7); q <= 7+maxLate; q++ {
		add(q)
	}
	if s.Stats.Holes != 1 || len(s.procs[1].encs[1].fields) != 1 {
		t.Fatalf("lost record: stats %+v, queue %d", s.Stats, len(s.procs[1].encs[1].fields))
	}
	// A jump past what may be in flight is a loss at once.
	add(8 + maxLate + maxMissing + 1)
	if s.Stats.Holes != 2 {
		t.Fatalf("long jump: stats %+v", s.Stats)
	}
}

// TestBounded: a process making calls on connections that are never
// traced cannot grow the store without bound.
func TestBounded(t *testing.T) {
	s := New()
	big := string(make([]byte, 1000))
	now := time.Unix(1, 0)
	for i := 0; i < 200000; i++ {
		s.Add(&capture.Event{Time: now, PID: uint32(i % 300), Field: &capture.HeaderField{
			Encoder: uint64(i % 2000), Seq: uint64(i + 1), Name: "x", Value: big, NameLen: 1, ValueLen: len(big)}})
		if s.bytes > maxBytes+2000 {
			t.Fatalf("call %d: %d bytes held", i, s.bytes)
		}
	}
	held := 0
	for _, p := range s.procs {
		for _, e := range p.encs {
			for _, c := range e.fields {
				held += size(c.f)
			}
		}
	}
	if held != s.bytes {
		t.Fatalf("accounting: %d held, %d counted", held, s.bytes)
	}
}

// TestTwoConnectionsOneProcess: kubelet keeps a runtime and an image
// connection; both directions tie to their own encoder, interleaved, and
// every path is right.
func TestTwoConnectionsOneProcess(t *testing.T) {
	var seq uint64
	rt := newPeer(11, 0x1000, &seq)
	img := newPeer(11, 0x2000, &seq)
	rtPaths := methods[:3]
	imgPaths := []string{"/runtime.v1.ImageService/ImageFsInfo", "/runtime.v1.ImageService/ListImages"}
	for i := 0; i < 30; i++ {
		rt.encode(t, request(rtPaths[i%len(rtPaths)]), false)
		img.encode(t, request(imgPaths[i%len(imgPaths)]), false)
	}
	s := New()
	type side struct {
		p     *peer
		paths []string
		dir   *Direction
		dec   *hpack.Decoder
		sock  uint64
	}
	sides := []*side{{p: rt, paths: rtPaths, sock: 1}, {p: img, paths: imgPaths, sock: 2}}
	for _, sd := range sides {
		sd.dir = s.Direction()
		sd.dec = hpack.NewDecoder()
		sd.dec.SetResolver(sd.dir)
	}
	known := 0
	for i := 0; i < 100; i++ {
		for _, sd := range sides {
			want := request(sd.paths[(i*5)%len(sd.paths)])
			block, evs := sd.p.encode(t, want, true)
			for k := range evs {
				s.Add(&evs[k])
			}
			sd.dir.Begin(sd.p.sent(capture.Event{PID: 11, Sock: sd.sock, Offset: uint64(i)}), block)
			got, err := sd.dec.Decode(block)
			if err != nil {
				t.Fatal(err)
			}
			for k, f := range got {
				if f.NameKnown && f.Name != want[k].Name || f.ValueKnown && f.Value != want[k].Value {
					t.Fatalf("conn %d block %d field %d: %+v, want %+v", sd.sock, i, k, f, want[k])
				}
			}
			if got[2].Known() {
				known++
			}
		}
	}
	if s.Stats.Ties != 2 || known < 195 {
		t.Fatalf("%d of 200 paths known, stats %+v", known, s.Stats)
	}
}

// TestLargeBlocksStayTied: header blocks longer than the 1023 bytes the
// probe reads of them (large metadata) do not drop a tie, and fields past
// that point are still named on a tied direction.
func TestLargeBlocksStayTied(t *testing.T) {
	var seq uint64
	p := newPeer(3, 0x3, &seq)
	big := func(path string, i int) []xhpack.HeaderField {
		return append(request(path), xhpack.HeaderField{Name: "x-big", Value: fmt.Sprintf("%04d", i) + string(bytes.Repeat([]byte("b"), 1500))},
			xhpack.HeaderField{Name: "x-after", Value: "tail"})
	}
	for i := 0; i < 10; i++ {
		p.encode(t, big(methods[i%len(methods)], i), false)
	}
	s := New()
	dir := s.Direction()
	dec := hpack.NewDecoder()
	dec.SetResolver(dir)
	for i := 0; i < 40; i++ {
		want := big(methods[i%len(methods)], i)
		block, evs := p.encode(t, want, true)
		for k := range evs {
			s.Add(&evs[k])
		}
		dir.Begin(p.sent(capture.Event{PID: 3, Sock: 1, Offset: uint64(i)}), block)
		got, err := dec.Decode(block)
		if err != nil {
			t.Fatal(err)
		}
		for k, f := range got {
			if f.NameKnown && f.Name != want[k].Name || f.ValueKnown && f.Value != want[k].Value {
				t.Fatalf("block %d field %d: %+v, want %+v", i, k, f, want[k])
			}
			if i >= 2 && !f.Known() {
				t.Fatalf("block %d field %d (%s) unknown, stats %+v", i, k, want[k].Name, s.Stats)
			}
		}
	}
	if s.Stats.Ties != 1 || s.Stats.Misaligned != 0 {
		t.Fatalf("stats %+v", s.Stats)
	}
}

// TestTieOwnRun: a containerd-like server answers with a headers block and a
// trailers block in one send, byte-identical from call to call, so earlier
// calls' runs prove a later block's bytes too. The tie must take the block's
// own run (the window since the direction's previous send), not an older
// identical one: a tie one block behind holds while the blocks repeat and
// loses itself at the first NotFound, whose grpc-status entry dates from
// before the attach and is named only by its own call.
func TestTieOwnRun(t *testing.T) {
	var seq uint64
	p := newPeer(6, 0x6, &seq)
	headers := []xhpack.HeaderField{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"}}
	ok := []xhpack.HeaderField{{Name: "grpc-status", Value: "0"}, {Name: "grpc-message", Value: ""}}
	notFound := func(i int) []xhpack.HeaderField {
		return []xhpack.HeaderField{{Name: "grpc-status", Value: "5"}, {Name: "grpc-message", Value: fmt.Sprintf("container %d: not found", i)}}
	}
	// Before the attach: answers, one NotFound among them, so grpc-status
	// 5 is an old entry, then enough answers that it is not the newest.
	for i := 0; i < 10; i++ {
		p.encode(t, headers, false)
		if i == 3 {
			p.encode(t, notFound(i), false)
		} else {
			p.encode(t, ok, false)
		}
	}
	s := New()
	dir := s.Direction()
	dec := hpack.NewDecoder()
	dec.SetResolver(dir)
	for i := 0; i < 12; i++ {
		trailers := ok
		if i == 8 {
			trailers = notFound(i)
		}
		var blocks [][]byte
		var wants [][]xhpack.HeaderField
		for _, want := range [][]xhpack.HeaderField{headers, trailers} {
			block, evs := p.encode(t, want, true)
			for k := range evs {
				s.Add(&evs[k])
			}
			blocks, wants = append(blocks, block), append(wants, want)
		}
		send := p.sent(capture.Event{PID: 6, Sock: 3, Offset: uint64(i)})
		for b, block := range blocks {
			dir.Begin(send, block)
			got, err := dec.Decode(block)
			if err != nil {
				t.Fatal(err)
			}
			for k, f := range got {
				want := wants[b][k]
				if f.NameKnown && f.Name != want.Name || f.ValueKnown && f.Value != want.Value {
					t.Fatalf("send %d block %d field %d: %+v, want %+v", i, b, k, f, want)
				}
				if i >= 2 && !f.Known() {
					t.Fatalf("send %d block %d field %d (%s) unknown (stats %+v)", i, b, k, want.Name, s.Stats)
				}
			}
		}
	}
	if s.Stats.Misaligned != 0 {
		t.Fatalf("stats %+v", s.Stats)
	}
}
