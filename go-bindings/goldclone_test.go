package goldclone

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestVersion(t *testing.T) {
	if v := Version(); v == "" || v[0] < '0' || v[0] > '9' {
		t.Fatalf("Version() = %q", v)
	}
	if ABIVersion() != HeaderABIVersion {
		t.Fatalf("library ABI %d, header ABI %d", ABIVersion(), HeaderABIVersion)
	}
}

// Every code the library names has a Go sentinel, every sentinel is a code the library names,
// and likewise for backends and detection kinds: the Go constants and the library's lists map
// both ways. (The numbers are the header's, by construction.)
func TestConstantsMatchLibrary(t *testing.T) {
	sentinel := map[Result]*Error{}
	for _, s := range allSentinels {
		if _, dup := sentinel[s.Code]; dup {
			t.Errorf("two sentinels for %s", s.Code)
		}
		sentinel[s.Code] = s
		if s.Code.String() == "GOLDCLONE_RESULT_UNKNOWN" {
			t.Errorf("sentinel code %d is not the library's", s.Code)
		}
	}
	named := 0
	for n := Result(0); n < 1024; n++ {
		name := n.String()
		if name == "GOLDCLONE_RESULT_UNKNOWN" {
			continue
		}
		named++
		if _, ok := sentinel[n]; !ok && n != ResultOK {
			t.Errorf("the library's %s (%d) has no Go sentinel", name, n)
		}
	}
	if named != len(allSentinels)+1 {
		t.Errorf("the library names %d codes, Go has %d sentinels and OK", named, len(allSentinels))
	}

	backends := map[Backend]string{BackendAuto: "auto", BackendZFS: "zfs", BackendZvol: "zvol", BackendBtrfs: "btrfs", BackendCopy: "copy", BackendImage: "image"}
	for n := Backend(0); n < 1024; n++ {
		want, ours := backends[n]
		if got := n.String(); ours != (got != "unknown") || (ours && got != want) {
			t.Errorf("backend %d: library says %q, Go has %q", n, got, want)
		}
	}
	kinds := map[DetectKind]string{KindZFSDataset: "zfs_dataset", KindZvol: "zvol", KindBtrfs: "btrfs", KindReflink: "reflink", KindPlain: "plain"}
	for n := DetectKind(0); n < 1024; n++ {
		want, ours := kinds[n]
		if got := n.String(); ours != (got != "unknown") || (ours && got != want) {
			t.Errorf("detect kind %d: library says %q, Go has %q", n, got, want)
		}
	}
}

func TestResultNamesAndErrorsIs(t *testing.T) {
	sentinels := map[Result]*Error{}
	for _, s := range allSentinels {
		sentinels[s.Code] = s
	}
	for code, s := range sentinels {
		if !strings.HasPrefix(code.String(), "GOLDCLONE_RESULT_") || code.String() == "GOLDCLONE_RESULT_UNKNOWN" {
			t.Errorf("%d: name %q", code, code.String())
		}
		err := error(&Error{Code: code, Op: "x", Message: "m"})
		for other, o := range sentinels {
			if got := errors.Is(err, o); got != (other == code) {
				t.Errorf("errors.Is(%s, %s) = %v", code, other, got)
			}
		}
		if !errors.Is(err, s) {
			t.Errorf("%s does not match its sentinel", code)
		}
	}
	if Result(12345).String() != "GOLDCLONE_RESULT_UNKNOWN" {
		t.Error("unknown code name")
	}
	if ResultNotFound != 1 || ResultIO != 14 || ResultParse != 19 || ResultOther != 99 || ResultInvalidHandle != 101 {
		t.Error("result numbers changed")
	}
}

func TestDetect(t *testing.T) {
	want := map[string]DetectKind{"xfs": KindReflink, "btrfs": KindBtrfs, "ext4": KindPlain, "tmpfs": KindPlain, "root": KindZFSDataset}
	for _, f := range filesystems(t) {
		d, err := Detect(f.path)
		if err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		if d.Kind != want[f.name] && !(f.name == "root" && d.Kind == KindZvol) {
			t.Errorf("%s: kind %s, want %s", f.name, d.Kind, want[f.name])
		}
		real, _ := filepath.EvalSymlinks(f.path)
		if d.Path != real {
			t.Errorf("%s: path %q, want %q", f.name, d.Path, real)
		}
		pool, ok := DetectZFSPool(f.path)
		if f.name == "root" {
			if !ok || pool == "" || d.Pool != pool || !strings.HasPrefix(d.Dataset, pool) {
				t.Errorf("on ZFS: pool %q ok %v, detection %+v", pool, ok, d)
			}
		} else {
			if ok || pool != "" || d.Pool != "" {
				t.Errorf("%s: DetectZFSPool = %q, %v", f.name, pool, ok)
			}
			wantFS := f.name
			if d.FSType != wantFS || d.MountPoint != real {
				t.Errorf("%s: %+v", f.name, d)
			}
		}
		if f.name == "btrfs" && (!d.BtrfsSubvolume || d.BtrfsSubvolumeID != 5) {
			t.Errorf("btrfs: %+v", d)
		}
		if (f.name == "xfs" || f.name == "btrfs") && !(d.Reflink && d.ReflinkKnown) {
			t.Errorf("%s: reflink %+v", f.name, d)
		}
	}
	// bytes, not UTF-8
	dir := filepath.Join(scratch(t, filesystems(t)[0].path, "detect"), "\xff\xfe")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := Detect(dir)
	if err != nil || !strings.HasSuffix(d.Path, "/\xff\xfe") {
		t.Errorf("non-UTF-8 path: %+v %v", d, err)
	}
	_, err = Detect("/nonexistent/goldclone")
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("missing path: %v", err)
	}
	if _, ok := DetectZFSPool("/nonexistent/goldclone"); ok {
		t.Error("DetectZFSPool on a missing path")
	}
	if _, err := Detect("a\x00b"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("NUL in path: %v", err)
	}
}

