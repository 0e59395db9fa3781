package ttrpc

import "github.com/containerdsnoop/containerdsnoop/internal/stream"

// Sniff says whether b, the first bytes one end of a connection sent, are
// ttrpc. It answers Yes for a request frame whose payload is a Request
// naming a protobuf service and method (checked as soon as both names
// have arrived), or for a chain of frame headers that validate: two
// frames that end exactly where b ends, or three. A single response or
// data frame proves too little: More.
func Sniff(b []byte) stream.Verdict {
	if len(b) < HeaderLen {
		return headerPrefix(b)
	}
	h := parseHeader(b)
	if !h.plausible(fromUnknown) {
		return stream.No
	}
	if h.typ == typeRequest {
		return requestFrame(b, h)
	}
	return chain(b, senderOf(h, fromUnknown), 3)
}

// headerPrefix checks the first bytes of a header that has not fully
// arrived.
func headerPrefix(b []byte) stream.Verdict {
	// A length of at most 4 MiB has a zero first byte and a second byte
	// of at most 0x40.
	if len(b) >= 1 && b[0] != 0 || len(b) >= 2 && b[1] > 0x40 {
		return stream.No
	}
	if len(b) >= 8 && b[7]%2 == 0 {
		return stream.No
	}
	if len(b) >= 9 && (b[8] < typeRequest || b[8] > typeData) {
		return stream.No
	}
	return stream.More
}

// requestFrame judges a request frame at the start of b on its payload.
func requestFrame(b []byte, h header) stream.Verdict {
	end := HeaderLen + int(h.length)
	if len(b) < end {
		return requestPrefix(b[HeaderLen:])
	}
	if r, ok := parseRequest(b[HeaderLen:end]); ok && strictRequest(r) {
		return stream.Yes
	}
	return stream.No
}

// senderOf narrows from by what h's type proves about its sender.
func senderOf(h header, from sender) sender {
	switch h.typ {
	case typeRequest:
		return fromClient
	case typeResponse:
		return fromServer
	}
	return from
}

// chain checks up to frames consecutive headers from the start of b. A
// request in the chain must also carry a Request (or, cut, its start).
// All frames must fit one sender: a chain that holds both a request and a
// response is not one direction of a ttrpc connection.
func chain(b []byte, from sender, frames int) stream.Verdict {
	off := 0
	for i := 0; i < frames; i++ {
		if off+HeaderLen > len(b) {
			if off < len(b) && headerPrefix(b[off:]) == stream.No {
				return stream.No
			}
			return stream.More
		}
		h := parseHeader(b[off:])
		if !h.plausible(from) {
			return stream.No
		}
		from = senderOf(h, from)
		if h.typ == typeRequest {
			if v := requestFrame(b[off:], h); v == stream.No {
				return stream.No
			}
		}
		off += HeaderLen + int(h.length)
		if off == len(b) && i >= 1 {
			return stream.Yes
		}
		if off > len(b) {
			return stream.More
		}
	}
	return stream.Yes
}
