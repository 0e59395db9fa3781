package summary

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/containerdsnoop/containerdsnoop/internal/call"
)

func TestSummary(t *testing.T) {
	s := New()
	t0 := time.Unix(1000, 0)
	add := func(method string, lat time.Duration, code codes.Code, final bool) {
		s.Add(&call.Record{Time: t0, Method: method, Type: call.Request, WireBytes: 10})
		r := &call.Record{Time: t0.Add(lat), Method: method, Type: call.Response, WireBytes: 100, Final: final, Latency: lat}
		if final {
			r.Status = &call.Status{Code: code}
		}
		s.Add(r)
	}
	for i := 1; i <= 100; i++ {
		add("/runtime.v1.RuntimeService/ListContainers", time.Duration(i)*time.Millisecond, codes.OK, true)
	}
	add("/runtime.v1.RuntimeService/ContainerStatus", 2*time.Millisecond, codes.NotFound, true)
	add("/runtime.v1.RuntimeService/ContainerStatus", 4*time.Millisecond, codes.OK, true)

	rows := s.Rows()
	if len(rows) != 2 || rows[0].Method != "/runtime.v1.RuntimeService/ListContainers" {
		t.Fatalf("rows %+v", rows)
	}
	lc, cs := rows[0], rows[1]
	if lc.Calls != 100 || lc.Errors != 0 || lc.P50NS != int64(50*time.Millisecond) || lc.P99NS != int64(99*time.Millisecond) || lc.MaxNS != int64(100*time.Millisecond) {
		t.Errorf("ListContainers %+v", lc)
	}
	if lc.ReqBytes != 1000 || lc.RespBytes != 10000 {
		t.Errorf("bytes %d %d", lc.ReqBytes, lc.RespBytes)
	}
	if cs.Calls != 2 || cs.Errors != 1 || cs.Statuses["NotFound"] != 1 || cs.Statuses["OK"] != 1 {
		t.Errorf("ContainerStatus %+v", cs)
	}
	var tb bytes.Buffer
	if err := s.WriteTable(&tb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tb.String(), "NotFound=1") || !strings.HasPrefix(tb.String(), "METHOD") {
		t.Errorf("table:\n%s", tb.String())
	}
	var jb bytes.Buffer
	if err := s.WriteJSON(&jb); err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal(jb.Bytes(), &obj); err != nil || obj["type"] != "summary" {
		t.Errorf("json %s: %v", jb.String(), err)
	}
}

// TestSummaryBounded: thousands of distinct (hostile, long) method names
// end up under one row past MaxMethods.
func TestSummaryBounded(t *testing.T) {
	s := New()
	long := strings.Repeat("x", 64<<10)
	for i := range 5000 {
		m := fmt.Sprintf("/svc/%d%s", i, long)
		s.Add(&call.Record{Method: m, Type: call.Response, Final: true, Status: &call.Status{}, Latency: time.Millisecond})
	}
	rows := s.Rows()
	if len(rows) != MaxMethods+1 {
		t.Fatalf("%d rows, want %d", len(rows), MaxMethods+1)
	}
	var other *Row
	for i := range rows {
		if rows[i].Method == OtherMethods {
			other = &rows[i]
		}
	}
	if other == nil || other.Calls != 5000-MaxMethods {
		t.Fatalf("other methods row %+v", other)
	}
}
