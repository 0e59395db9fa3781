package hpack

import (
	"errors"
	"math"
	"strconv"

	xhpack "golang.org/x/net/http2/hpack"
)

const (
	// staticLen is the number of static table entries; dynamic indices
	// start right after it.
	staticLen    = 61
	firstDynamic = staticLen + 1

	// defaultTableSize is HTTP/2's initial SETTINGS_HEADER_TABLE_SIZE.
	defaultTableSize = 4096

	// entryOverhead is the per-entry cost RFC 7541 section 4.1 adds to
	// the name and value lengths.
	entryOverhead = 32

	// maxStringLen bounds what one malformed or hostile length prefix can
	// make us allocate.
	maxStringLen = 1 << 20

	// scratchKeep bounds the field buffer kept between calls, so one huge
	// block does not pin its memory for the life of the connection.
	scratchKeep = 256
)

var (
	errTruncatedInt       = errors.New("hpack: truncated integer")
	errTruncatedString    = errors.New("hpack: truncated string")
	errIntTooLarge        = errors.New("hpack: integer too large")
	errStringTooLong      = errors.New("hpack: string longer than 1 MiB")
	errHuffman            = errors.New("hpack: invalid huffman-encoded string")
	errIndexZero          = errors.New("hpack: index 0 is not a valid table index")
	errIndexRange         = errors.New("hpack: table index out of range")
	errSizeUpdateTooLarge = errors.New("hpack: dynamic table size update above the allowed maximum")
	errSizeUpdatePosition = errors.New("hpack: dynamic table size update after a header field")

	// ErrListTooLarge is returned for a block whose decoded header list
	// is over the limit set with SetMaxListSize. Unlike the other errors
	// it leaves the table exact: the whole block was decoded for its
	// table changes, only its fields were dropped.
	ErrListTooLarge = errors.New("hpack: header list over the size limit")
)

// indexError keeps the offending index for the log while still matching
// errIndexRange with errors.Is.
type indexError uint64

func (e indexError) Error() string {
	return "hpack: table index " + strconv.FormatUint(uint64(e), 10) + " out of range"
}

func (e indexError) Is(target error) bool { return target == errIndexRange }

// Field is one decoded header field.
type Field struct {
	Name, Value string
	NameKnown   bool // false when the name came from an unresolved table index
	ValueKnown  bool // false when the value came from an unresolved table index
	Sensitive   bool // literal never-indexed
	// Peer: the name or value came from an entry pinned with what the
	// sending process itself encoded (see Pin and Resolver), not from
	// bytes this decoder saw.
	Peer bool
	// Age, for a field not Known, is 1 + the age of the entry from before
	// the attach that would complete it (0: none), so that a pin made
	// later can complete it still (Decoder.Fill).
	Age uint32
	// Entry names the dynamic table entry the field took its name (a
	// literal) or its name and value (an indexed field) from; 0 for the
	// static table and for a literal name. Entries are numbered in the
	// order the encoder inserted them: 1, 2, ... since NewDecoder or Reset,
	// and -1, -2, ... before the attach, newest first (an entry's number
	// never changes). So two fields with the same Entry and Value carry
	// the same content even when it is unknown: what internal/grpcdecode's
	// labelled inference rests on. Comparable only between blocks of one
	// Decoder since its last Reset.
	Entry int64
}

// Known reports whether both name and value were decoded.
func (f Field) Known() bool { return f.NameKnown && f.ValueKnown }

// entry is one dynamic table entry recorded since the attach.
type entry struct {
	name, value string
	nameKnown   bool
	// nameAge+1 is the pre-attach entry the name was taken from while it
	// was unknown (0: none), so that a later pin of that entry names this
	// one too.
	nameAge uint32
	// peer: some of the content came from a pin.
	peer bool
	// size is exact when nameKnown, otherwise a lower bound: eviction
	// decisions made with it can only keep too much, never drop too much.
	size uint64
}

