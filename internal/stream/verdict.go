package stream

// Verdict is what a protocol's sniffer (h2.Sniff, ttrpc.Sniff) concludes
// about the first bytes one end of a connection sent, or what a decoder
// concludes about a candidate frame boundary while it resynchronizes.
type Verdict uint8

const (
	// No: the bytes are not the protocol (not at a frame boundary).
	No Verdict = iota
	// More: too few bytes to tell.
	More
	// Yes: the bytes start with frames of the protocol that validate.
	Yes
)

func (v Verdict) String() string {
	switch v {
	case No:
		return "no"
	case More:
		return "more"
	}
	return "yes"
}
