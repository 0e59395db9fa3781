package pipeline

import (
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/protoreg"
)

// The redacted-message cache keeps only messages protoreg shares: a larger
// one is decoded anew each time, so an entry for it could never be found
// again and would only keep its decoded form alive (4,096 of them were
// kept before: a stream of 1 MiB messages held hundreds of megabytes).
func TestRedactedCacheKeepsOnlySharedMessages(t *testing.T) {
	var p Pipeline
	small := &runtimeapi.VersionRequest{Version: "v1"}
	if p.redacted(small, 0) != small || len(p.redactions) != 1 {
		t.Fatalf("small message not cached: %d entries", len(p.redactions))
	}
	for range 64 {
		large := &runtimeapi.VersionRequest{Version: strings.Repeat("v", protoreg.SharedMaxMessage)}
		if p.redacted(large, 0) != large {
			t.Fatal("a message without secrets was copied")
		}
	}
	if len(p.redactions) != 1 || p.redactionBytes > protoreg.SharedMaxMessage {
		t.Fatalf("large messages kept: %d entries, %d bytes", len(p.redactions), p.redactionBytes)
	}
}