// Decoder decodes the header blocks of one direction of one connection.
// It is not safe for concurrent use.
type Decoder struct {
	// ring holds the recorded entries, newest at ring[head]; its length
	// is a power of two so positions wrap with a mask.
	ring []entry
	head int
	n    int
	size uint64 // sum of the entries' sizes (lower bounds)

	maxSize  uint32 // M: upper bound on the encoder's table size limit
	allowed  uint32 // largest size update the peer's settings permit
	complete bool   // no entry from before the attach can remain

	unresolved uint64
	scratch    []Field

	// inserted counts insertions since NewDecoder or Reset, evicted or not.
	inserted uint64
	// epoch changes whenever ages start over (Reset, forget): a Field's
	// Age means something only in the epoch it was decoded in.
	epoch uint64
	// pins are pre-attach entries named by the peer, by age (pin.go).
	pins      map[uint32]pin
	resolver  Resolver
	conflicts uint64
	// peerUsed: a pin or a peer-named entry has shaped the table since
	// NewDecoder or Reset (see lookup).
	peerUsed bool
	block    []byte // the block being decoded, for the resolver
	// maxList bounds a block's decoded header list (0: no limit), counted
	// as SETTINGS_MAX_HEADER_LIST_SIZE counts it; tableCap bounds the
	// table size any setting or update may allow (0: no cap).
	maxList  uint64
	tableCap uint32

	// version moves whenever what a block decodes to may change (repeat.go);
	// decoded counts blocks decoded; repeats remembers recent blocks.
	version uint64
	decoded uint64
	repeats *repeats
}

// NewDecoder returns a decoder for a connection joined mid-stream: the table
// size limit is taken to be the protocol default of 4096 and the table
// contents are unknown.
func NewDecoder() *Decoder {
	return &Decoder{maxSize: defaultTableSize, allowed: defaultTableSize}
}

// Reset prepares d for a new connection, whose preface has just been seen:
// the table is empty and therefore fully known, and the size limit is the
// protocol default. The unresolved count restarts too, since it is reported
// per connection.
func (d *Decoder) Reset() {
	d.changed()
	d.clearTable()
	if len(d.ring) > scratchKeep {
		d.ring = nil
	}
	d.maxSize = defaultTableSize
	d.allowed = defaultTableSize
	d.complete = true
	d.unresolved = 0
	d.inserted = 0
	clear(d.pins)
	d.peerUsed = false
}

// SetMaxTableSize records the SETTINGS_HEADER_TABLE_SIZE the decoding peer
// advertised. Call it when the encoding peer acknowledges that SETTINGS frame
// (its ACK in the same byte stream as the header blocks), so that blocks
// encoded under the old value have all been decoded.
//
// It bounds later in-band size updates. It raises M when n is larger, which
// is only cautious (a compliant encoder must signal the change in-band), but
// never lowers it: an encoder that shrinks its table must say so in-band at
// the start of its next block, and lowering M early could drop entries that
// blocks still in flight refer to.
func (d *Decoder) SetMaxTableSize(n uint32) {
	d.changed()
	if d.tableCap > 0 {
		n = min(n, d.tableCap)
	}
	d.allowed = n
	if n > d.maxSize {
		d.maxSize = n
	}
}

// SetLimits bounds what one block may decode to (its header list, counted
// as SETTINGS_MAX_HEADER_LIST_SIZE counts: name + value + 32 per field)
// and the table size any setting or in-band update may allow: a hostile
// peer could otherwise expand a block of 1-byte indexed fields 40-fold
// into memory, or advertise a 4 GiB table. A block over maxList returns
// ErrListTooLarge with the table kept exact; an update over tableCap is
// an error like any update above the allowed maximum. 0 means no limit.
func (d *Decoder) SetLimits(maxList uint64, tableCap uint32) {
	d.changed()
	d.maxList, d.tableCap = maxList, tableCap
	if tableCap > 0 {
		d.allowed = min(d.allowed, tableCap)
		d.maxSize = min(d.maxSize, max(tableCap, defaultTableSize))
	}
}

// Synced reports whether the table is fully known: no entry from before the
// attach can remain, so every index either resolves or is a protocol error.
// Entries whose name was inherited from a pre-attach entry may still be held;
// references to them keep reporting NameKnown false.
func (d *Decoder) Synced() bool { return d.complete }

// Unresolved returns the number of fields decoded with an unknown name or
// value since NewDecoder or the last Reset.
func (d *Decoder) Unresolved() uint64 { return d.unresolved }