func TestCopyTree(t *testing.T) {
	for _, f := range filesystems(t) {
		t.Run(f.name, func(t *testing.T) {
			dir := scratch(t, f.path, "copy")
			src := makeTree(t, dir)
			dst := filepath.Join(dir, "dst")
			var calls int
			var lastCopied, lastTotal int64
			err := CopyTree(context.Background(), src, dst, func(copied, total int64) {
				calls++
				lastCopied, lastTotal = copied, total
			})
			if err != nil {
				t.Fatal(err)
			}
			if calls < 2 || lastCopied != 6+5+6 || lastTotal != 6+5+6 {
				t.Errorf("progress: %d calls, last %d/%d", calls, lastCopied, lastTotal)
			}
			if readFile(t, filepath.Join(dst, "caf\xe9-\xff", "\x80")) != "bytes\n" || readFile(t, filepath.Join(dst, "sub/b.txt")) != "beta\n" {
				t.Error("content differs")
			}
			if l, _ := os.Readlink(filepath.Join(dst, "link")); l != "a.txt" {
				t.Errorf("link %q", l)
			}
			if err := CopyTree(context.Background(), src, dst, nil); !errors.Is(err, ErrAlreadyExists) || !errors.Is(err, fs.ErrExist) {
				t.Errorf("existing dst: %v", err)
			}
			stats, err := CopyTreeWithOptions(context.Background(), src, filepath.Join(dir, "dst2"), CopyOptions{Threads: 2})
			if err != nil || stats.Entries != 7 || stats.Files != 3 || stats.Threads != 2 {
				t.Errorf("stats %+v, %v", stats, err)
			}
			noStaging(t, dir)
		})
	}
}

func TestCopyTreeErrors(t *testing.T) {
	dir := scratch(t, fsPath(t, "ext4"), "copyerr")
	src := makeTree(t, dir)
	ctx := context.Background()
	cases := []struct {
		src, dst string
		want     error
	}{
		{filepath.Join(dir, "missing"), filepath.Join(dir, "d1"), ErrNotFound},
		{filepath.Join(src, "a.txt"), filepath.Join(dir, "d2"), ErrNotADirectory},
		{src, filepath.Join(src, "inside"), ErrInvalidArgument},
		{src, filepath.Join(dir, strings.Repeat("n", 600)), ErrNameTooLong},
		{src, "nul\x00byte", ErrInvalidArgument},
		{"", filepath.Join(dir, "d3"), ErrNotFound},
	}
	for _, c := range cases {
		err := CopyTree(ctx, c.src, c.dst, nil)
		var e *Error
		if !errors.Is(err, c.want) || !errors.As(err, &e) || e.Message == "" {
			t.Errorf("CopyTree(%q, %q) = %v, want %v", c.src, c.dst, err, c.want)
		}
	}
	if _, err := CopyTreeWithOptions(ctx, src, filepath.Join(dir, "d4"), CopyOptions{Threads: 5000}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("5000 threads: %v", err)
	}
	noStaging(t, dir)
}

func TestCopyTreeCancel(t *testing.T) {
	dir := scratch(t, fsPath(t, "xfs"), "cancel")
	src := makeTree(t, dir)

	// already cancelled
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := CopyTree(ctx, src, filepath.Join(dir, "d1"), nil)
	if !errors.Is(err, ErrCancelled) || !errors.Is(err, context.Canceled) || exists(filepath.Join(dir, "d1")) {
		t.Errorf("pre-cancelled: %v", err)
	}

	// cancelled in the first progress report (made before the copy starts): deterministic
	ctx, cancel = context.WithCancel(context.Background())
	calls := 0
	err = CopyTree(ctx, src, filepath.Join(dir, "d2"), func(copied, total int64) { calls++; cancel() })
	if !errors.Is(err, ErrCancelled) || calls != 1 || exists(filepath.Join(dir, "d2")) {
		t.Errorf("cancel in callback: %v after %d calls", err, calls)
	}

	// cancelled from another goroutine while a big copy runs
	big := makeBigTree(t, dir, 3000)
	ctx, cancel = context.WithCancel(context.Background())
	go func() { time.Sleep(2 * time.Millisecond); cancel() }()
	err = CopyTree(ctx, big, filepath.Join(dir, "d3"), nil)
	t.Logf("big copy cancelled after 2ms: %v", err)
	if err != nil && (!errors.Is(err, ErrCancelled) || exists(filepath.Join(dir, "d3"))) {
		t.Errorf("cancel while running: %v", err)
	}

	// a deadline
	ctx, cancel = context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	err = CopyTree(ctx, big, filepath.Join(dir, "d4"), func(int64, int64) {})
	if err != nil && !errors.Is(err, ErrCancelled) {
		t.Errorf("deadline: %v", err)
	}
	noStaging(t, dir)
}

