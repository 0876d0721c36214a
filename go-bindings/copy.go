package goldclone

/*
#include <stdint.h>
#include "goldclone.h"
#include "shim.h"
*/
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"runtime/cgo"
	"sync"
	"time"
)

// Progress is a snapshot of a running copy.
type Progress struct {
	Entries, Bytes           uint64
	TotalEntries, TotalBytes uint64
	TotalsKnown              bool
	// Finished is set on the last report, made after the copy succeeded.
	Finished bool
}

// CopyOptions tune CopyTreeWithOptions; the zero value is the defaults.
type CopyOptions struct {
	// Threads is the number of worker threads, at most 1024 (more is ErrInvalidArgument). 0 (the default) adapts: one per
	// CPU while the source is read from memory, twice that (4 to 32) while it is read from storage.
	Threads int
	// Sync makes the copy durable (syncfs) before it appears at dst.
	Sync bool
	// CloneMinSize: files smaller than this are written instead of reflinked (0 = clone all).
	CloneMinSize uint64
	// OnProgress, if set, is called once before the copy starts, every ProgressInterval while
	// it runs, and once after it succeeded, each time on a goroutine of its own while the
	// calling goroutine waits (so one call at a time). It must not block for long (the copy
	// goes on meanwhile, but cancellation is noticed between reports). If it panics or calls
	// runtime.Goexit, the copy is cancelled (unless it had finished: the last report) and the
	// panic or Goexit goes on in the calling goroutine when the copy has returned.
	OnProgress func(Progress)
	// ProgressInterval between reports (0 = 100ms).
	ProgressInterval time.Duration
}

// CopyStats is what a finished copy did.
type CopyStats struct {
	Entries, Files, Dirs, Symlinks, Specials, Hardlinks uint64
	Bytes                                               uint64
	Cloned, CopyFileRange, Sparse, ReadWrite            uint64
	Threads                                             int
	Elapsed                                             time.Duration
}

type copyState struct {
	ctx        context.Context
	onProgress func(Progress)
	// What ended the callback abnormally, re-raised on the caller's goroutine once the C call
	// has returned: a panic value, or a runtime.Goexit (what t.Fatal does).
	panicked interface{}
	goexited bool
}

// report runs the Go callback (guarded); a panic or Goexit cancels the copy, and copyTree
// re-raises it when the C call has returned.
func (st *copyState) report(p Progress) (cancel int) {
	if st.onProgress != nil && st.panicked == nil && !st.goexited {
		st.panicked, st.goexited = guarded(func() { st.onProgress(p) })
	}
	if st.panicked != nil || st.goexited || st.ctx.Err() != nil {
		return 1
	}
	return 0
}

// guarded runs a caller's func for a C callback on a goroutine of its own and waits for it:
// a panic there is caught and returned (it must not unwind through C), and a runtime.Goexit
// ends only that goroutine (ending the thread that is inside the C call would crash the process
// while the library's threads still run). The caller re-raises either once the C call has
// returned.
func guarded(f func()) (panicked interface{}, goexited bool) {
	done := make(chan struct{})
	go func() {
		normal := false
		defer func() {
			if !normal {
				if r := recover(); r != nil {
					panicked = r
				} else {
					goexited = true
				}
			}
			close(done)
		}()
		f()
		normal = true
	}()
	<-done
	return panicked, goexited
}

// CopyTree copies the directory tree src to dst exactly (cp -a semantics, file data reflinked
// where the filesystem can). dst must not exist; its parent must. On any error, cancellation
// included, nothing is left at dst. onProgress (may be nil) gets the bytes copied so far and
// the total bytes (-1 until known), one call at a time (see CopyOptions.OnProgress). Cancelling
// ctx stops the copy with an error matching ErrCancelled and ctx's error (context.Canceled or
// context.DeadlineExceeded).
func CopyTree(ctx context.Context, src, dst string, onProgress func(copied, total int64)) error {
	opts := CopyOptions{OnProgress: byteProgress(onProgress)}
	_, err := copyTree(ctx, src, dst, &opts, onProgress != nil)
	return err
}

// CopyTreeWithOptions is CopyTree with all options and the statistics of the copy.
func CopyTreeWithOptions(ctx context.Context, src, dst string, opts CopyOptions) (*CopyStats, error) {
	return copyTree(ctx, src, dst, &opts, false)
}

