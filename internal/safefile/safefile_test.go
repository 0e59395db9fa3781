package safefile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCreate(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "new")
	f, err := Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("mode %v, %v: want no access for group and others", fi.Mode(), err)
	}

	// A planted symlink, to an existing file or dangling: refused, the
	// target untouched and not created.
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("root's file"), 0o644)
	for name, to := range map[string]string{"link": target, "dangling": filepath.Join(dir, "nothing")} {
		l := filepath.Join(dir, name)
		if err := os.Symlink(to, l); err != nil {
			t.Fatal(err)
		}
		if _, err := Create(l); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("%s: error %v", name, err)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != "root's file" {
		t.Errorf("symlink target changed: %q", b)
	}
	if _, err := os.Lstat(filepath.Join(dir, "nothing")); err == nil {
		t.Error("dangling symlink's target was created")
	}

	// A file created first by someone else: refused, left as it was.
	pre := filepath.Join(dir, "pre")
	os.WriteFile(pre, []byte("x"), 0o666)
	if _, err := Create(pre); err == nil || !strings.Contains(err.Error(), pre+" already exists") {
		t.Errorf("pre-existing file: error %v", err)
	}
}
