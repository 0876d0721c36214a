package goldclone

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// A callback that ends its goroutine (runtime.Goexit, what t.Fatal does) must not crash the
// process while the copy's threads run: the copy is cancelled, nothing is left at dst, and the
// calling goroutine then ends the same way.
func TestCallbackGoexitEndsTheCaller(t *testing.T) {
	dir := scratch(t, fsPath(t, "xfs"), "goexit")
	big := makeBigTree(t, dir, 2000)
	for _, at := range []int{1, 3} {
		dst := filepath.Join(dir, "dst")
		returned := false
		done := make(chan struct{})
		go func() {
			defer close(done)
			calls := 0
			_, _ = CopyTreeWithOptions(context.Background(), big, dst, CopyOptions{
				ProgressInterval: time.Millisecond,
				OnProgress: func(Progress) {
					calls++
					if calls == at {
						runtime.Goexit()
					}
				},
			})
			returned = true
		}()
		<-done
		if returned {
			t.Errorf("Goexit at call %d: CopyTree returned to its caller", at)
		}
		if exists(dst) {
			t.Errorf("Goexit at call %d: dst left", at)
		}
		noStaging(t, dir)
	}
	// The library still works in this process.
	if err := CopyTree(context.Background(), big, filepath.Join(dir, "again"), nil); err != nil {
		t.Fatal(err)
	}
}

// A context that ran out is both a cancellation and its own cause.
func TestDeadlineMatchesDeadlineExceeded(t *testing.T) {
	dir := scratch(t, fsPath(t, "xfs"), "deadline")
	big := makeBigTree(t, dir, 3000)
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	err := CopyTree(ctx, big, filepath.Join(dir, "d1"), nil)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrCancelled) || errors.Is(err, context.Canceled) {
		t.Errorf("expired context: %v", err)
	}
	// Running out while the copy runs: stop it from the callback's ctx check.
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err = CopyTree(ctx, big, filepath.Join(dir, "d2"), func(int64, int64) { time.Sleep(5 * time.Millisecond) })
	if err != nil && (!errors.Is(err, context.DeadlineExceeded) || exists(filepath.Join(dir, "d2"))) {
		t.Errorf("deadline while running: %v", err)
	}
	noStaging(t, dir)
}

// A nil *Cache answers with errors (and Root with ""), never a panic.
func TestNilCache(t *testing.T) {
	var c *Cache
	if c.Root() != "" {
		t.Error("Root of nil")
	}
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	if _, err := c.Backend(); !errors.Is(err, ErrNullParameter) {
		t.Errorf("Backend: %v", err)
	}
	if _, err := c.Info("p"); !errors.Is(err, ErrNullParameter) {
		t.Errorf("Info: %v", err)
	}
	if _, err := c.SetupSession("p", "s"); !errors.Is(err, ErrNullParameter) {
		t.Errorf("SetupSession: %v", err)
	}
	if _, err := c.GC(); !errors.Is(err, ErrNullParameter) {
		t.Errorf("GC: %v", err)
	}
}

// Thread counts over the library's limit are refused where they are given, not truncated
// and not accepted for every later call to fail.
func TestThreadCountsOverTheLimit(t *testing.T) {
	dir := scratch(t, fsPath(t, "ext4"), "threads")
	root := filepath.Join(dir, "root")
	writeFile(t, filepath.Join(root, ".keep"), "")
	for _, n := range []int{-1, 1025, 1<<32 + 1} {
		if c, err := Open(root, WithCopyThreads(n)); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Open with %d copy threads: %v", n, err)
			if c != nil {
				c.Close()
			}
		}
		if _, err := CopyTreeWithOptions(context.Background(), dir, filepath.Join(t.TempDir(), "d"), CopyOptions{Threads: n}); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("CopyTree with %d threads: %v", n, err)
		}
	}
	for _, b := range []uint64{1000, 2048, 3 << 12, 256 << 10} {
		if c, err := Open(root, WithZvolBlockSize(b)); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Open with zvol block size %d: %v", b, err)
			if c != nil {
				c.Close()
			}
		}
	}
	// The copy backend works anywhere (in the ZFS guest this is a directory inside a dataset).
	c, err := Open(root, WithCopyThreads(1024), WithBackend(BackendCopy), WithZvolSize(1<<30), WithZvolBlockSize(8192))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