func TestCopyTreeCallbackPanic(t *testing.T) {
	dir := scratch(t, fsPath(t, "tmpfs"), "panic")
	src := makeTree(t, dir)
	defer func() {
		if r := recover(); r != "boom" {
			t.Errorf("recovered %v, want the callback's panic", r)
		}
		if exists(filepath.Join(dir, "dst")) {
			t.Error("dst left after a panicking callback")
		}
	}()
	_ = CopyTree(context.Background(), src, filepath.Join(dir, "dst"), func(int64, int64) { panic("boom") })
	t.Error("no panic")
}

// cacheRoot gives a cache root on f: a fresh directory on the loop mounts, the ZFS dataset's
// mount point itself in the guest (with a per-test project name to keep runs apart).
// importedCache opens a cache on the first test filesystem and imports a one-file golden tree
// as a project named prefix plus a timestamp. The caller closes the cache.
func importedCache(t *testing.T, prefix string) (c *Cache, project, root string) {
	t.Helper()
	root, srcDir := cacheRoot(t, filesystems(t)[0])
	golden := filepath.Join(srcDir, "golden")
	writeFile(t, filepath.Join(golden, "x"), "x")
	c, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	project = prefix + time.Now().Format("150405.000000")
	if _, err := c.Import(project, golden); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c, project, root
}

func cacheRoot(t *testing.T, f testFS) (root, srcDir string) {
	t.Helper()
	if f.name == "root" {
		return f.path, t.TempDir()
	}
	d := scratch(t, f.path, "cache")
	root = filepath.Join(d, "cache")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return root, d
}

func TestLifecycle(t *testing.T) {
	wantBackend := map[string]Backend{"xfs": BackendImage, "btrfs": BackendBtrfs, "ext4": BackendImage, "tmpfs": BackendCopy, "root": BackendZFS}
	for _, f := range filesystems(t) {
		if f.name == "root" {
			// a ZFS dataset, or a filesystem on a zvol
			if d, err := Detect(f.path); err == nil && d.Kind == KindZvol {
				wantBackend["root"] = BackendZvol
			}
		}
		t.Run(f.name, func(t *testing.T) {
			root, srcDir := cacheRoot(t, f)
			project := "go-" + strings.ReplaceAll(t.Name(), "/", "-") + "-" + time.Now().Format("150405.000000")
			golden := filepath.Join(srcDir, "golden")
			writeFile(t, filepath.Join(golden, "version.txt"), "gen1\n")
			writeFile(t, filepath.Join(golden, "lib", "data"), "data\n")

			c, err := Open(root)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if b, err := c.Backend(); err != nil || b != wantBackend[f.name] {
				t.Errorf("backend %s, %v", b, err)
			}
			if g, err := c.Import(project, golden); err != nil || g != 1 {
				t.Fatalf("import: %d, %v", g, err)
			}
			if _, err := c.Import(project, golden); !errors.Is(err, ErrAlreadyExists) {
				t.Errorf("second import: %v", err)
			}
			s1, err := c.SetupSession(project, "s1")
			if err != nil {
				t.Fatal(err)
			}
			s2, err := c.SetupSession(project, "s2")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.SetupSession(project, "s1"); !errors.Is(err, ErrAlreadyExists) {
				t.Errorf("setup twice: %v", err)
			}
			writeFile(t, filepath.Join(s1, "version.txt"), "gen2\n")
			writeFile(t, filepath.Join(s1, "added"), "new\n")
			g, err := c.PromoteSession(project, "s1")
			if err != nil || g != 2 {
				t.Fatalf("promote: %d, %v", g, err)
			}
			s3, err := c.SetupSession(project, "s3")
			if err != nil {
				t.Fatal(err)
			}
			if readFile(t, filepath.Join(s3, "version.txt")) != "gen2\n" || readFile(t, filepath.Join(s3, "added")) != "new\n" {
				t.Error("new session does not see generation 2")
			}
			if readFile(t, filepath.Join(s2, "version.txt")) != "gen1\n" || exists(filepath.Join(s2, "added")) {
				t.Error("old session does not see generation 1 any more")
			}
			info, err := c.Info(project)
			if err != nil {
				t.Fatal(err)
			}
			if info.Generation != 2 || info.SourceSession != "s1" || info.Backend != wantBackend[f.name] ||
				len(info.Sessions) != 3 || time.Since(info.CreatedAt) > time.Hour {
				t.Errorf("info %+v", info)
			}
			gens := map[string]uint64{}
			for _, s := range info.Sessions {
				gens[s.ID] = s.Generation
			}
			if gens["s1"] != 1 || gens["s2"] != 1 || gens["s3"] != 2 {
				t.Errorf("sessions %v", gens)
			}
			for _, s := range []string{"s1", "s2", "s3"} {
				if err := c.CleanupSession(project, s); err != nil {
					t.Errorf("cleanup %s: %v", s, err)
				}
			}
			if exists(s2) {
				t.Error("s2 still there")
			}
			if err := c.CleanupSession(project, "s2"); !errors.Is(err, ErrNotFound) {
				t.Errorf("cleanup twice: %v", err)
			}
			report, err := c.GC()
			if err != nil {
				t.Errorf("gc: %v", err)
			} else if len(report.Failed)+len(report.Kept) != 0 {
				t.Errorf("gc after clean operations: %+v", report)
			}
			info, err = c.Info(project)
			if err != nil || info.Generation != 2 || len(info.Sessions) != 0 {
				t.Errorf("info after cleanup: %+v %v", info, err)
			}
			if _, err := c.Info("no-such-project"); !errors.Is(err, ErrNotFound) {
				t.Errorf("unknown project: %v", err)
			}
			if err := c.Close(); err != nil {
				t.Error(err)
			}
			if err := c.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if _, err := c.SetupSession(project, "s9"); !errors.Is(err, ErrInvalidHandle) {
				t.Errorf("after Close: %v", err)
			}
		})
	}
}