// TableLen returns the number of dynamic table entries recorded since the
// attach and not yet known to be evicted, including entries of unknown name.
func (d *Decoder) TableLen() int { return d.n }

// Decode decodes one complete header block (the HEADERS or PUSH_PROMISE
// fragment joined with its CONTINUATION fragments). Unresolvable references
// produce fields with NameKnown or ValueKnown false. It returns an error only
// for a malformed block; the table is then in an undefined state and d must
// be discarded or Reset (see the package documentation). The returned slice
// is the decoder's, valid until the next Decode (a caller that keeps fields
// longer copies them); its strings do not alias block and stay valid. A
// slice per block was a sixth of what the tracer allocated per call.
func (d *Decoder) Decode(block []byte) ([]Field, error) {
	// Drop the last block's string references first, so the buffer does
	// not keep header values alive for longer than a block.
	clear(d.scratch)
	if cap(d.scratch) > scratchKeep {
		d.scratch = nil // one huge block must not pin its size
	}
	if fields, ok := d.repeated(block); ok {
		d.scratch = fields
		return fields, nil
	}
	before := d.version
	fields, err := d.decode(d.scratch[:0], block)
	d.scratch = fields
	if err != nil {
		clear(fields)
		d.scratch = fields[:0]
		return nil, err
	}
	if len(fields) == 0 {
		return nil, nil
	}
	d.remember(block, before, fields)
	return fields, nil
}

func (d *Decoder) decode(fields []Field, p []byte) ([]Field, error) {
	var err error
	d.block = p
	defer func() { d.block = nil }()
	// start is where the current field's representation begins, counting
	// a dynamic table size update before it as part of it, as the
	// encoder writes them together.
	start := 0
	var list uint64
	over := false
	for len(p) > 0 {
		if !over && d.maxList > 0 && len(fields) > 0 {
			// Account for the field appended last; past the limit, keep
			// decoding for the table's sake but hold no more fields.
			f := &fields[len(fields)-1]
			list += uint64(len(f.Name)+len(f.Value)) + entryOverhead
			over = list > d.maxList
		}
		if over {
			clear(fields)
			fields = fields[:0]
		}
		b := p[0]
		switch {
		case b&0x80 != 0: // indexed field, RFC 7541 section 6.1
			var idx uint64
			if idx, p, err = readInt(p, 7); err != nil {
				return fields, err
			}
			var e entry
			var found bool
			if e, found, err = d.lookup(idx); err != nil {
				return fields, err
			}
			if !found || !e.nameKnown {
				e, found = d.resolveIndexed(idx, e, found, start, len(d.block)-len(p))
			}
			f := Field{Name: e.name, Value: e.value, NameKnown: found && e.nameKnown, ValueKnown: found, Peer: e.peer, Entry: d.entryID(idx)}
			if !f.Known() {
				d.unresolved++
				f.Age = e.nameAge
			}
			fields = append(fields, f)
			start = len(d.block) - len(p)
		case b&0xc0 == 0x40: // literal with incremental indexing, section 6.2.1
			if fields, p, err = d.literal(fields, p, 6, true, false, start); err != nil {
				return fields, err
			}
			start = len(d.block) - len(p)
		case b&0xe0 == 0x20: // dynamic table size update, section 6.3
			// Section 4.2 allows updates only at the start of a block.
			if len(fields) > 0 || over {
				return fields, errSizeUpdatePosition
			}
			if p, err = d.sizeUpdate(p); err != nil {
				return fields, err
			}
		default: // literal without indexing (0000) or never indexed (0001), sections 6.2.2-3
			if fields, p, err = d.literal(fields, p, 4, false, b&0x10 != 0, start); err != nil {
				return fields, err
			}
			start = len(d.block) - len(p)
		}
	}
	if d.maxList > 0 && len(fields) > 0 && !over {
		f := &fields[len(fields)-1]
		over = list+uint64(len(f.Name)+len(f.Value))+entryOverhead > d.maxList
	}
	if over {
		clear(fields)
		return fields[:0], ErrListTooLarge
	}
	return fields, nil
}