func copyTree(ctx context.Context, src, dst string, opts *CopyOptions, countTotals bool) (*CopyStats, error) {
	const op = "CopyTree"
	if opts.Threads < 0 || opts.Threads > maxThreads {
		return nil, goError(op, ResultInvalidArgument, fmt.Sprintf("%d threads (at most %d)", opts.Threads, maxThreads))
	}
	ctx, err := liveContext(op, ctx)
	if err != nil {
		return nil, err
	}
	csrc, err := cString(op, "src", src, ResultInvalidArgument)
	if err != nil {
		return nil, err
	}
	defer free(csrc)
	cdst, err := cString(op, "dst", dst, ResultInvalidArgument)
	if err != nil {
		return nil, err
	}
	defer free(cdst)

	var o C.goldclone_copy_options
	C.goldclone_copy_options_init(&o)
	o.threads = C.uint32_t(opts.Threads)
	o.sync = C.bool(opts.Sync)
	o.count_totals = C.bool(countTotals)
	o.clone_min_size = C.uint64_t(opts.CloneMinSize)
	o.progress_interval_ms = C.uint32_t(opts.ProgressInterval / time.Millisecond)

	w, err := newWatcher(op, ctx, opts.OnProgress)
	if err != nil {
		return nil, err
	}
	defer w.close()
	o.cancel = w.cancel
	if w.callback {
		C.goldclone_go_set_progress(&o, C.uintptr_t(w.h))
	}

	var stats C.goldclone_copy_stats
	err = w.finish(call(op, func() C.goldclone_result { return C.goldclone_copy_tree(csrc, cdst, &o, &stats) }))
	if err != nil {
		return nil, err
	}
	return &CopyStats{
		Entries:       uint64(stats.entries),
		Files:         uint64(stats.files),
		Dirs:          uint64(stats.dirs),
		Symlinks:      uint64(stats.symlinks),
		Specials:      uint64(stats.specials),
		Hardlinks:     uint64(stats.hardlinks),
		Bytes:         uint64(stats.bytes),
		Cloned:        uint64(stats.cloned),
		CopyFileRange: uint64(stats.copy_file_range),
		Sparse:        uint64(stats.sparse),
		ReadWrite:     uint64(stats.read_write),
		Threads:       int(stats.threads),
		Elapsed:       time.Duration(stats.elapsed_ns),
	}, nil
}

// liveContext is ctx (Background for nil), or the error of a call whose ctx has ended already.
func liveContext(op string, ctx context.Context) (context.Context, error) {
	if ctx == nil {
		return context.Background(), nil
	}
	if err := ctx.Err(); err != nil {
		return nil, &Error{Code: ResultCancelled, Op: op, Message: "cancelled: " + err.Error(), ctxErr: err}
	}
	return ctx, nil
}

// watcher connects a ctx and a progress func to one C call: a cancel handle that a goroutine
// cancels when ctx is done (so a call stuck between progress reports stops promptly), and the
// state behind the progress callback, reached from C through a cgo.Handle.
type watcher struct {
	ctx      context.Context
	cancel   *C.goldclone_cancel
	st       *copyState
	h        cgo.Handle
	callback bool // whether the C call gets the callback (something to report or a ctx to watch)
	done     chan struct{}
	wg       sync.WaitGroup
}

func newWatcher(op string, ctx context.Context, onProgress func(Progress)) (*watcher, error) {
	w := &watcher{ctx: ctx, st: &copyState{ctx: ctx, onProgress: onProgress}, done: make(chan struct{})}
	if err := call(op, func() C.goldclone_result { return C.goldclone_cancel_new(&w.cancel) }); err != nil {
		return nil, err
	}
	if ctx.Done() != nil {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			select {
			case <-ctx.Done():
				C.goldclone_cancel_cancel(w.cancel)
			case <-w.done:
			}
		}()
	}
	if onProgress != nil || ctx.Done() != nil {
		w.callback = true
		w.h = cgo.NewHandle(w.st)
	}
	return w, nil
}

// finish takes the C call's error: it re-raises a panic or Goexit of the callback on this
// goroutine, and says which context ended a cancelled call.
func (w *watcher) finish(err error) error {
	runtime.KeepAlive(w.st)
	if w.st.panicked != nil {
		panic(w.st.panicked)
	}
	if w.st.goexited {
		runtime.Goexit()
	}
	if e, ok := err.(*Error); ok && e.Code == ResultCancelled && w.ctx.Err() != nil {
		e.Message = e.Message + " (" + w.ctx.Err().Error() + ")"
		e.ctxErr = w.ctx.Err()
	}
	return err
}

// close stops the ctx goroutine, then frees the handle and the cancel handle it may use.
func (w *watcher) close() {
	close(w.done)
	w.wg.Wait()
	if w.callback {
		w.h.Delete()
	}
	C.goldclone_cancel_free(w.cancel)
}

// byteProgress adapts the callers' onProgress(copied, total) (total -1 until known).
func byteProgress(onProgress func(copied, total int64)) func(Progress) {
	if onProgress == nil {
		return nil
	}
	return func(p Progress) {
		total := int64(-1)
		if p.TotalsKnown {
			total = int64(p.TotalBytes)
		}
		onProgress(int64(p.Bytes), total)
	}
}
