package hpack

import "bytes"

// Repeated blocks. A gRPC connection sends the same few header blocks
// over and over: the response's HEADERS and trailers of a successful
// call are byte for byte the same on every call once their fields are in
// the table, and so are the requests of a client that sends no changing
// header. In the steady benchmark's recording 95 % of the blocks repeat
// one of a direction's last few; decoding them (string copies, Huffman,
// table lookups) was an eighth of the whole pipeline's CPU per call
// (docs/performance.md, "Repeated header blocks").
//
// A block is taken from the cache only when decoding it again could not
// give anything else: its earlier decode changed nothing in the decoder
// (no insertion, eviction, size update, pin or name learnt: version did
// not move) and nothing has changed since (the same version now), every
// field came out Known from entries this decoder saw inserted (none from
// a pin or a Resolver, whose answers are what changes the version), and
// the block decoded without error under the same limits (SetLimits and
// SetMaxTableSize move the version too). Decoding is then a function of
// the block's bytes and the unchanged table, and its result is the
// remembered one. The bytes are compared in full, never by a hash: a
// hostile peer must not be able to make one block read as another.

const (
	// repeatEntries: a response's HEADERS and trailers, a request's
	// HEADERS, and one more (a second method, an error's trailers).
	repeatEntries = 4
	// repeatMaxBlock and repeatMaxFields bound what one entry holds;
	// repeated blocks are small (a few indexed fields), larger ones are
	// decoded every time.
	repeatMaxBlock  = 256
	repeatMaxFields = 16
	// repeatAfter blocks are decoded before a direction keeps any: a
	// connection that makes a call or two (crictl, ctr) never pays the
	// memory, one that makes thousands (kubelet) does, once.
	repeatAfter = 8
)

type repeatEntry struct {
	block   []byte
	version uint64
	fields  []Field
}

// repeats is a direction's cache of decoded blocks, nil until repeatAfter
// blocks were decoded.
type repeats struct {
	entries [repeatEntries]repeatEntry
	next    int // entry replaced next
	// last: the last Decode's fields came from the cache.
	last bool
}

// Repeated reports whether the last Decode gave the remembered fields of a
// block this decoder decoded before. A caller that discards a decoder
// whenever it refuses a block's fields (internal/h2 does: a false frame
// boundary) need not check them again.
func (d *Decoder) Repeated() bool { return d.repeats != nil && d.repeats.last }

// changed notes that what a block decodes to may have changed.
func (d *Decoder) changed() { d.version++ }

// repeated returns the remembered fields of block, copied into the
// decoder's field buffer, or ok false.
func (d *Decoder) repeated(block []byte) (fields []Field, ok bool) {
	if d.repeats == nil {
		return nil, false
	}
	d.repeats.last = false
	if len(block) > repeatMaxBlock {
		return nil, false
	}
	for i := range d.repeats.entries {
		e := &d.repeats.entries[i]
		if e.version == d.version && e.fields != nil && bytes.Equal(e.block, block) {
			d.repeats.last = true
			return append(d.scratch[:0], e.fields...), true
		}
	}
	return nil, false
}

// remember keeps fields as what block decodes to, when the decode that
// gave them (begun at version before) allows it (see above).
func (d *Decoder) remember(block []byte, before uint64, fields []Field) {
	d.decoded++
	if d.decoded < repeatAfter || d.version != before || len(fields) == 0 ||
		len(block) > repeatMaxBlock || len(fields) > repeatMaxFields {
		return
	}
	for _, f := range fields {
		if !f.Known() || f.Peer {
			return
		}
	}
	if d.repeats == nil {
		d.repeats = &repeats{}
	}
	e := &d.repeats.entries[d.repeats.next]
	d.repeats.next = (d.repeats.next + 1) % repeatEntries
	e.block = append(e.block[:0], block...)
	e.fields = append(e.fields[:0], fields...)
	e.version = d.version
}
