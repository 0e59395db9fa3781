package hpack

import (
	"errors"
	"fmt"
)

// Pinning names entries from before the attach with what the encoding peer
// itself was given (internal/peerfields reads it from the peer's
// hpack.Encoder.WriteField calls). A pinned entry is known from then on,
// exactly like one whose insertion was seen, so a connection joined in its
// middle decodes fully again once the few entries it refers to are pinned.
//
// Pre-attach entries are identified by their age: 0 is the entry inserted
// last before the attach, 1 the one before it, and so on. An entry's age
// never changes (entries are only ever added in front and evicted from the
// back), so it is the entry's absolute identity, whatever is inserted later.

// maxPins bounds the pins of one decoder whatever table size the peer
// announces; a 4096-byte table holds at most 128 entries.
const maxPins = 4096

// pin is the content of one pre-attach entry, as named by the peer.
type pin struct {
	name, value string
	valueKnown  bool // false: only the name is known (from a literal that took it)
}

// Query is one field a Resolver is asked about: the field whose
// representation is Block[Start:End] refers to a table entry whose name or
// value this decoder does not know. Start includes a dynamic table size
// update written just before the field, as encoders write them together.
type Query struct {
	Block      []byte
	Start, End int
	// Inserted is how many entries this decoder saw inserted before the
	// field, since it was created or Reset: a resolver that knows how many
	// entries the encoder had inserted at that field can check that the
	// two counts differ by the same amount on every field of a direction.
	Inserted uint64
}

// A Resolver names the field of a Query as the encoder was given it:
// name, value, and ok when it can prove that this field is the one the
// encoder produced. It is called during Decode and must not call the
// decoder back.
type Resolver interface {
	Resolve(q Query) (name, value string, ok bool)
}

// SetResolver makes Decode ask r about every field that refers to an entry
// it does not fully know, and pin that entry with the answer. An answer
// that contradicts what the decoder knows is refused (and counted by
// Conflicts). nil turns it off.
func (d *Decoder) SetResolver(r Resolver) { d.resolver = r }

// Conflicts counts answers of the Resolver and pins that were refused
// because they contradict what the decoder knows.
func (d *Decoder) Conflicts() uint64 { return d.conflicts }

// Pinned is the number of pre-attach entries pinned since NewDecoder or
// Reset.
func (d *Decoder) Pinned() int { return len(d.pins) }

var (
	errPinSynced   = errors.New("hpack: table fully known, no entry from before the attach remains")
	errPinRange    = errors.New("hpack: no entry from before the attach can be that old")
	errPinConflict = errors.New("hpack: pin contradicts the entry's known content")
	errPinTooMany  = errors.New("hpack: too many pinned entries")
)

// PinBeforeAttach names the age-th newest entry inserted before the attach
// (see above). It is refused when the table is fully known, when no entry
// that old can be in the table, when it contradicts an earlier pin, and
// when the entry with that content could not fit in the table beside the
// entries known to be newer.
func (d *Decoder) PinBeforeAttach(age uint32, name, value string) error {
	return d.pin(age, pin{name: name, value: value, valueKnown: true})
}

// PinName names only the name of a pre-attach entry: a literal took its
// name, and the peer said which.
func (d *Decoder) PinName(age uint32, name string) error {
	return d.pin(age, pin{name: name})
}

func (d *Decoder) pin(age uint32, p pin) error {
	if d.complete {
		return errPinSynced
	}
	if p.name == "" {
		return fmt.Errorf("%w: empty name", errPinConflict)
	}
	if uint64(age) >= uint64(d.maxSize/entryOverhead) {
		return errPinRange
	}
	old, had := d.pins[age]
	if had {
		if old.name != p.name || old.valueKnown && p.valueKnown && old.value != p.value {
			return errPinConflict
		}
		if old.valueKnown {
			return nil // nothing new
		}
	} else if len(d.pins) >= maxPins {
		return errPinTooMany
	}
	// The entry and every entry newer than it are in the table together:
	// at their lower-bound sizes they must fit under M.
	need := d.size + pinSize(p)
	for a := uint32(0); a < age; a++ {
		if q, ok := d.pins[a]; ok {
			need += pinSize(q)
		} else {
			need += entryOverhead + 1
		}
	}
	if need > uint64(d.maxSize) {
		return errPinRange
	}
	if d.pins == nil {
		d.pins = map[uint32]pin{}
	}
	d.changed()
	d.pins[age] = p
	d.peerUsed = true
	// Recorded entries that took this entry's name learn it now.
	for i := 0; i < d.n; i++ {
		if e := d.at(i); !e.nameKnown && e.nameAge == age+1 {
			d.nameEntry(e, p.name)
		}
	}
	d.evict()
	return nil
}

