package protoreg

import (
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
	// Messages larger than this are decoded every time: they are rarely
	// repeated, and would crowd out the small ones that are.
	cacheMaxMessage = 256 << 10
)

var messages = &messageCache{entries: map[protoreflect.FullName]map[string]proto.Message{}}

func (c *messageCache) decode(mt protoreflect.MessageType, payload []byte) (proto.Message, error) {
	if len(payload) > cacheMaxMessage {
		msg := mt.New().Interface()
		if err := proto.Unmarshal(payload, msg); err != nil {
			return msg, err
		}
		convertJSONAnys(msg.ProtoReflect(), 0)
		return msg, nil
	}
	name := mt.Descriptor().FullName()
	c.mu.Lock()
	msg, ok := c.entries[name][string(payload)]
	c.mu.Unlock()
	if ok {
		return msg, nil
	}
	msg = mt.New().Interface()
	if err := proto.Unmarshal(payload, msg); err != nil {
		return msg, err
	}
	convertJSONAnys(msg.ProtoReflect(), 0)
	c.mu.Lock()
	// An entry holds more than its key: the decoded message (a few times
	// the wire size, in Go objects) and what the outputs render for it.
	cost := cacheEntryFactor * len(payload)
	if c.n >= cacheMaxEntries || c.bytes+cost > cacheMaxBytes {
		clear(c.entries)
		c.n, c.bytes = 0, 0
	}
	byPayload := c.entries[name]
	if byPayload == nil {
		byPayload = map[string]proto.Message{}
		c.entries[name] = byPayload
	}
	byPayload[string(payload)] = msg
	c.n++
	c.bytes += cost
	c.mu.Unlock()
	return msg, nil
}