// literal decodes a literal field representation whose name index has the
// given prefix width, inserting it into the table when index is set.
func (d *Decoder) literal(fields []Field, p []byte, prefix uint8, index, sensitive bool, start int) ([]Field, []byte, error) {
	nameIdx, p, err := readInt(p, prefix)
	if err != nil {
		return fields, p, err
	}
	ref := d.entryID(nameIdx) // before this literal's own insertion
	var name string
	nameKnown, peer := true, false
	var nameAge uint32
	if nameIdx == 0 {
		if name, p, err = readString(p); err != nil {
			return fields, p, err
		}
	} else {
		e, _, err := d.lookup(nameIdx)
		if err != nil {
			return fields, p, err
		}
		name, nameKnown, nameAge, peer = e.name, e.nameKnown, e.nameAge, e.peer
	}
	value, p, err := readString(p)
	if err != nil {
		return fields, p, err
	}
	if !nameKnown {
		if n, ok := d.resolveName(nameIdx, value, start, len(d.block)-len(p)); ok {
			name, nameKnown, nameAge, peer = n, true, 0, true
		}
	}
	if index {
		// Insert even when the name is unknown: skipping it would shift
		// every later index by one (see the package documentation).
		size := uint64(len(value)) + entryOverhead
		if nameKnown {
			size += uint64(len(name))
		} else {
			size++
		}
		d.insert(entry{name: name, value: value, nameKnown: nameKnown, nameAge: nameAge, peer: peer, size: size})
	}
	f := Field{Name: name, Value: value, NameKnown: nameKnown, ValueKnown: true, Sensitive: sensitive, Peer: peer, Entry: ref}
	if !nameKnown {
		d.unresolved++
		f.Age = nameAge
	}
	fields = append(fields, f)
	return fields, p, nil
}

// entryID numbers the entry at a table index as Field.Entry says. The
// idx-62'th newest entry of the encoder's table is its (inserted-1-i)'th
// insertion counted from the attach: eviction only removes from the other
// end, so this holds whatever the decoder has recorded or dropped.
func (d *Decoder) entryID(idx uint64) int64 {
	if idx < firstDynamic {
		return 0
	}
	abs := int64(d.inserted) - 1 - int64(idx-firstDynamic)
	if abs >= 0 {
		return abs + 1
	}
	return abs
}

// lookup resolves a table index. found is false for a reference to an entry
// from before the attach that is not pinned with its value; e.nameKnown
// says whether its name is known all the same.
func (d *Decoder) lookup(idx uint64) (e entry, found bool, err error) {
	switch {
	case idx == 0:
		return e, false, errIndexZero
	case idx <= staticLen:
		s := &staticTable[idx-1]
		return entry{name: s.name, value: s.value, nameKnown: true}, true, nil
	}
	i := idx - firstDynamic
	if i < uint64(d.n) {
		e = *d.at(int(i))
		if !e.nameKnown && e.nameAge > 0 {
			if p, ok := d.pins[e.nameAge-1]; ok {
				e.name, e.nameKnown, e.peer = p.name, true, true
			}
		}
		return e, true, nil
	}
	if i >= uint64(d.maxSize/entryOverhead) {
		return e, false, indexError(idx)
	}
	if d.complete {
		if !d.peerUsed {
			return e, false, indexError(idx)
		}
		// Only a peer's answer can have made this table look complete
		// while the encoder still has the entry: names and pins change
		// sizes, and so evictions. An honest peer never gets here (FuzzPin);
		// a lying one (a probed process is as hostile as any) must not
		// break decoding: its answers are refused from now on by starting
		// over as if just attached, and this reference is unknown.
		d.conflicts++
		d.forget()
		return d.lookup(idx)
	}
	age := uint32(i - uint64(d.n))
	if p, ok := d.pins[age]; ok {
		// nameAge only for Field.Age: the value may be pinned later.
		return entry{name: p.name, value: p.value, nameKnown: true, peer: true, nameAge: age + 1}, p.valueKnown, nil
	}
	// Remembered by entries that take this name, for a later pin.
	return entry{nameAge: age + 1}, false, nil
}

