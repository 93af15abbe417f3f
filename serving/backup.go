package serving

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// BackupRoot is the only directory the backup action writes under. A
// backup asked for by a remote caller must not be able to overwrite or
// fill any other path the process can reach, least of all the live data
// dir.
type BackupRoot struct {
	root    string // absolute, symlinks resolved
	dataDir string // absolute, symlinks resolved
}

// NewBackupRoot checks root (created if missing) against the data dir:
// neither may hold the other's files, so that a backup never lands in the
// live data dir and a data dir is never inside the backups. The names of
// the errors are the flags'.
func NewBackupRoot(root, dataDir string) (*BackupRoot, error) {
	if root == "" {
		return nil, errors.New("backup.dir: empty")
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("backup.dir: %w", err)
	}
	r, err := realPath(root)
	if err != nil {
		return nil, fmt.Errorf("backup.dir: %w", err)
	}
	d, err := realPath(dataDir)
	if err != nil {
		return nil, fmt.Errorf("data.dir: %w", err)
	}
	if within(r, d) {
		return nil, fmt.Errorf("backup.dir: %s is inside data.dir %s", root, dataDir)
	}
	if within(d, r) {
		return nil, fmt.Errorf("backup.dir: %s holds data.dir %s", root, dataDir)
	}
	return &BackupRoot{root: r, dataDir: d}, nil
}

// Root is the resolved root directory.
func (b *BackupRoot) Root() string { return b.root }

// Resolve maps the dir of a backup request to a new directory under the
// root: a relative name is taken under the root; an absolute path must be
// inside it. The parent directories are created; the directory itself
// must not exist. Errors are INVALID_ARGUMENT or ALREADY_EXISTS naming
// the field dir.
func (b *BackupRoot) Resolve(dir string) (string, error) {
	if strings.ContainsRune(dir, 0) {
		return "", invalidArg("dir", "contains NUL")
	}
	p := dir
	if !filepath.IsAbs(p) {
		p = filepath.Join(b.root, p)
	}
	p = filepath.Clean(p)
	if !within(p, b.root) || p == b.root {
		return "", invalidArg("dir", "%q is not a new directory under the backup root %s", dir, b.root)
	}
	// The nearest existing ancestor, with its symlinks resolved, must still
	// be inside the root (a symlink under the root may point anywhere).
	anc := filepath.Dir(p)
	for {
		if _, err := os.Lstat(anc); err == nil {
			break
		}
		anc = filepath.Dir(anc)
	}
	real, err := realPath(anc)
	if err != nil {
		return "", status.Errorf(codes.Internal, "dir: %v", err)
	}
	if !within(real, b.root) || within(real, b.dataDir) {
		return "", invalidArg("dir", "%q leaves the backup root %s through a symbolic link", dir, b.root)
	}
	if _, err := os.Lstat(p); err == nil {
		return "", status.Errorf(codes.AlreadyExists, "dir: %s exists", p)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", status.Errorf(codes.Internal, "dir: %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", status.Errorf(codes.Internal, "dir: %v", err)
	}
	return p, nil
}

func realPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// within reports whether p is dir or inside it (both clean and absolute).
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}
