// Package grpcdecode turns HTTP/2 events into gRPC calls: it keys streams by
// (connection, stream id), splits DATA into messages by their 5-byte length
// prefix (a message may span many frames, and one frame may hold many
// messages), inflates compressed messages, pairs each request with its
// response, and reads the status from the trailers (grpc-status,
// grpc-message, or what the HTTP status or RST_STREAM code maps to).
//
// Only what is gRPC lives here. The calls it produces are call.Records,
// the model shared with every protocol; messages are decoded, and a method
// that cannot be proven is guessed, by internal/protoreg.
//
// What it cannot prove it does not show as fact: a method whose :path came
// from a header table entry set before the capture started is reported as
// unknown, unless the connection's payloads allow inferring it (infer.go,
// docs/attach.md "Inference"), and then it is labelled inferred
// (call.SourceInferred), as is an OK inferred for trailers; a message that
// lost bytes in the capture is reported as lost, never decoded from what
// remains.
package grpcdecode
