package protoreg

import (
	"bytes"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// messageCache keeps decoded messages by type and exact bytes. kubelet
// asks the same questions every few seconds and mostly gets the same
// answers; identical bytes decode to an identical message, so it is
// decoded once and the same (immutable from here on) message is shared,
// which also lets the output cache what it rendered for it.
//
// "Identical bytes" is too strict for messages with map fields: Go's
// protobuf encoders (containerd 2.x, grpc-go) write a map in Go's random
// iteration order, so the same ListContainers answer comes in a different
// byte order nearly every time. A message with maps that misses is
// therefore also looked up by its bytes with every map's entries in one
// order (canonicalMaps, from the bytes alone, before any unmarshal), and
// its bytes as sent are kept as an alias of the message found there:
// equal canonical forms are equal messages, so the same message (and its
// rendering, and what pods learnt from it) is shared.
//
// Consumers must treat a Record's Message as read-only: redaction works on
// a copy (pipeline.redacted), so a shared message is never changed.
type messageCache struct {
	mu sync.Mutex
	// by type, then by payload: m[string(b)] looks up without allocating.
	entries map[protoreflect.FullName]map[string]proto.Message
	n       int
	bytes   int
}

const (
	cacheMaxEntries = 4096
	cacheMaxBytes   = 16 << 20
	// What an entry costs, in multiples of its payload (measured on CRI
	// ListContainers responses: key, decoded message, rendered JSON).
	cacheEntryFactor = 4
	// A message's bytes in another map order are kept up to this size.
	aliasMaxMessage = 4 << 10
)

// SharedMaxMessage is the largest message (payload bytes) decoded once and
// shared: larger ones are decoded every time, being rarely repeated and
// crowding out the small ones that are. A cache keyed by the decoded
// message (a rendering, a redacted copy) can therefore only ever find
// messages up to this size again; keeping a larger one would only keep
// it alive.
const SharedMaxMessage = 256 << 10

// Shared says whether a message of size payload bytes is decoded once and
// shared (see SharedMaxMessage): the one rule for every cache keyed by a
// decoded message.
func Shared(size int) bool { return size <= SharedMaxMessage }

var messages = &messageCache{entries: map[protoreflect.FullName]map[string]proto.Message{}}

func (c *messageCache) decode(mt protoreflect.MessageType, payload []byte) (proto.Message, error) {
	if !Shared(len(payload)) {
		return unmarshal(mt, payload)
	}
	name := mt.Descriptor().FullName()
	c.mu.Lock()
	msg, ok := c.entries[name][string(payload)]
	c.mu.Unlock()
	if ok {
		return msg, nil
	}
	key, reordered := payload, false
	if hasMaps(mt.Descriptor()) {
		if canon, ok := canonicalMaps(mt.Descriptor(), payload); ok && !bytes.Equal(canon, payload) {
			c.mu.Lock()
			shared, ok := c.entries[name][string(canon)]
			c.mu.Unlock()
			if ok {
				c.alias(name, payload, shared)
				return shared, nil
			}
			key, reordered = canon, true
		}
	}
	msg, err := unmarshal(mt, payload)
	if err != nil {
		return msg, err
	}
	// An entry holds more than its key: the decoded message (a few times
	// the wire size, in Go objects) and what the outputs render for it.
	c.add(name, key, msg, cacheEntryFactor*len(key))
	if reordered {
		c.alias(name, payload, msg)
	}
	return msg, nil
}

// alias keeps msg under the bytes it was sent as, when small: a short
// answer has few map orders, which recur (two containers' labels: a few
// hundred), but a large one has more than will ever be seen twice, and
// keeping its orders would only push everything else out of the cache.
func (c *messageCache) alias(name protoreflect.FullName, payload []byte, msg proto.Message) {
	if len(payload) <= aliasMaxMessage {
		c.add(name, payload, msg, len(payload))
	}
}

// add keeps msg under key; cost is what it holds (an alias of a message
// kept under another key holds only its key).
func (c *messageCache) add(name protoreflect.FullName, key []byte, msg proto.Message, cost int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n >= cacheMaxEntries || c.bytes+cost > cacheMaxBytes {
		clear(c.entries)
		c.n, c.bytes = 0, 0
	}
	byPayload := c.entries[name]
	if byPayload == nil {
		byPayload = map[string]proto.Message{}
		c.entries[name] = byPayload
	}
	byPayload[string(key)] = msg
	c.n++
	c.bytes += cost
}

// withMaps says, by message type, whether a message can hold a map field
// anywhere inside it (decided once per type; the registry is fixed).
var withMaps sync.Map // protoreflect.FullName -> bool

func hasMaps(md protoreflect.MessageDescriptor) bool {
	if v, ok := withMaps.Load(md.FullName()); ok {
		return v.(bool)
	}
	v := mapsIn(md, map[protoreflect.FullName]bool{})
	withMaps.Store(md.FullName(), v)
	return v
}

func mapsIn(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) bool {
	if seen[md.FullName()] {
		return false // a recursive type: already being looked at
	}
	seen[md.FullName()] = true
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.IsMap() {
			return true
		}
		if m := fd.Message(); m != nil && mapsIn(m, seen) {
			return true
		}
	}
	return false
}
