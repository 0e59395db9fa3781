// Package call is the protocol-neutral model of an RPC as containerdsnoop
// shows it: a Record per message and per call end, with the call's Status,
// whichever protocol carried it (gRPC over HTTP/2, ttrpc). Decoders of each
// protocol produce Records; filters, redaction, summaries and output read
// them without knowing the protocol.
//
// It also holds what every decoder needs per connection: a Table of open
// calls by stream id, bounded so that calls whose end is never seen (lost
// bytes, a peer that vanished) cannot grow without end, and DirOf, the
// direction of what an end sends once the decoder has learned which end
// is the client (stream.Conn.ClientEnd).
package call
