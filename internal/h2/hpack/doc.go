// Package hpack is an HPACK (RFC 7541) header block decoder for a passive
// observer that may start reading a connection long after it was opened.
//
// # Why not golang.org/x/net/http2/hpack
//
// The tracer attaches to HTTP/2 (gRPC) connections that may have been running
// for days, so the dynamic table built before the attach is unknown. The stock
// decoder fails a whole header block on a single unknown dynamic-table index
// ("invalid indexed representation"), and Go's encoder indexes nearly every
// header, so it would lose every header block of such a connection. Other
// tolerant decoders (OBI's, for one) stop inserting into the table after a
// miss, which shifts every later index by the number of lost insertions: later
// references then silently resolve to wrong values. This package never
// guesses: a field is either decoded exactly or marked unknown.
//
// # What the design rests on
//
// Dynamic index 62 is always the newest entry, 63 the next newest, and so on,
// and eviction removes strictly the oldest entries. So an entry's position
// counted from the newest never changes while it survives. The decoder
// records, newest first, every insertion it sees after the attach; a
// reference to index 62+i with i below the number of recorded insertions is
// exactly the i-th newest of them, whatever evictions happened, because an
// encoder only refers to entries that exist. A reference beyond the recorded
// insertions points at an entry from before the attach and is reported as
// unknown (Field.NameKnown and Field.ValueKnown false).
//
// Hence an insertion is never skipped: a literal with incremental indexing
// whose name is an unknown index still inserts an entry, with an unknown name
// and a known value, and later references to it yield a field whose value is
// known and whose name is not. Skipping it would be exactly the shift above.
// The same holds for an insertion the encoder did not really perform because
// the entry was larger than its table: the encoder then emptied its table, so
// every entry it can still refer to is newer and sits at the same position in
// both lists.
//
// Eviction is tracked only to bound memory and to learn when the table is
// fully known. The decoder keeps M, an upper bound on the encoder's table size
// limit: 4096 at first, set by in-band dynamic table size updates, and raised
// by SetMaxTableSize. An entry's size is len(name)+len(value)+32; for an entry
// of unknown name only the lower bound len(value)+33 is known (HTTP/2 field
// names are never empty). An entry is dropped only when it and all newer
// entries, counted at their lower bounds, exceed M: then it was certainly
// evicted, and no entry that might still be present is ever dropped.
//
// # Fully known (Synced)
//
// The table becomes fully known, and stays so, when no entry from before the
// attach can remain: after a dynamic table size update to 0, after Reset (a
// new connection starts with an empty table), or once the recorded entries,
// at their lower-bound sizes, leave less than 32 bytes of room under M (no
// older entry fits beside them). From then on every index either resolves or
// is a protocol error, and Decode returns an error for it. Until then an
// index beyond the recorded entries is unknown, not an error, as long as it
// is below 62+M/32 (the most entries a table of size M can hold).
//
// Synced does not mean every field decodes fully known: an entry whose name
// was taken from a pre-attach entry keeps its unknown name, and passes it on.
// Go's encoder names a new literal after the newest entry with the same name,
// so a header that recurs with changing values under a name outside the
// static table (grpc-timeout on every call, for instance) keeps an unknown
// name for as long as one such entry stays in the table, possibly for the
// life of the connection. Its values are always known.
//
// # Pinning entries from before the attach
//
// Some connections never turn their table over (kubelet sends the same
// grpc-timeout on every call, so nothing is ever evicted): their method paths
// stay unknown for the life of the connection. A Resolver set with
// SetResolver is asked, during Decode, about each field that refers to an
// entry the decoder does not fully know, with the field's exact bytes; when
// it can prove what the encoder was given for those bytes (internal/peerfields
// does, from the peer's own hpack encoder), the entry is pinned by its age
// (PinBeforeAttach, PinName) and is known from then on. A pin that
// contradicts what the decoder knows, or that could not fit in the table, is
// refused and counted (Conflicts); Field.Peer marks content that came from a
// pin.
//
// # Entry numbers
//
// Field.Entry numbers the dynamic entry a field refers to, by insertion
// order (before the attach: -1, -2, ... newest first), which never changes
// while the entry lives. Fields with the same Entry and literal text carry
// the same content, known or not: what internal/grpcdecode's labelled
// inference compares.
//
// # Errors
//
// Decode returns an error only for a malformed block: a truncated integer or
// string, an integer above 2^32-1, a string longer than 1 MiB, bad Huffman
// coding, index 0, an index provably out of range, a table size update above
// the allowed maximum or after the first field of a block. After an error the
// table is in an undefined state: the caller must Reset the decoder at the
// next connection preface or replace it with NewDecoder, and treat decoded
// fields from it as untrusted until then. Decode never panics.
package hpack
