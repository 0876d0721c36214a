package goldclone

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// testFS is one filesystem the tests run on: the loop mounts of tests/loopfs.sh, or (in the
// ZFS guest) GOLDCLONE_TEST_ROOT, a cache root on ZFS. A missing variable fails, never skips.
type testFS struct {
	name, path string
}

func filesystems(t *testing.T) []testFS {
	t.Helper()
	if root := os.Getenv("GOLDCLONE_TEST_ROOT"); root != "" {
		return []testFS{{"root", root}}
	}
	var out []testFS
	for _, n := range []string{"xfs", "btrfs", "ext4", "tmpfs"} {
		v := "GOLDCLONE_TEST_" + strings.ToUpper(n)
		p := os.Getenv(v)
		if p == "" {
			t.Fatalf("%s is not set: run tests/loopfs.sh up and source its env, or set GOLDCLONE_TEST_ROOT", v)
		}
		out = append(out, testFS{n, p})
	}
	return out
}

func fsPath(t *testing.T, name string) string {
	t.Helper()
	for _, f := range filesystems(t) {
		if f.name == name || f.name == "root" {
			return f.path
		}
	}
	t.Fatalf("no filesystem %s", name)
	return ""
}

var scratchN atomic.Int64

// scratch makes a fresh directory under base, removed when the test ends.
func scratch(t *testing.T, base, tag string) string {
	t.Helper()
	d := filepath.Join(base, fmt.Sprintf("go-%d-%s-%d", os.Getpid(), tag, scratchN.Add(1)))
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTree(d) })
	return d
}

// removeTree removes dir, first deleting the btrfs subvolumes the library left in it
// (read-only generations, whose files cannot be unlinked), deepest first.
func removeTree(dir string) {
	_ = exec.Command("find", dir, "-depth", "-mindepth", "1", "-type", "d", "-inum", "256",
		"-exec", "sh", "-c", `btrfs property set -ts "$1" ro false; btrfs subvolume delete "$1"`, "_", "{}", ";").Run()
	os.RemoveAll(dir)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// makeTree writes a small tree with a non-UTF-8 name; returns its path.
func makeTree(t *testing.T, dir string) string {
	t.Helper()
	src := filepath.Join(dir, "src")
	writeFile(t, filepath.Join(src, "a.txt"), "alpha\n")
	writeFile(t, filepath.Join(src, "sub", "b.txt"), "beta\n")
	writeFile(t, filepath.Join(src, "caf\xe9-\xff", "\x80"), "bytes\n")
	if err := os.Symlink("a.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	return src
}

// makeBigTree writes n small files in 20 directories.
func makeBigTree(t *testing.T, dir string, n int) string {
	t.Helper()
	src := filepath.Join(dir, "big")
	for i := 0; i < 20; i++ {
		if err := os.MkdirAll(filepath.Join(src, fmt.Sprintf("d%02d", i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		p := filepath.Join(src, fmt.Sprintf("d%02d", i%20), fmt.Sprintf("f%05d", i))
		if err := os.WriteFile(p, []byte("some file content\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return src
}

// noStaging fails if a copy left a staging directory in dir.
func noStaging(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".goldclone-staging.") {
			t.Errorf("staging directory left: %s", e.Name())
		}
	}
}
