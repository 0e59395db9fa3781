package ttrpc

// Verdict is what Sniff concludes about a byte stream.
type Verdict int

const (
	// No: these bytes do not start with ttrpc frames.
	No Verdict = iota
	// More: too few bytes to tell.
	More
	// Yes: the bytes start with ttrpc frames that validate.
	Yes
)

type verdict = Verdict

const (
	verdictNo   = No
	verdictMore = More
	verdictYes  = Yes
)

// Sniff says whether b, the first bytes one end of a connection sent, are
// ttrpc. It answers Yes for a request frame whose payload is a Request
// naming a protobuf service and method (checked as soon as both names
// have arrived), or for a chain of frame headers that validate: two
// frames that end exactly where b ends, or three. A single response or
// data frame proves too little: More.
func Sniff(b []byte) Verdict {
	if len(b) < HeaderLen {
		return headerPrefix(b)
	}
	h := parseHeader(b)
	if !h.plausible(fromUnknown) {
		return No
	}
	if h.typ == typeRequest {
		return requestFrame(b, h)
	}
	return chain(b, senderOf(h, fromUnknown), 3)
}

// headerPrefix checks the first bytes of a header that has not fully
// arrived.
func headerPrefix(b []byte) Verdict {
	// A length of at most 4 MiB has a zero first byte and a second byte
	// of at most 0x40.
	if len(b) >= 1 && b[0] != 0 || len(b) >= 2 && b[1] > 0x40 {
		return No
	}
	if len(b) >= 8 && b[7]%2 == 0 {
		return No
	}
	if len(b) >= 9 && (b[8] < typeRequest || b[8] > typeData) {
		return No
	}
	return More
}

// requestFrame judges a request frame at the start of b on its payload.
func requestFrame(b []byte, h header) Verdict {
	end := HeaderLen + int(h.length)
	if len(b) < end {
		return requestPrefix(b[HeaderLen:])
	}
	if r, ok := parseRequest(b[HeaderLen:end]); ok && strictRequest(r) {
		return Yes
	}
	return No
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
func chain(b []byte, from sender, frames int) Verdict {
	off := 0
	for i := 0; i < frames; i++ {
		if off+HeaderLen > len(b) {
			if off < len(b) && headerPrefix(b[off:]) == No {
				return No
			}
			return More
		}
		h := parseHeader(b[off:])
		if !h.plausible(from) {
			return No
		}
		from = senderOf(h, from)
		if h.typ == typeRequest {
			if v := requestFrame(b[off:], h); v == No {
				return No
			}
		}
		off += HeaderLen + int(h.length)
		if off == len(b) && i >= 1 {
			return Yes
		}
		if off > len(b) {
			return More
		}
	}
	return Yes
}
