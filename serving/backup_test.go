package serving

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestBackupRoot(t *testing.T) {
	base := t.TempDir()
	data := filepath.Join(base, "data")
	root := filepath.Join(base, "backups")
	if err := os.MkdirAll(filepath.Join(data, "state"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{data, filepath.Join(data, "backups"), base} {
		if _, err := NewBackupRoot(bad, data); err == nil || !strings.HasPrefix(err.Error(), "backup.dir: ") {
			t.Errorf("root %s: err %v, want a backup.dir error", bad, err)
		}
	}
	b, err := NewBackupRoot(root, data)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(data, filepath.Join(root, "to-data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(os.TempDir(), filepath.Join(root, "to-tmp")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dir  string
		code codes.Code
	}{
		{"/tmp/evil", codes.InvalidArgument},
		{"../../x", codes.InvalidArgument},
		{"nightly/../../x", codes.InvalidArgument},
		{filepath.Join(data, "state", "x"), codes.InvalidArgument},
		{".", codes.InvalidArgument},
		{root, codes.InvalidArgument},
		{"to-data/x", codes.InvalidArgument},
		{"to-tmp/x", codes.InvalidArgument},
		{"a\x00b", codes.InvalidArgument},
	} {
		_, err := b.Resolve(tc.dir)
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), "dir: ") {
			t.Errorf("Resolve(%q): %v, want %s naming dir", tc.dir, err, tc.code)
		}
	}
	got, err := b.Resolve("nightly/1")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(b.Root(), "nightly", "1"); got != want {
		t.Errorf("Resolve(nightly/1) = %s, want %s", got, want)
	}
	if abs, err := b.Resolve(filepath.Join(root, "abs")); err != nil || abs != filepath.Join(b.Root(), "abs") {
		t.Errorf("absolute path inside the root: %s, %v", abs, err)
	}
	if err := os.Mkdir(got, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Resolve("nightly/1"); status.Code(err) != codes.AlreadyExists {
		t.Errorf("existing dir: %v, want ALREADY_EXISTS", err)
	}
}