func TestBadNames(t *testing.T) {
	c, project, root := importedCache(t, "go-bad-")
	defer c.Close()
	cases := map[string]error{
		"": ErrInvalidName, "..": ErrInvalidName, "../x": ErrInvalidName, "a/b": ErrInvalidName,
		"-x": ErrInvalidName, "a@b": ErrInvalidName, "caf\u00e9": ErrInvalidName, "\xff\xfe": ErrInvalidName,
		"nul\x00": ErrInvalidName, strings.Repeat("a", 65): ErrNameTooLong, strings.Repeat("b", 5000): ErrNameTooLong,
	}
	for name, want := range cases {
		if _, err := c.SetupSession(project, name); !errors.Is(err, want) {
			t.Errorf("SetupSession(%q) = %v, want %v", name, err, want)
		}
		if _, err := c.SetupSession(name, "s"); !errors.Is(err, want) {
			t.Errorf("SetupSession(project %q) = %v", name, err)
		}
		if _, err := c.PromoteSession(project, name); !errors.Is(err, want) {
			t.Errorf("PromoteSession(%q) = %v", name, err)
		}
		if err := c.CleanupSession(project, name); !errors.Is(err, want) {
			t.Errorf("CleanupSession(%q) = %v", name, err)
		}
		if _, err := c.Info(name); !errors.Is(err, want) {
			t.Errorf("Info(%q) = %v", name, err)
		}
	}
	if _, err := c.SetupSession("unknown-project", "s"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown project: %v", err)
	}
	if _, err := Open("/nonexistent/cache"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open missing: %v", err)
	}
	if _, err := Open(root, WithBackend(Backend(77))); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Open bad backend: %v", err)
	}
	var nilCache *Cache
	if _, err := nilCache.SetupSession(project, "s"); !errors.Is(err, ErrNullParameter) {
		t.Errorf("nil cache: %v", err)
	}
}

