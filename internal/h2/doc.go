// Package h2 parses each direction of a captured connection into HTTP/2
// frames with golang.org/x/net/http2's Framer and decodes header blocks with
// internal/h2/hpack, which stays exact on connections joined mid-stream.
//
// A direction is decoded only from a frame boundary it can trust: the
// client preface, or a chain of frame headers that validate, two whose
// frames end where the bytes end or three (resync.go). After a gap in the
// capture the direction resynchronizes the same way, and its header table
// is treated as unknown again, because the missing bytes may have inserted
// entries. Sniff applies the same rule to the first bytes of a connection,
// for protocol detection (internal/pipeline).
//
// resync.go's chain has the shape of internal/ttrpc's (sync.go) on
// purpose: the same rule over two frame formats. What differs is all of
// the substance (the header layouts and what makes one plausible; ttrpc
// also judges request payloads and one sender per direction), so each
// protocol keeps its own rather than share a loop through an interface.
package h2
