package goldclone_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"goldclone.dev/goldclone"
)

// TestServiceCallSites uses only the exported API, the way the devcontainer service does.
func TestServiceCallSites(t *testing.T) {
	base := os.Getenv("GOLDCLONE_TEST_ROOT")
	root := base
	work := t.TempDir()
	if base == "" {
		base = os.Getenv("GOLDCLONE_TEST_BTRFS")
		if base == "" {
			t.Fatal("GOLDCLONE_TEST_BTRFS (or GOLDCLONE_TEST_ROOT) is not set")
		}
		var err error
		if work, err = os.MkdirTemp(base, "go-service-"); err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(work)
		root = filepath.Join(work, "cache")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	onZFS := os.Getenv("GOLDCLONE_TEST_ROOT") != ""
	if pool, ok := goldclone.DetectZFSPool(root); ok != onZFS {
		t.Errorf("DetectZFSPool(%s) = %q, %v", root, pool, ok)
	}
	if parent, ok := goldclone.DetectZFSParent(root); ok != onZFS {
		t.Errorf("DetectZFSParent(%s) = %q, %v", root, parent, ok)
	} else if ok {
		d, err := goldclone.Detect(root)
		pool, _ := goldclone.DetectZFSPool(root)
		if err != nil || parent != d.Dataset || !strings.HasPrefix(parent, pool) {
			t.Errorf("DetectZFSParent(%s) = %q; Detect: %+v, %v", root, parent, d, err)
		}
	}
	tree := filepath.Join(work, "tree")
	for _, d := range []string{"etc", "var/lib/app"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "etc", "app.conf"), []byte("x=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join(work, "golden")
	var lastCopied, lastTotal int64
	err := goldclone.CopyTree(context.Background(), tree, golden, func(copied, total int64) {
		lastCopied, lastTotal = copied, total
	})
	if err != nil || lastCopied != 4 || lastTotal != 4 {
		t.Fatalf("CopyTree: %v (progress %d/%d)", err, lastCopied, lastTotal)
	}
	cache, err := goldclone.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	project := "svc-" + filepath.Base(work)
	if _, err := cache.Import(project, golden); err != nil {
		t.Fatal(err)
	}
	path, err := cache.SetupSession(project, "sess-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(path, "marker"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	gen, err := cache.PromoteSession(project, "sess-1")
	if err != nil || gen != 2 {
		t.Fatalf("promote: %d %v", gen, err)
	}
	if err := cache.CleanupSession(project, "sess-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := cache.GC(); err != nil {
		t.Fatal(err)
	}
	info, err := cache.Info(project)
	if err != nil || info.Generation != 2 {
		t.Fatalf("info %+v %v", info, err)
	}
	if err := cache.CleanupSession(project, "sess-1"); !errors.Is(err, goldclone.ErrNotFound) {
		t.Errorf("cleanup twice: %v", err)
	}
	// DeleteGolden: nothing of the project is left (on btrfs its read-only generation too).
	if err := cache.DeleteProject(project); err != nil {
		t.Fatal(err)
	}
	if entries, err := os.ReadDir(root); err != nil || len(entries) != 1 || entries[0].Name() != ".goldclone" {
		if os.Getenv("GOLDCLONE_TEST_ROOT") == "" { // (the guest's root is shared with other tests)
			t.Errorf("left in the cache root after DeleteProject: %v %v", entries, err)
		}
	}
}