func TestConcurrentSessions(t *testing.T) {
	c, project, _ := importedCache(t, "go-conc-")
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 3; i++ {
				s := "w" + string(rune('a'+w)) + "-" + string(rune('0'+i))
				p, err := c.SetupSession(project, s)
				if err == nil && !exists(filepath.Join(p, "x")) {
					err = errors.New("session without content")
				}
				if err == nil {
					_, err = c.Info(project)
				}
				if err == nil {
					err = c.CleanupSession(project, s)
				}
				if err != nil {
					errs <- err
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A Cache dropped without Close is released by its finalizer.
func TestFinalizer(t *testing.T) {
	f := filesystems(t)[0]
	root, _ := cacheRoot(t, f)
	before := liveHandles()
	func() {
		c, err := Open(root)
		if err != nil {
			t.Fatal(err)
		}
		if liveHandles() != before+1 {
			t.Errorf("live handles %d, want %d", liveHandles(), before+1)
		}
		_ = c
	}()
	deadline := time.Now().Add(5 * time.Second)
	for liveHandles() != before && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if liveHandles() != before {
		t.Errorf("finalizer did not free the cache: %d live, want %d", liveHandles(), before)
	}
}

// Close while other goroutines use the Cache: their calls finish or fail with ErrInvalidHandle.
func TestCloseWhileInUse(t *testing.T) {
	c, project, _ := importedCache(t, "go-close-")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, err := c.Info(project)
				if errors.Is(err, ErrInvalidHandle) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// ImportContext, SetupSessionContext and PromoteSessionContext report progress and stop with
// ctx on every backend; a stopped call leaves nothing (the same call then works), and a
// callback's panic reaches the caller with nothing left behind.
func TestLifecycleProgressAndCancel(t *testing.T) {
	for _, f := range filesystems(t) {
		t.Run(f.name, func(t *testing.T) {
			root, srcDir := cacheRoot(t, f)
			project := "go-watch-" + time.Now().Format("150405.000000")
			golden := filepath.Join(srcDir, "golden")
			for i := 0; i < 50; i++ {
				writeFile(t, filepath.Join(golden, "d", fmt.Sprintf("f%02d", i)), strings.Repeat("x", 4096))
			}
			c, err := Open(root)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			backend, _ := c.Backend()

			stopped, stop := context.WithCancel(context.Background())
			stop()
			if _, err := c.ImportContext(stopped, project, golden, nil); !errors.Is(err, ErrCancelled) || !errors.Is(err, context.Canceled) {
				t.Fatalf("stopped import: %v", err)
			}
			if _, err := c.Info(project); !errors.Is(err, ErrNotFound) {
				t.Fatalf("a stopped import made a project: %v", err)
			}
			var last, total int64 = -2, -2
			calls := 0
			g, err := c.ImportContext(context.Background(), project, golden, func(copied, tot int64) { last, total = copied, tot; calls++ })
			if err != nil || g != 1 {
				t.Fatalf("import: %d, %v", g, err)
			}
			if calls < 2 || total < 50*4096 || last != total {
				t.Errorf("import progress: %d calls, last %d of %d", calls, last, total)
			}

			// A deadline that has passed stops the setup; the callback stopping it does too.
			gone, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
			defer cancel()
			if _, err := c.SetupSessionContext(gone, project, "s1", nil); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("setup past its deadline: %v", err)
			}
			ctx, stopIt := context.WithCancel(context.Background())
			_, err = c.SetupSessionContext(ctx, project, "s1", func(copied, tot int64) { stopIt() })
			stopIt()
			if !errors.Is(err, ErrCancelled) {
				t.Errorf("setup stopped by its callback: %v", err)
			}
			if info, err := c.Info(project); err != nil || len(info.Sessions) != 0 {
				t.Fatalf("a stopped setup left a session: %+v, %v", info, err)
			}
			calls, last, total = 0, -2, -2
			s1, err := c.SetupSessionContext(context.Background(), project, "s1", func(copied, tot int64) { last, total = copied, tot; calls++ })
			if err != nil {
				t.Fatal(err)
			}
			if backend == BackendCopy && (calls < 2 || total < 50*4096 || last != total) {
				t.Errorf("setup progress: %d calls, last %d of %d", calls, last, total)
			}
			if calls < 2 {
				t.Errorf("setup progress: %d calls (want at least the first and the last)", calls)
			}

			// A callback that panics stops the promote and the panic reaches us.
			writeFile(t, filepath.Join(s1, "d", "new"), "y")
			func() {
				defer func() {
					if r := recover(); r != "boom" {
						t.Errorf("recovered %v", r)
					}
				}()
				_, _ = c.PromoteSessionContext(context.Background(), project, "s1", func(int64, int64) { panic("boom") })
				t.Error("PromoteSessionContext returned after its callback panicked")
			}()
			if info, err := c.Info(project); err != nil || info.Generation != 1 {
				t.Fatalf("a stopped promote changed the golden: %+v, %v", info, err)
			}
			if g, err := c.PromoteSessionContext(context.Background(), project, "s1", nil); err != nil || g != 2 {
				t.Fatalf("promote: %d, %v", g, err)
			}
			if err := c.CleanupSession(project, "s1"); err != nil {
				t.Fatal(err)
			}
			// (The ZFS root is shared by the guest's suites: its gc reports their projects too.)
			if r, err := c.GC(); err != nil || (f.name != "root" && len(r.Removed)+len(r.Kept)+len(r.Failed)+len(r.Recovered) != 0) {
				t.Errorf("gc after stopped calls: %+v, %v", r, err)
			}
		})
	}
}

// Projects, HasGolden and SessionInfo on every backend; a process in the session makes it in
// use.
func TestQueries(t *testing.T) {
	for _, f := range filesystems(t) {
		t.Run(f.name, func(t *testing.T) {
			root, srcDir := cacheRoot(t, f)
			project := "go-q-" + time.Now().Format("150405.000000")
			golden := filepath.Join(srcDir, "golden")
			writeFile(t, filepath.Join(golden, "v"), "1")
			c, err := Open(root)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if has, err := c.HasGolden(project); err != nil || has {
				t.Fatalf("HasGolden before import: %v, %v", has, err)
			}
			if _, err := c.HasGolden("../x"); !errors.Is(err, ErrInvalidName) {
				t.Errorf("HasGolden of a bad name: %v", err)
			}
			if _, err := c.Import(project, golden); err != nil {
				t.Fatal(err)
			}
			if has, err := c.HasGolden(project); err != nil || !has {
				t.Fatalf("HasGolden after import: %v, %v", has, err)
			}
			list, err := c.Projects()
			found := false
			for _, p := range list {
				found = found || p == project
			}
			if err != nil || !found {
				t.Fatalf("Projects: %v, %v", list, err)
			}
			path, err := c.SetupSession(project, "s1")
			if err != nil {
				t.Fatal(err)
			}
			info, err := c.SessionInfo(project, "s1")
			if err != nil || info.Path != path || info.Generation != 1 || info.InUse || time.Since(info.CreatedAt) > time.Hour {
				t.Fatalf("SessionInfo: %+v, %v", info, err)
			}
			user := exec.Command("sleep", "600")
			user.Dir = path
			if err := user.Start(); err != nil {
				t.Fatal(err)
			}
			busy, err := c.SessionInfo(project, "s1")
			_ = user.Process.Kill()
			_ = user.Wait()
			if err != nil || !busy.InUse {
				t.Errorf("SessionInfo with a process inside: %+v, %v", busy, err)
			}
			if _, err := c.SessionInfo(project, "s2"); !errors.Is(err, ErrNotFound) {
				t.Errorf("SessionInfo of an unknown session: %v", err)
			}
			if err := c.CleanupSession(project, "s1"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// PromoteSessionWithOptions drops paths, runs the edit func and consumes the session on every
// backend; an edit func's error (matched by errors.Is), panic or runtime.Goexit commits nothing
// and gives the session back whole.
func TestPromoteWithOptions(t *testing.T) {
	for _, f := range filesystems(t) {
		t.Run(f.name, func(t *testing.T) {
			root, srcDir := cacheRoot(t, f)
			project := "go-edit-" + time.Now().Format("150405.000000")
			golden := filepath.Join(srcDir, "golden")
			writeFile(t, filepath.Join(golden, "version"), "1")
			writeFile(t, filepath.Join(golden, "image", "layer"), "layer")
			c, err := Open(root)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Import(project, golden); err != nil {
				t.Fatal(err)
			}
			s1, err := c.SetupSession(project, "s1")
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(s1, "version"), "2")
			writeFile(t, filepath.Join(s1, "containers", "c1", "config.v2.json"), "{}")
			writeFile(t, filepath.Join(s1, "network", "files", "local-kv.db"), "kv")
			drop := []string{"containers", "network", "buildx"}
			generationIs := func(want uint64) {
				t.Helper()
				if info, err := c.Info(project); err != nil || info.Generation != want {
					t.Fatalf("generation: %+v, %v (want %d)", info, err, want)
				}
			}
			sessionWhole := func() {
				t.Helper()
				if readFile(t, filepath.Join(s1, "version")) != "2" || !exists(filepath.Join(s1, "containers", "c1", "config.v2.json")) || !exists(filepath.Join(s1, "network", "files", "local-kv.db")) {
					t.Fatal("the session did not come back whole")
				}
			}

			if _, err := c.PromoteSessionWithOptions(context.Background(), project, "s1", PromoteOptions{Consume: true, Drop: []string{"../x"}}); !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("drop ../x: %v", err)
			}
			if _, err := c.PromoteSessionWithOptions(context.Background(), project, "s1", PromoteOptions{Consume: true, Drop: []string{"a\x00b"}}); !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("drop with NUL: %v", err)
			}
			versionCheck := errors.New("version check failed")
			var sawContainers bool
			_, err = c.PromoteSessionWithOptions(context.Background(), project, "s1", PromoteOptions{
				Consume: true, Drop: drop,
				Edit: func(tree string, g uint64) error {
					sawContainers = exists(filepath.Join(tree, "containers"))
					return versionCheck
				},
			})
			if !errors.Is(err, ErrEditFailed) || !errors.Is(err, versionCheck) || !strings.Contains(err.Error(), "version check") {
				t.Fatalf("failing edit: %v", err)
			}
			if sawContainers {
				t.Error("the edit func ran before the drops")
			}
			generationIs(1)
			sessionWhole()
			// A panic and a Goexit in the edit func go on in the caller; nothing is committed.
			func() {
				defer func() {
					if r := recover(); r != "edit boom" {
						t.Fatalf("recovered %v", r)
					}
				}()
				_, _ = c.PromoteSessionWithOptions(context.Background(), project, "s1", PromoteOptions{Consume: true, Drop: drop, Edit: func(string, uint64) error { panic("edit boom") }})
				t.Error("returned after its edit func panicked")
			}()
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _ = c.PromoteSessionWithOptions(context.Background(), project, "s1", PromoteOptions{Consume: true, Drop: drop, Edit: func(string, uint64) error { runtime.Goexit(); return nil }})
				t.Error("returned after its edit func called Goexit")
			}()
			<-done
			generationIs(1)
			sessionWhole()

			calls := 0
			var editedGen uint64
			g, err := c.PromoteSessionWithOptions(context.Background(), project, "s1", PromoteOptions{
				Consume: true, Drop: drop,
				Edit: func(tree string, g uint64) error {
					editedGen = g
					return os.WriteFile(filepath.Join(tree, "golden-version"), []byte("v2"), 0o644)
				},
				OnProgress: func(int64, int64) { calls++ },
			})
			if err != nil || g != 2 || editedGen != 2 || calls < 1 {
				t.Fatalf("promote: %d, %v (edit saw %d, %d progress calls)", g, err, editedGen, calls)
			}
			if _, err := c.SessionInfo(project, "s1"); !errors.Is(err, ErrNotFound) || exists(s1) {
				t.Fatalf("the consumed session is left: %v", err)
			}
			s2, err := c.SetupSession(project, "s2")
			if err != nil {
				t.Fatal(err)
			}
			if readFile(t, filepath.Join(s2, "version")) != "2" || readFile(t, filepath.Join(s2, "golden-version")) != "v2" || !exists(filepath.Join(s2, "image", "layer")) {
				t.Fatal("the new generation lacks the session's tree or the edit")
			}
			if exists(filepath.Join(s2, "containers")) || exists(filepath.Join(s2, "network")) {
				t.Fatal("dropped paths are in the new generation")
			}
			if err := c.CleanupSession(project, "s2"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// DeleteProject on every backend: ErrBusy while this process works in a session (nothing
// changed), then the project is gone and its name can be imported again.
func TestDeleteProject(t *testing.T) {
	for _, f := range filesystems(t) {
		t.Run(f.name, func(t *testing.T) {
			root, srcDir := cacheRoot(t, f)
			project := "go-del-" + time.Now().Format("150405.000000")
			golden := filepath.Join(srcDir, "golden")
			writeFile(t, filepath.Join(golden, "v"), "1")
			c, err := Open(root)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.DeleteProject(project); !errors.Is(err, ErrNotFound) {
				t.Fatalf("delete of an unknown project: %v", err)
			}
			if _, err := c.Import(project, golden); err != nil {
				t.Fatal(err)
			}
			s1, err := c.SetupSession(project, "s1")
			if err != nil {
				t.Fatal(err)
			}
			user := exec.Command("sleep", "600")
			user.Dir = s1
			if err := user.Start(); err != nil {
				t.Fatal(err)
			}
			err = c.DeleteProject(project)
			_ = user.Process.Kill()
			_ = user.Wait()
			if !errors.Is(err, ErrBusy) || readFile(t, filepath.Join(s1, "v")) != "1" {
				t.Fatalf("delete while in use: %v", err)
			}
			if err := c.DeleteProject(project); err != nil {
				t.Fatal(err)
			}
			if has, err := c.HasGolden(project); err != nil || has || exists(s1) {
				t.Fatalf("after delete: has %v, %v, session left %v", has, err, exists(s1))
			}
			if g, err := c.Import(project, golden); err != nil || g != 1 {
				t.Fatalf("import again: %d, %v", g, err)
			}
			if err := c.DeleteProject(project); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The example program (example/devcache), shaped like the service, runs on every backend.
func TestExampleProgram(t *testing.T) {
	// Built here, or (in the ZFS guest, which has no Go toolchain) by tests/zfs-vm.sh.
	bin := os.Getenv("GOLDCLONE_EXAMPLE_BIN")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "devcache")
		build := exec.Command("go", "build", "-o", bin, "./example/devcache")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build ./example/devcache: %v\n%s", err, out)
		}
	}
	for _, f := range filesystems(t) {
		t.Run(f.name, func(t *testing.T) {
			root, srcDir := cacheRoot(t, f)
			source := filepath.Join(srcDir, "docker")
			writeFile(t, filepath.Join(source, "image", "overlay2", "repositories.json"), "{}")
			writeFile(t, filepath.Join(source, "network", "files", "local-kv.db"), "kv")
			project := "go-example-" + time.Now().Format("150405.000000")
			out, err := exec.Command(bin, "-root", root, "-source", source, "-project", project).CombinedOutput()
			if err != nil {
				t.Fatalf("devcache: %v\n%s", err, out)
			}
			for _, want := range []string{
				"imported generation 1",
				"Unpacking build cache (",
				"promoted build-1 to generation 2",
				"session dev-1: golden-version 2, new layer true, containers/ false",
				"session dev-1: generation 2, in use false",
				"deleted " + project,
			} {
				if !strings.Contains(string(out), want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// SetLogger: the backend decision reaches the slog logger with its target; a handler that
// panics loses its record but not the process; nil makes the library silent again.
func TestSetLogger(t *testing.T) {
	var mu sync.Mutex
	var buf strings.Builder
	h := slog.NewTextHandler(&lockedWriter{mu: &mu, w: &buf}, &slog.HandlerOptions{Level: slog.LevelInfo})
	SetLogger(slog.New(h))
	defer SetLogger(nil)
	root := scratch(t, fsPath(t, "ext4"), "log")
	c, err := Open(root, WithBackend(BackendCopy))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	mu.Lock()
	got := buf.String()
	mu.Unlock()
	if !strings.Contains(got, "copy backend") || !strings.Contains(got, "target=goldclone::backend") || !strings.Contains(got, "level=INFO") {
		t.Fatalf("log lacks the backend decision:\n%s", got)
	}
	SetLogger(slog.New(panicking{}))
	if c, err := Open(root, WithBackend(BackendCopy)); err != nil {
		t.Fatalf("open with a panicking log handler: %v", err)
	} else {
		c.Close()
	}
	SetLogger(nil)
	mu.Lock()
	buf.Reset()
	mu.Unlock()
	if c, err := Open(root, WithBackend(BackendCopy)); err == nil {
		c.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if buf.Len() != 0 {
		t.Fatalf("logged after SetLogger(nil):\n%s", buf.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

type panicking struct{}

func (panicking) Enabled(context.Context, slog.Level) bool  { return true }
func (panicking) Handle(context.Context, slog.Record) error { panic("log handler boom") }
func (p panicking) WithAttrs([]slog.Attr) slog.Handler      { return p }
func (p panicking) WithGroup(string) slog.Handler           { return p }

// SetupOrReuseSession makes a session once and gives the same one back afterwards.
func TestSetupOrReuseSession(t *testing.T) {
	c, project, _ := importedCache(t, "go-reuse-")
	defer c.Close()
	path, reused, err := c.SetupOrReuseSession(context.Background(), project, "s1", nil)
	if err != nil || reused {
		t.Fatalf("first: %q %v %v", path, reused, err)
	}
	writeFile(t, filepath.Join(path, "work"), "kept")
	again, reused, err := c.SetupOrReuseSession(context.Background(), project, "s1", nil)
	if err != nil || !reused || again != path || readFile(t, filepath.Join(again, "work")) != "kept" {
		t.Fatalf("again: %q %v %v", again, reused, err)
	}
	if _, err := c.SetupSession(project, "s1"); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("plain setup of an existing session: %v", err)
	}
	if err := c.CleanupSession(project, "s1"); err != nil {
		t.Fatal(err)
	}
}

// A session at a path the caller chose: shown there, reused there, refused where the path is
// bad (nothing made), and taken away with its directory by CleanupSession.
func TestSetupSessionAt(t *testing.T) {
	c, project, root := importedCache(t, "go-at-")
	defer c.Close()
	ctx := context.Background()
	at := filepath.Join(t.TempDir(), "docker-data-1", "docker")
	if err := os.Mkdir(filepath.Dir(at), 0o755); err != nil {
		t.Fatal(err)
	}
	path, reused, err := c.SetupSessionWithOptions(ctx, project, "s1", SetupOptions{At: at})
	if err != nil || reused || path != at {
		t.Fatalf("setup at %s: %q %v %v", at, path, reused, err)
	}
	if readFile(t, filepath.Join(at, "x")) != "x" {
		t.Fatal("the session's tree is not shown at its path")
	}
	info, err := c.SessionInfo(project, "s1")
	if err != nil || info.Path != at || !info.Shown || info.InUse {
		t.Fatalf("info: %+v %v", info, err)
	}
	again, reused, err := c.SetupSessionWithOptions(ctx, project, "s1", SetupOptions{At: at, Reuse: true})
	if err != nil || !reused || again != at {
		t.Fatalf("reuse: %q %v %v", again, reused, err)
	}
	bad := map[string]error{
		"relative/s2":                 ErrInvalidArgument,
		filepath.Join(root, "s2"):     ErrInvalidArgument,
		filepath.Join(at, "s2"):       ErrInvalidArgument,
		at:                            ErrAlreadyExists,
		filepath.Join(at+"-no", "s2"): ErrNotFound,
		"/x\x00y":                     ErrInvalidArgument,
	}
	for p, want := range bad {
		if _, _, err := c.SetupSessionWithOptions(ctx, project, "s2", SetupOptions{At: p}); !errors.Is(err, want) {
			t.Errorf("setup at %q: %v, want %v", p, err, want)
		}
	}
	if _, err := c.SessionInfo(project, "s2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused setup left a session: %v", err)
	}
	if err := c.CleanupSession(project, "s1"); err != nil {
		t.Fatal(err)
	}
	if exists(at) {
		t.Fatal("cleanup left the session's path")
	}
}

// A lazy cleanup of a session in use: detached at once, its user keeps it, GC removes it
// once the user is gone.
func TestCleanupSessionLazily(t *testing.T) {
	c, project, _ := importedCache(t, "go-lazy-")
	defer c.Close()
	path, err := c.SetupSession(project, "s1")
	if err != nil {
		t.Fatal(err)
	}
	user := exec.Command("sleep", "600")
	user.Dir = path
	if err := user.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = user.Process.Kill(); _, _ = user.Process.Wait() }()
	if err := c.CleanupSession(project, "s1"); !errors.Is(err, ErrBusy) {
		t.Fatalf("plain cleanup of a session in use: %v", err)
	}
	detached, err := c.CleanupSessionWithOptions(project, "s1", CleanupOptions{Lazy: true})
	if err != nil || !detached {
		t.Fatalf("lazy cleanup: %v %v", detached, err)
	}
	if _, err := c.SessionInfo(project, "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a detached session is still listed: %v", err)
	}
	cwd := fmt.Sprintf("/proc/%d/cwd/x", user.Process.Pid)
	if readFile(t, cwd) != "x" {
		t.Fatal("the user lost its tree")
	}
	r, err := c.GC()
	if err != nil || len(r.Kept) == 0 {
		t.Fatalf("gc while the detached session is in use: %+v %v", r, err)
	}
	_ = user.Process.Kill()
	_, _ = user.Process.Wait()
	for i := 0; ; i++ {
		r, err := c.GC()
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Kept) == 0 && len(r.Failed) == 0 {
			break
		}
		if i == 100 {
			t.Fatalf("gc keeps the freed session: %+v", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if detached, err := c.CleanupSessionWithOptions(project, "s1", CleanupOptions{Lazy: true}); !errors.Is(err, ErrNotFound) || detached {
		t.Fatalf("cleanup of a session that is gone: %v %v", detached, err)
	}
}

// ImportNext makes a directory the next generation: ErrNotFound for an unknown project, a
// cancelled import changes nothing, the old session keeps its tree, a new one sees exactly the
// new tree, and progress is reported.
func TestImportNext(t *testing.T) {
	for _, f := range filesystems(t) {
		t.Run(f.name, func(t *testing.T) {
			root, srcDir := cacheRoot(t, f)
			project := "go-next-" + time.Now().Format("150405.000000")
			first := filepath.Join(srcDir, "first")
			writeFile(t, filepath.Join(first, "v"), "1")
			writeFile(t, filepath.Join(first, "only-in-1"), "old")
			second := filepath.Join(srcDir, "second")
			writeFile(t, filepath.Join(second, "v"), "2")
			c, err := Open(root)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.ImportNext(context.Background(), project, second, nil); !errors.Is(err, ErrNotFound) {
				t.Fatalf("import next of an unknown project: %v", err)
			}
			if _, err := c.Import(project, first); err != nil {
				t.Fatal(err)
			}
			s1, err := c.SetupSession(project, "s1")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if _, err := c.ImportNext(ctx, project, second, nil); err == nil {
				t.Fatal("a cancelled import next succeeded")
			}
			if info, err := c.Info(project); err != nil || info.Generation != 1 {
				t.Fatalf("after a cancelled import: %+v, %v", info, err)
			}
			var reports int
			g, err := c.ImportNext(context.Background(), project, second, func(copied, total int64) { reports++ })
			if err != nil || g != 2 {
				t.Fatalf("import next: %d, %v", g, err)
			}
			if readFile(t, filepath.Join(s1, "v")) != "1" || !exists(filepath.Join(s1, "only-in-1")) {
				t.Fatal("the old session changed")
			}
			s2, err := c.SetupSession(project, "s2")
			if err != nil {
				t.Fatal(err)
			}
			if readFile(t, filepath.Join(s2, "v")) != "2" || exists(filepath.Join(s2, "only-in-1")) {
				t.Fatal("the new session is not exactly the new tree")
			}
			if reports == 0 {
				t.Error("no progress reported")
			}
			if err := c.DeleteProject(project); err != nil {
				t.Fatal(err)
			}
		})
	}
}
