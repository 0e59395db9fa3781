//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/containerdtest"
	"github.com/containerdsnoop/containerdsnoop/internal/testutil/privileged"
)

// The redaction of credentials, in the live trace and in decoded
// recordings, and --show-secrets.

// secretValues are the credentials of the PullImage call in TestOpsRedaction.
var secretValues = []string{"S3cret-pa55", "YWxpY2U6UzNjcmV0", "id-t0ken", "reg-t0ken"}

func TestOpsRedaction(t *testing.T) {
	privileged.Require(t)
	setpriv := privileged.RequireBinary(t, "setpriv")
	c := containerdtest.Start(t)
	self := os.Getpid()

	// The recording is decoded as nobody, who must reach it.
	recDir, err := os.MkdirTemp("/tmp", "cdsnoop-e2e-rec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(recDir) })
	if err := os.Chmod(recDir, 0o755); err != nil {
		t.Fatal(err)
	}
	recPath := filepath.Join(recDir, "pull.cdsnoop")

	live := startTracer(t, "--output", "json", "--socket", c.Socket, "--record", recPath)
	table := startTracer(t, "--socket", c.Socket)
	shown := startTracer(t, "--show-secrets", "--output", "json", "--socket", c.Socket)

	_, img := c.CRI(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req := &runtimeapi.PullImageRequest{
		Image: &runtimeapi.ImageSpec{Image: "registry.invalid/app:1"},
		Auth: &runtimeapi.AuthConfig{
			Username:      "alice",
			Password:      "S3cret-pa55",
			Auth:          "YWxpY2U6UzNjcmV0",
			IdentityToken: "id-t0ken",
			RegistryToken: "reg-t0ken",
		},
	}
	// There is no network: the pull fails, and the request is traced all
	// the same.
	_, pullErr := img.PullImage(ctx, req)
	pullCode := status.Code(pullErr)
	if pullCode == codes.OK || ctx.Err() != nil {
		t.Fatalf("PullImage of %s: %v (code %v), want a failure from containerd", req.Image.Image, pullErr, pullCode)
	}
	t.Logf("PullImage failed as expected: %v", pullErr)

	pulled := func(recs []*record) bool { return hasResponse(recs, criPullMethod, self) }
	live.waitRecords("PullImage response", pulled)
	shown.waitRecords("PullImage response", pulled)
	table.waitText("PullImage response row", func(out string) bool { return hasRespRow(out, criPullMethod) })
	liveOut := live.stop(syscall.SIGINT)
	tableOut := table.stop(syscall.SIGINT)
	shownOut := shown.stop(syscall.SIGINT)
	for _, tr := range []*tracer{live, table, shown} {
		tr.checkQuietStderr(t)
	}

	noSecrets := func(t *testing.T, what, text string) {
		t.Helper()
		for _, s := range secretValues {
			if strings.Contains(text, s) {
				t.Errorf("%s shows the secret %q:\n%s", what, s, indent(text))
			}
		}
	}
	// pullLines returns the request and final response of the PullImage
	// call in JSON output.
	pullLines := func(t *testing.T, out string) (auth map[string]any, resp *record) {
		t.Helper()
		recs, err := parseJSON(out)
		if err != nil {
			t.Fatal(err)
		}
		req, resp := onlyCall(t, recs, criPullMethod)
		if req == nil {
			t.FailNow()
		}
		var m map[string]any
		if err := json.Unmarshal(req.Message, &m); err != nil {
			t.Fatalf("PullImage request message: %v\n    %s", err, req)
		}
		wantJSON(t, m, "registry.invalid/app:1", "image", "image")
		a, _ := jsonAt(m, "auth")
		auth, ok := a.(map[string]any)
		if !ok {
			t.Fatalf("PullImage request without auth:\n    %s", req)
		}
		if resp.Status == nil || resp.Status.Code == 0 || resp.Status.Code != uint32(pullCode) {
			t.Errorf("PullImage response status %+v, want %v as the client got:\n    %s", resp.Status, pullCode, resp)
		}
		return auth, resp
	}

	t.Run("json", func(t *testing.T) {
		noSecrets(t, "JSON stdout", liveOut)
		noSecrets(t, "JSON stderr", live.Stderr())
		auth, _ := pullLines(t, liveOut)
		wantJSON(t, auth, "alice", "username")
		for _, k := range []string{"password", "auth", "identityToken", "registryToken"} {
			wantJSON(t, auth, redactPlaceholder, k)
		}
	})

	t.Run("table", func(t *testing.T) {
		noSecrets(t, "table stdout", tableOut)
		noSecrets(t, "table stderr", table.Stderr())
		var reqRow string
		for _, l := range lines(tableOut) {
			if strings.Contains(l, " REQ ") && strings.Contains(l, " "+criPullMethod+" ") {
				reqRow = l
			}
		}
		for _, want := range []string{`username:"alice"`, `password:"[redacted]"`, `registry_token:"[redacted]"`} {
			if !strings.Contains(reqRow, want) {
				t.Errorf("PullImage REQ row lacks %s:\n    %s\noutput:\n%s", want, reqRow, indent(tableOut))
			}
		}
	})

	t.Run("show-secrets", func(t *testing.T) {
		auth, _ := pullLines(t, shownOut)
		wantJSON(t, auth, "alice", "username")
		wantJSON(t, auth, "S3cret-pa55", "password")
		wantJSON(t, auth, "YWxpY2U6UzNjcmV0", "auth")
		wantJSON(t, auth, "id-t0ken", "identityToken")
		wantJSON(t, auth, "reg-t0ken", "registryToken")
	})

	t.Run("decode as nobody", func(t *testing.T) {
		fi, err := os.Stat(recPath)
		if err != nil {
			t.Fatal(err)
		}
		// The recording holds the raw bytes, secrets included, so it is
		// readable by its owner only.
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("recording mode %v, want readable by its owner only", perm)
		}
		raw, err := os.ReadFile(recPath)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(raw, []byte("S3cret-pa55")) {
			t.Errorf("the recording does not hold the raw request bytes (no password in it)")
		}
		if err := os.Chmod(recPath, 0o644); err != nil {
			t.Fatal(err)
		}
		code, out, stderr := runSnoop(t, []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"},
			"decode", recPath, "--output", "json", "--socket", c.Socket)
		if code != 0 || stderr != "" {
			t.Fatalf("decode as nobody: exit %d, stderr:\n%s", code, indent(stderr))
		}
		noSecrets(t, "decode output", out)
		auth, _ := pullLines(t, out)
		wantJSON(t, auth, redactPlaceholder, "password")
		compareDecoded(t, lines(liveOut), lines(out))
	})
}

// compareDecoded asserts that decoding a recording printed the lines the
// live tracer printed. A difference in peer_comm only (decode cannot ask
// /proc about the recorded processes) is noted, not failed.
func compareDecoded(t *testing.T, live, decoded []string) {
	t.Helper()
	if len(live) != len(decoded) {
		t.Errorf("decode printed %d lines, the live trace %d:\nlive:\n%s\ndecoded:\n%s", len(decoded), len(live), indent(strings.Join(live, "\n")), indent(strings.Join(decoded, "\n")))
	}
	for i := range min(len(live), len(decoded)) {
		if live[i] == decoded[i] {
			continue
		}
		a, b := jsonMap(t, live[i]), jsonMap(t, decoded[i])
		pa, pb := a["peer_comm"], b["peer_comm"]
		delete(a, "peer_comm")
		delete(b, "peer_comm")
		if reflect.DeepEqual(a, b) {
			t.Logf("note: line %d differs only in peer_comm (live %v, decoded %v)", i+1, pa, pb)
			continue
		}
		t.Errorf("line %d differs:\n    live:    %s\n    decoded: %s", i+1, live[i], decoded[i])
	}
}

func jsonMap(t *testing.T, line string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("not a JSON object: %v\n    %s", err, line)
	}
	return m
}