func (d *Decoder) sizeUpdate(p []byte) ([]byte, error) {
	v, p, err := readInt(p, 5)
	if err != nil {
		return p, err
	}
	if v > uint64(d.allowed) {
		return p, errSizeUpdateTooLarge
	}
	// An in-band update is the encoder's actual limit, so M may shrink here.
	d.changed()
	d.maxSize = uint32(v)
	d.evict()
	return p, nil
}

// at returns the i-th newest recorded entry; i must be below d.n.
func (d *Decoder) at(i int) *entry {
	return &d.ring[(d.head+i)&(len(d.ring)-1)]
}

func (d *Decoder) insert(e entry) {
	d.changed()
	if d.n == len(d.ring) {
		d.grow()
	}
	d.head = (d.head - 1) & (len(d.ring) - 1)
	d.ring[d.head] = e
	d.n++
	d.inserted++
	d.size += e.size
	d.evict()
}

func (d *Decoder) grow() {
	c := 2 * len(d.ring)
	if c == 0 {
		c = 16
	}
	r := make([]entry, c)
	for i := 0; i < d.n; i++ {
		r[i] = *d.at(i)
	}
	d.ring, d.head = r, 0
}

// evict drops the entries that are certainly gone under the limit M and
// notes when no pre-attach entry can remain.
func (d *Decoder) evict() {
	d.changed()
	limit := uint64(d.maxSize)
	// Any pre-attach entry is older than all recorded ones and needs at
	// least 32 bytes: if they leave less room than that, either they all
	// survive and nothing older fits, or some were evicted and everything
	// older went first. This also covers a size update to 0 and an entry
	// larger than the whole table, which both empty it.
	if d.size+entryOverhead > limit {
		d.complete = true
	}
	for d.size > limit && d.n > 0 {
		e := d.at(d.n - 1)
		d.size -= e.size
		*e = entry{}
		d.n--
	}
}

// forget drops everything known about the table, pins included, as if the
// decoder had just attached; the insertion count goes on.
func (d *Decoder) forget() {
	d.clearTable()
	clear(d.pins)
	d.complete = false
	d.peerUsed = false
}

func (d *Decoder) clearTable() {
	d.changed()
	d.epoch++
	for i := 0; i < d.n; i++ {
		*d.at(i) = entry{}
	}
	d.n, d.head, d.size = 0, 0, 0
}

// readInt reads an integer with an n-bit prefix (RFC 7541 section 5.1).
// Values above 2^32-1 are rejected: no HPACK quantity (index, string length,
// table size) can legitimately exceed that.
func readInt(p []byte, n uint8) (uint64, []byte, error) {
	if len(p) == 0 {
		return 0, p, errTruncatedInt
	}
	mask := byte(1)<<n - 1
	v := uint64(p[0] & mask)
	if v < uint64(mask) {
		return v, p[1:], nil
	}
	var shift uint
	for i := 1; i < len(p); i++ {
		b := p[i]
		v += uint64(b&0x7f) << shift
		if b&0x80 == 0 {
			if v > math.MaxUint32 {
				return 0, p, errIntTooLarge
			}
			return v, p[i+1:], nil
		}
		// Overlong zero padding is legal but pointless; stop where the
		// stock decoder does, long before the shift could overflow.
		shift += 7
		if shift >= 63 {
			return 0, p, errIntTooLarge
		}
	}
	return 0, p, errTruncatedInt
}

// readString reads a string literal (RFC 7541 section 5.2) and copies it, so
// the result never aliases the caller's buffer.
func readString(p []byte) (string, []byte, error) {
	if len(p) == 0 {
		return "", p, errTruncatedString
	}
	huffman := p[0]&0x80 != 0
	n, p, err := readInt(p, 7)
	if err != nil {
		return "", p, err
	}
	if n > maxStringLen {
		return "", p, errStringTooLong
	}
	if uint64(len(p)) < n {
		return "", p, errTruncatedString
	}
	raw, p := p[:n], p[n:]
	if !huffman {
		return string(raw), p, nil
	}
	s, err := xhpack.HuffmanDecodeToString(raw)
	if err != nil {
		return "", p, errHuffman
	}
	if len(s) > maxStringLen {
		return "", p, errStringTooLong
	}
	return s, p, nil
}
