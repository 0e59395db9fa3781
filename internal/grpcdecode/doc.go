// Package grpcdecode turns HTTP/2 events into gRPC calls: it keys streams by
// (connection, stream id), splits DATA into messages by their 5-byte length
// prefix (a message may span many frames, and one frame may hold many
// messages), inflates compressed messages, decodes them with the method's
// registered types, pairs each request with its response, and reads the
// status from the trailers.
//
// What it cannot prove it does not show: a method whose :path came from a
// header table entry set before the capture started is reported as unknown,
// and a message that lost bytes in the capture is reported as lost, never
// decoded from what remains.
package grpcdecode