func pinSize(p pin) uint64 {
	if p.valueKnown {
		return uint64(len(p.name)+len(p.value)) + entryOverhead
	}
	return uint64(len(p.name)) + entryOverhead
}

// Epoch identifies the decoder's frame of reference for Field.Age: it
// changes when the table starts over (Reset, or a lying peer's answers
// thrown away), after which an older field's Age means nothing.
func (d *Decoder) Epoch() uint64 { return d.epoch }

// Fill completes a field decoded earlier in this Epoch with what was pinned
// since (ages never change, so the pin names the very entry the field
// referred to), and reports whether the field is now Known.
func (d *Decoder) Fill(f *Field) bool {
	if f.Known() || f.Age == 0 {
		return f.Known()
	}
	p, ok := d.pins[f.Age-1]
	if !ok || f.NameKnown && f.Name != p.name {
		return false
	}
	if !f.NameKnown {
		f.Name, f.NameKnown, f.Peer = p.name, true, true
	}
	if !f.ValueKnown && p.valueKnown {
		f.Value, f.ValueKnown, f.Peer = p.value, true, true
	}
	return f.Known()
}

// nameEntry gives a recorded entry its name; its size becomes exact, so the
// caller must call evict.
func (d *Decoder) nameEntry(e *entry, name string) {
	d.changed()
	d.peerUsed = true
	d.size -= e.size
	e.name, e.nameKnown, e.nameAge, e.peer = name, true, 0, true
	e.size = uint64(len(e.name)+len(e.value)) + entryOverhead
	d.size += e.size
}

// resolveIndexed asks the resolver about an indexed field whose entry is
// not fully known, and pins it with the answer.
func (d *Decoder) resolveIndexed(idx uint64, e entry, found bool, start, end int) (entry, bool) {
	if d.resolver == nil {
		return e, found
	}
	name, value, ok := d.resolver.Resolve(Query{Block: d.block, Start: start, End: end, Inserted: d.inserted})
	if !ok {
		return e, found
	}
	if e.nameKnown && e.name != name || found && e.value != value || name == "" {
		d.conflicts++
		return e, found
	}
	i := idx - firstDynamic
	if i < uint64(d.n) {
		// A recorded entry whose name came from a pre-attach entry.
		r := d.at(int(i))
		if r.nameAge > 0 {
			// Harmless when refused: the entry itself is named below.
			_ = d.PinName(r.nameAge-1, name)
		}
		if !r.nameKnown {
			d.nameEntry(r, name)
		}
		e = *r
		d.evict()
		return e, true
	}
	if err := d.PinBeforeAttach(uint32(i-uint64(d.n)), name, value); err != nil {
		d.conflicts++
		return e, found
	}
	return entry{name: name, value: value, nameKnown: true, peer: true}, true
}

// resolveName asks the resolver about a literal whose name is taken from an
// entry whose name is not known, and pins that name.
func (d *Decoder) resolveName(nameIdx uint64, value string, start, end int) (string, bool) {
	if d.resolver == nil {
		return "", false
	}
	name, v, ok := d.resolver.Resolve(Query{Block: d.block, Start: start, End: end, Inserted: d.inserted})
	if !ok {
		return "", false
	}
	if v != value || name == "" {
		d.conflicts++
		return "", false
	}
	i := nameIdx - firstDynamic
	if i < uint64(d.n) {
		r := d.at(int(i))
		if r.nameAge > 0 {
			_ = d.PinName(r.nameAge-1, name)
		}
		if !r.nameKnown {
			d.nameEntry(r, name)
			d.evict()
		} else if r.name != name {
			d.conflicts++
			return "", false
		}
		return name, true
	}
	if err := d.PinName(uint32(i-uint64(d.n)), name); err != nil {
		d.conflicts++
		return "", false
	}
	return name, true
}
