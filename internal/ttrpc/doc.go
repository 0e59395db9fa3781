// Package ttrpc decodes ttrpc, containerd's lightweight RPC protocol over
// unix sockets (containerd ↔ shims: the Task and Sandbox APIs, and the
// events shims forward), into call.Records like gRPC calls, with Protocol
// "ttrpc"; messages are decoded with the types internal/protoreg knows.
//
// Each direction of a connection is a sequence of frames: a 10-byte header
// (length uint32, stream id uint32, type, flags, all big-endian) and the
// payload. A request frame carries a ttrpc.Request (service, method, the
// request message, timeout, metadata); a response frame a ttrpc.Response
// (google.rpc.Status and the response message); data frames carry the
// messages of streaming calls. Calls are keyed by (connection, stream id);
// the client is the end that sends requests.
//
// A direction is decoded only from a frame boundary it can trust: a
// request frame whose payload is a Request naming a protobuf service and
// method, a response or stream data for a call the connection is waiting
// for, or a frame header that validates followed by another that does.
// After a gap in the capture the direction resynchronizes the same way; a
// frame cut by the gap is never decoded.
//
// Request and Response envelopes are parsed with protowire by hand rather
// than unmarshalled into github.com/containerd/ttrpc's generated types:
// deciding whether unsynchronized bytes are a frame needs a verdict on a
// Request that has only partly arrived (requestPrefix), a strict one on a
// complete one (a declared field with the wrong wire type is not a frame,
// where proto.Unmarshal would keep it as an unknown field), and the
// payloads stay views into the frame instead of another copy per message.
// One field walk (walkFields) serves the four envelope messages.
//
// Sniff and findSync judge frame-header chains with the rule internal/h2
// uses for HTTP/2 (two frames that end where the bytes end, or three); the
// loop looks alike, the frame format and its checks do not (see h2's doc).
package ttrpc
