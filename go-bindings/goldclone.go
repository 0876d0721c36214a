package goldclone

/*
#cgo CFLAGS: -I${SRCDIR}/../include
#cgo LDFLAGS: -L${SRCDIR}/../target/release -l:libgoldclone.a -lgcc_s -lutil -lrt -lpthread -lm -ldl
#include <stdlib.h>
#include "goldclone.h"
#include "shim.h"
*/
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"runtime/cgo"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// pathBufSize holds any path the library returns.
const pathBufSize = C.GOLDCLONE_PATH_BUF_SIZE

// Version is the library version, e.g. "0.1.0".
func Version() string { return C.GoString(C.goldclone_version()) }

// ABIVersion is the C ABI version of the linked library; it equals HeaderABIVersion when the
// header and the library match.
func ABIVersion() uint32 { return uint32(C.goldclone_abi_version()) }

// HeaderABIVersion is the C ABI version of the header this package was built with.
const HeaderABIVersion uint32 = C.GOLDCLONE_ABI_VERSION

// call runs one C call on a locked OS thread, so that the thread-local last error read
// afterwards is the one this call set, and turns a failure into *Error.
func call(op string, f func() C.goldclone_result) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if rc := f(); rc != C.GOLDCLONE_RESULT_OK {
		return lastError(op, Result(rc))
	}
	return nil
}

// lastError reads the calling thread's last error; the caller holds the OS thread.
func lastError(op string, code Result) *Error {
	e := &Error{Code: code, Op: op, Errno: syscall.Errno(C.goldclone_last_error_errno())}
	buf := make([]byte, 512)
	for {
		var n C.size_t
		rc := C.goldclone_last_error_message((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &n)
		if rc == C.GOLDCLONE_RESULT_BUFFER_TOO_SMALL && int(n) >= len(buf) {
			buf = make([]byte, int(n)+1)
			continue
		}
		e.Message = string(buf[:int(n)])
		return e
	}
}

// goError is an *Error made on the Go side (a string that cannot be passed to C).
func goError(op string, code Result, msg string) error {
	return &Error{Code: code, Op: op, Message: msg}
}

// cString copies s for C; strings with NUL bytes cannot be passed (C would see them cut).
func cString(op, what, s string, code Result) (*C.char, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return nil, goError(op, code, what+" contains a NUL byte")
	}
	return C.CString(s), nil
}

func free(p *C.char) { C.free(unsafe.Pointer(p)) }

// readString calls f with growing buffers until the string fits.
func readString(op string, size int, f func(buf *C.char, n C.size_t, out *C.size_t) C.goldclone_result) (string, error) {
	buf := make([]byte, size)
	for {
		var n C.size_t
		var tooSmall bool
		err := call(op, func() C.goldclone_result {
			rc := f((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &n)
			if rc == C.GOLDCLONE_RESULT_BUFFER_TOO_SMALL && int(n) >= len(buf) {
				tooSmall = true
				return C.GOLDCLONE_RESULT_OK
			}
			return rc
		})
		if err != nil {
			return "", err
		}
		if tooSmall {
			buf = make([]byte, int(n)+1)
			continue
		}
		return string(buf[:int(n)]), nil
	}
}

// Backend is the primitive a cache uses for session copies.
type Backend uint32

// Backends: the header's constants (generated from the library's list).
const (
	BackendAuto  = Backend(C.GOLDCLONE_BACKEND_AUTO) // only for WithBackend: detect from the root
	BackendZFS   = Backend(C.GOLDCLONE_BACKEND_ZFS)
	BackendZvol  = Backend(C.GOLDCLONE_BACKEND_ZVOL)
	BackendBtrfs = Backend(C.GOLDCLONE_BACKEND_BTRFS)
	BackendCopy  = Backend(C.GOLDCLONE_BACKEND_COPY)
	BackendImage = Backend(C.GOLDCLONE_BACKEND_IMAGE)
)

// String is the library's name for the backend ("zfs", "auto", ...), or "unknown".
func (b Backend) String() string {
	return C.GoString(C.goldclone_backend_name(C.uint32_t(b)))
}

type openOptions struct {
	backend       Backend
	copyThreads   int
	zvolSize      uint64
	zvolBlockSize uint64
	imageSize     uint64
}

// Option configures Open.
type Option func(*openOptions)

// WithBackend forces a backend instead of detecting one from the root.
func WithBackend(b Backend) Option {
	return func(o *openOptions) { o.backend = b }
}

// maxThreads is the library's limit on worker threads.
const maxThreads = 1024

// WithCopyThreads sets the worker threads of the copy backend (0 = default, at most 1024).
func WithCopyThreads(n int) Option {
	return func(o *openOptions) { o.copyThreads = n }
}

// WithZvolSize sets the size in bytes of a project's first volume on the zvol backend, which
// every session of the project gets too (0 = four times the imported tree, at least 16 GiB;
// volumes are sparse, only written blocks use space).
func WithZvolSize(bytes uint64) Option {
	return func(o *openOptions) { o.zvolSize = bytes }
}

// WithZvolBlockSize sets the volblocksize of new volumes on the zvol backend: a power of two
// from 4096 to 131072 (ErrInvalidArgument otherwise); 0 = 8192.
func WithZvolBlockSize(bytes uint64) Option {
	return func(o *openOptions) { o.zvolBlockSize = bytes }
}

// WithImageSize sets the size in bytes of a new generation's image on the image backend, which
// every session made from it gets too (0 = four times the imported tree, at least 16 GiB, at
// most the root's filesystem; images are sparse). At least 512 MiB: ErrInvalidArgument
// otherwise.
func WithImageSize(bytes uint64) Option {
	return func(o *openOptions) { o.imageSize = bytes }
}

// Cache is a golden-tree cache rooted at a directory. Safe for concurrent use.
type Cache struct {
	ptr  atomic.Pointer[cacheRef]
	root string
}

// cacheRef holds the C handle: an incomplete C type cannot be atomic.Pointer's type argument.
type cacheRef struct{ p *C.goldclone_cache }

// Open opens (creating its state if needed) the cache at root, an existing directory, and
// finishes or rolls back what a crashed process left half done.
func Open(root string, opts ...Option) (*Cache, error) {
	const op = "Open"
	var oo openOptions
	for _, opt := range opts {
		opt(&oo)
	}
	if oo.copyThreads < 0 || oo.copyThreads > maxThreads {
		return nil, goError(op, ResultInvalidArgument, fmt.Sprintf("%d copy threads (at most %d)", oo.copyThreads, maxThreads))
	}
	var o C.goldclone_open_options
	C.goldclone_open_options_init(&o)
	o.backend = C.uint32_t(oo.backend)
	o.copy_threads = C.uint32_t(oo.copyThreads)
	o.zvol_size = C.uint64_t(oo.zvolSize)
	o.zvol_block_size = C.uint64_t(oo.zvolBlockSize)
	o.image_size = C.uint64_t(oo.imageSize)
	croot, err := cString(op, "root", root, ResultInvalidArgument)
	if err != nil {
		return nil, err
	}
	defer free(croot)
	var p *C.goldclone_cache
	if err := call(op, func() C.goldclone_result { return C.goldclone_cache_open(croot, &o, &p) }); err != nil {
		return nil, err
	}
	c := &Cache{root: root}
	c.ptr.Store(&cacheRef{p})
	runtime.SetFinalizer(c, func(c *Cache) { _ = c.Close() })
	return c, nil
}

var errClosed = func(op string) error {
	return &Error{Code: ResultInvalidHandle, Op: op, Message: "cache is closed"}
}

// handle returns the live C handle or an ErrInvalidHandle error.
func (c *Cache) handle(op string) (*C.goldclone_cache, error) {
	if c == nil {
		return nil, &Error{Code: ResultNullParameter, Op: op, Message: "nil *Cache"}
	}
	ref := c.ptr.Load()
	if ref == nil {
		return nil, errClosed(op)
	}
	return ref.p, nil
}

// Close releases the cache. Calls running on it in other goroutines finish first; later
// calls fail with ErrInvalidHandle. Closing twice is fine.
func (c *Cache) Close() error {
	if c == nil {
		return nil
	}
	ref := c.ptr.Swap(nil)
	if ref == nil {
		return nil
	}
	runtime.SetFinalizer(c, nil)
	return call("Close", func() C.goldclone_result { return C.goldclone_cache_free(ref.p) })
}

// Root is the root directory the cache was opened with ("" for a nil *Cache).
func (c *Cache) Root() string {
	if c == nil {
		return ""
	}
	return c.root
}

// Backend is the backend the cache uses.
func (c *Cache) Backend() (Backend, error) {
	const op = "Backend"
	p, err := c.handle(op)
	if err != nil {
		return 0, err
	}
	var b C.goldclone_backend
	err = call(op, func() C.goldclone_result { return C.goldclone_cache_backend(p, &b) })
	runtime.KeepAlive(c)
	return Backend(b), err
}

// names converts a project and session id for C.
func names(op, project, session string) (*C.char, *C.char, error) {
	cp, err := cString(op, "project id", project, ResultInvalidName)
	if err != nil {
		return nil, nil, err
	}
	cs, err := cString(op, "session id", session, ResultInvalidName)
	if err != nil {
		free(cp)
		return nil, nil, err
	}
	return cp, cs, nil
}

// Import makes the directory dir generation 1 of a new project and returns the generation.
func (c *Cache) Import(projectID, dir string) (uint64, error) {
	return c.ImportContext(context.Background(), projectID, dir, nil)
}

// ImportContext is Import with progress and cancellation: onProgress (may be nil) gets the
// bytes copied and the total (-1 until known); cancelling ctx stops the import with an error
// matching ErrCancelled and ctx's error, and then no project was made.
func (c *Cache) ImportContext(ctx context.Context, projectID, dir string, onProgress func(copied, total int64)) (uint64, error) {
	return c.importDir("Import", ctx, projectID, dir, onProgress, false)
}

// ImportNext makes dir the next generation of the existing project projectID, as a promote
// makes a session one: sessions keep the generation they were made from, new sessions get this
// one, and the previous generation goes once no session uses it. Progress and cancellation as
// ImportContext (a cancelled import changes nothing; on ZFS and zvol a cancel that comes after
// the new head's first lzc_promote is too late, and the import succeeds); ErrNotFound if the
// project does not exist.
func (c *Cache) ImportNext(ctx context.Context, projectID, dir string, onProgress func(copied, total int64)) (uint64, error) {
	return c.importDir("ImportNext", ctx, projectID, dir, onProgress, true)
}

// importDir is Import (next false) and ImportNext (next true).
func (c *Cache) importDir(op string, ctx context.Context, projectID, dir string, onProgress func(copied, total int64), next bool) (uint64, error) {
	ctx, err := liveContext(op, ctx)
	if err != nil {
		return 0, err
	}
	p, err := c.handle(op)
	if err != nil {
		return 0, err
	}
	cp, err := cString(op, "project id", projectID, ResultInvalidName)
	if err != nil {
		return 0, err
	}
	defer free(cp)
	cd, err := cString(op, "dir", dir, ResultInvalidArgument)
	if err != nil {
		return 0, err
	}
	defer free(cd)
	var g C.uint64_t
	err = c.watched(op, ctx, onProgress, func(o *C.goldclone_op_options) C.goldclone_result {
		if next {
			return C.goldclone_cache_import_next(p, cp, cd, o, &g)
		}
		return C.goldclone_cache_import_with(p, cp, cd, o, &g)
	})
	return uint64(g), err
}

// watched runs one lifecycle call with ctx and onProgress attached through its options.
func (c *Cache) watched(op string, ctx context.Context, onProgress func(copied, total int64), f func(*C.goldclone_op_options) C.goldclone_result) error {
	w, err := newWatcher(op, ctx, byteProgress(onProgress))
	if err != nil {
		return err
	}
	defer w.close()
	var o C.goldclone_op_options
	C.goldclone_op_options_init(&o)
	o.cancel = w.cancel
	if w.callback {
		C.goldclone_go_set_op_progress(&o, C.uintptr_t(w.h))
	}
	err = w.finish(call(op, func() C.goldclone_result { return f(&o) }))
	runtime.KeepAlive(c)
	return err
}

// SetupSession makes a private writable copy of the project's current generation for the
// session and returns its path.
func (c *Cache) SetupSession(projectID, sessionID string) (string, error) {
	return c.SetupSessionContext(context.Background(), projectID, sessionID, nil)
}

// SetupSessionContext is SetupSession with progress and cancellation: onProgress (may be nil)
// gets the bytes copied and the total (-1 until known; a snapshot or clone reports only its
// start and end); cancelling ctx stops the setup with an error matching ErrCancelled and ctx's
// error, and then no session exists. onProgress must not call the cache for the same project
// (the setup's commit waits for it). If it panics on its last report, made after the setup
// succeeded, the panic goes on in this goroutine and the session exists: clean it up.
func (c *Cache) SetupSessionContext(ctx context.Context, projectID, sessionID string, onProgress func(copied, total int64)) (string, error) {
	path, _, err := c.setup("SetupSession", ctx, projectID, sessionID, SetupOptions{OnProgress: onProgress})
	return path, err
}

// SetupOrReuseSession is SetupSessionContext, but a session that exists already is returned
// as it is (reused true) instead of ErrAlreadyExists; ErrDamaged if its tree is not the one
// recorded. A reused session keeps the generation it was made from (SessionInfo tells); one
// that a reboot unmounted (images, ZFS, zvol) is mounted at its place again.
func (c *Cache) SetupOrReuseSession(ctx context.Context, projectID, sessionID string, onProgress func(copied, total int64)) (path string, reused bool, err error) {
	return c.setup("SetupOrReuseSession", ctx, projectID, sessionID, SetupOptions{Reuse: true, OnProgress: onProgress})
}

// SetupOptions says how SetupSessionWithOptions sets a session up.
type SetupOptions struct {
	// At shows the session at this absolute path instead of ROOT/<project>/sessions/<id>.
	// Nothing may be there yet; its parent must be an existing directory reached without
	// symlinks, outside the cache root and outside other sessions (ErrInvalidArgument,
	// ErrAlreadyExists, ErrNotFound or ErrNotADirectory otherwise, with nothing changed).
	// goldclone makes the directory and bind-mounts the session there (any filesystem; needs
	// CAP_SYS_ADMIN); CleanupSession, a consuming promote, DeleteProject and recovery take
	// both away again. Empty: the session's place in the cache root.
	At string
	// Reuse returns an existing session of this name as it is (reused true) instead of
	// ErrAlreadyExists. With At, it must be the session's recorded path (ErrInvalidArgument
	// otherwise); a bind a reboot took is made again there.
	Reuse bool
	// OnProgress (may be nil) gets the bytes copied and the total, as for SetupSessionContext.
	OnProgress func(copied, total int64)
}

// SetupSessionWithOptions sets a session up as opts says (at a path of the caller's
// choosing, or reusing an existing one) and returns its path and whether it was there
// already; progress and cancellation as for SetupSessionContext.
func (c *Cache) SetupSessionWithOptions(ctx context.Context, projectID, sessionID string, opts SetupOptions) (path string, reused bool, err error) {
	return c.setup("SetupSessionWithOptions", ctx, projectID, sessionID, opts)
}

func (c *Cache) setup(op string, ctx context.Context, projectID, sessionID string, opts SetupOptions) (string, bool, error) {
	ctx, err := liveContext(op, ctx)
	if err != nil {
		return "", false, err
	}
	p, err := c.handle(op)
	if err != nil {
		return "", false, err
	}
	cp, cs, err := names(op, projectID, sessionID)
	if err != nil {
		return "", false, err
	}
	defer free(cp)
	defer free(cs)
	var so C.goldclone_setup_options
	C.goldclone_setup_options_init(&so)
	so.reuse = C.bool(opts.Reuse)
	if opts.At != "" {
		at, err := cString(op, "At", opts.At, ResultInvalidArgument)
		if err != nil {
			return "", false, err
		}
		defer free(at)
		so.at = at
	}
	// A buffer of GOLDCLONE_PATH_BUF_SIZE always suffices, so setup is never undone for lack
	// of room.
	buf := make([]byte, pathBufSize)
	var n C.size_t
	var reused C.bool
	err = c.watched(op, ctx, opts.OnProgress, func(o *C.goldclone_op_options) C.goldclone_result {
		out := (*C.char)(unsafe.Pointer(&buf[0]))
		return C.goldclone_cache_setup_with_options(p, cp, cs, &so, o, out, C.size_t(len(buf)), &n, &reused)
	})
	if err != nil {
		return "", false, err
	}
	return string(buf[:int(n)]), bool(reused), nil
}

// PromoteSession makes the session's tree the project's next generation and returns it.
// Sessions of older generations keep running unchanged.
func (c *Cache) PromoteSession(projectID, sessionID string) (generation uint64, err error) {
	return c.PromoteSessionContext(context.Background(), projectID, sessionID, nil)
}

// PromoteSessionContext is PromoteSession with progress and cancellation, as
// SetupSessionContext. On ZFS a promote stopped after its first lzc_promote can only go
// forward: it finishes and succeeds.
func (c *Cache) PromoteSessionContext(ctx context.Context, projectID, sessionID string, onProgress func(copied, total int64)) (generation uint64, err error) {
	return c.promote("PromoteSession", ctx, projectID, sessionID, PromoteOptions{OnProgress: onProgress})
}

// PromoteOptions says what PromoteSessionWithOptions does besides making the session's tree
// the project's next generation. The zero value is PromoteSessionContext without progress.
type PromoteOptions struct {
	// Consume takes the session itself: it is gone once the promote has succeeded. On the copy
	// backend its tree becomes the generation by a rename, whatever its size (ErrBusy if
	// something got into it meanwhile); btrfs and ZFS make the generation as always, then remove
	// the session (one that something has started using meanwhile stays). A promote that fails
	// gives the session back, its dropped paths restored (what Edit changed stays changed; on ZFS
	// and zvol the drops are final once Edit has returned).
	Consume bool
	// Drop lists paths relative to the tree's top ("containers", "overlay2/<id>") to leave out
	// of the new generation. Plain relative paths only (no "..", ".", leading "/"):
	// ErrInvalidArgument otherwise. A missing path is skipped; a symlink at a path is removed,
	// never followed; a path through a symlink fails the promote.
	Drop []string
	// Edit, if set, is called once with the writable tree that becomes the new generation and
	// its number, after Drop and before anything is committed, on a goroutine of its own while
	// the calling goroutine waits. An error fails the promote with an error matching
	// ErrEditFailed and the returned error; a panic or runtime.Goexit fails it too and goes on
	// in the calling goroutine once the promote has returned. On ZFS and zvol the tree is the
	// session's own, so Edit and Drop need Consume (ErrUnsupported otherwise). Edit must not
	// call the cache for the same project (its lock is held).
	Edit func(tree string, generation uint64) error
	// OnProgress is as for PromoteSessionContext.
	OnProgress func(copied, total int64)
}

// editState is what the C edit callback reaches through a cgo.Handle.
type editState struct {
	fn       func(tree string, generation uint64) error
	err      error
	panicked interface{}
	goexited bool
}

// edit runs the Go func (guarded); an error, panic or Goexit fails the promote.
func (st *editState) edit(tree string, generation uint64) int {
	st.panicked, st.goexited = guarded(func() { st.err = st.fn(tree, generation) })
	if st.err != nil || st.panicked != nil || st.goexited {
		return 1
	}
	return 0
}

// PromoteSessionWithOptions is PromoteSessionContext with edits of the new generation before
// it is committed and the session consumed if asked (see PromoteOptions). A failed, cancelled
// or edit-failed promote commits nothing.
func (c *Cache) PromoteSessionWithOptions(ctx context.Context, projectID, sessionID string, opts PromoteOptions) (generation uint64, err error) {
	return c.promote("PromoteSessionWithOptions", ctx, projectID, sessionID, opts)
}

func (c *Cache) promote(op string, ctx context.Context, projectID, sessionID string, opts PromoteOptions) (generation uint64, err error) {
	ctx, err = liveContext(op, ctx)
	if err != nil {
		return 0, err
	}
	p, err := c.handle(op)
	if err != nil {
		return 0, err
	}
	cp, cs, err := names(op, projectID, sessionID)
	if err != nil {
		return 0, err
	}
	defer free(cp)
	defer free(cs)
	var po C.goldclone_promote_options
	C.goldclone_promote_options_init(&po)
	po.consume = C.bool(opts.Consume)
	if n := len(opts.Drop); n > 0 {
		// A C array of C strings, in C memory: no Go pointer is passed to C.
		arr := (*[1 << 28]*C.char)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof((*C.char)(nil)))))[:n:n]
		defer C.free(unsafe.Pointer(&arr[0]))
		for i, d := range opts.Drop {
			s, err := cString(op, "drop path", d, ResultInvalidArgument)
			if err != nil {
				return 0, err
			}
			defer free(s)
			arr[i] = s
		}
		po.drop = &arr[0]
		po.drop_len = C.size_t(n)
	}
	var st *editState
	if opts.Edit != nil {
		st = &editState{fn: opts.Edit}
		h := cgo.NewHandle(st)
		defer h.Delete()
		C.goldclone_go_set_promote_edit(&po, C.uintptr_t(h))
	}
	var g C.uint64_t
	err = c.watched(op, ctx, opts.OnProgress, func(o *C.goldclone_op_options) C.goldclone_result {
		return C.goldclone_cache_promote_with_options(p, cp, cs, &po, o, &g)
	})
	if st != nil {
		runtime.KeepAlive(st)
		if st.panicked != nil {
			panic(st.panicked)
		}
		if st.goexited {
			runtime.Goexit()
		}
		if e, ok := err.(*Error); ok && e.Code == ResultEditFailed && st.err != nil {
			e.Message = e.Message + ": " + st.err.Error()
			e.cause = st.err
		}
	}
	return uint64(g), err
}

// DeleteProject deletes the project: every session, every generation, its records and
// directories (the service's DeleteGolden). ErrBusy, with nothing changed, while a session of
// it is in use; ErrDamaged, with nothing changed, where its directories hold anything goldclone
// did not record; ErrNotFound for an unknown project. Once begun, a delete that fails later is
// finished by the next Open or GC.
func (c *Cache) DeleteProject(projectID string) error {
	const op = "DeleteProject"
	p, err := c.handle(op)
	if err != nil {
		return err
	}
	cp, err := cString(op, "project id", projectID, ResultInvalidName)
	if err != nil {
		return err
	}
	defer free(cp)
	err = call(op, func() C.goldclone_result { return C.goldclone_cache_delete_project(p, cp) })
	runtime.KeepAlive(c)
	return err
}

// CleanupOptions says how CleanupSessionWithOptions removes a session.
type CleanupOptions struct {
	// Lazy: a session something still uses (a container that has not let go) is taken from
	// every path it is shown at at once (unmounted lazily), its tree is left to the processes
	// and mounts that have it, and GC removes it once nothing holds it (reporting it in Kept
	// until then). The session's record is gone at once. Without Lazy such a session is
	// ErrBusy and nothing changes.
	Lazy bool
}

// CleanupSessionWithOptions removes the session as opts says; detached is true when the
// session was in use and was detached lazily instead (see CleanupOptions.Lazy).
func (c *Cache) CleanupSessionWithOptions(projectID, sessionID string, opts CleanupOptions) (detached bool, err error) {
	const op = "CleanupSessionWithOptions"
	p, err := c.handle(op)
	if err != nil {
		return false, err
	}
	cp, cs, err := names(op, projectID, sessionID)
	if err != nil {
		return false, err
	}
	defer free(cp)
	defer free(cs)
	var o C.goldclone_cleanup_options
	C.goldclone_cleanup_options_init(&o)
	o.lazy = C.bool(opts.Lazy)
	var d C.bool
	err = call(op, func() C.goldclone_result { return C.goldclone_cache_cleanup_with_options(p, cp, cs, &o, &d) })
	runtime.KeepAlive(c)
	return bool(d), err
}

// CleanupSession removes the session. ErrBusy if processes still use it.
func (c *Cache) CleanupSession(projectID, sessionID string) error {
	const op = "CleanupSession"
	p, err := c.handle(op)
	if err != nil {
		return err
	}
	cp, cs, err := names(op, projectID, sessionID)
	if err != nil {
		return err
	}
	defer free(cp)
	defer free(cs)
	err = call(op, func() C.goldclone_result { return C.goldclone_cache_cleanup(p, cp, cs) })
	runtime.KeepAlive(c)
	return err
}

// GCReport is what GC did and found, one line per item.
type GCReport struct {
	// Removed: retired generations, trash, records of trees that are gone.
	Removed []string
	// Recovered: interrupted operations finished or rolled back.
	Recovered []string
	// Kept: found and left alone (entries goldclone did not make, damaged state), with why.
	Kept []string
	// Failed: what could not be done now (a busy project, a removal that failed); the next GC
	// tries again.
	Failed []string
}

// GC finishes interrupted operations and removes what the cache's records no longer need;
// entries goldclone did not make and damaged state are reported, never removed.
func (c *Cache) GC() (*GCReport, error) {
	const op = "GC"
	p, err := c.handle(op)
	if err != nil {
		return nil, err
	}
	var r *C.goldclone_gc_report
	err = call(op, func() C.goldclone_result { return C.goldclone_cache_gc(p, &r) })
	runtime.KeepAlive(c)
	if err != nil {
		return nil, err
	}
	defer C.goldclone_gc_report_free(r)
	report := &GCReport{}
	for list, dst := range map[C.goldclone_gc_list]*[]string{
		C.GOLDCLONE_GC_LIST_REMOVED: &report.Removed, C.GOLDCLONE_GC_LIST_RECOVERED: &report.Recovered,
		C.GOLDCLONE_GC_LIST_KEPT: &report.Kept, C.GOLDCLONE_GC_LIST_FAILED: &report.Failed,
	} {
		var count C.size_t
		if err := call(op, func() C.goldclone_result { return C.goldclone_gc_report_list_count(r, C.uint32_t(list), &count) }); err != nil {
			return nil, err
		}
		items := make([]string, 0, int(count))
		for i := C.size_t(0); i < count; i++ {
			s, err := readString(op, 256, func(b *C.char, n C.size_t, out *C.size_t) C.goldclone_result {
				return C.goldclone_gc_report_list_item(r, C.uint32_t(list), i, b, n, out)
			})
			if err != nil {
				return nil, err
			}
			items = append(items, s)
		}
		*dst = items
	}
	return report, nil
}

// Session is a session of a project and the generation it was made from.
type Session struct {
	ID         string
	Generation uint64
}

// Info is a project's state.
type Info struct {
	Project    string
	Generation uint64
	CreatedAt  time.Time
	// SourceSession is the session the current generation was promoted from; "" if imported.
	SourceSession string
	Backend       Backend
	SizeBytes     uint64
	Sessions      []Session
}

// Info returns the project's current generation and its sessions.
func (c *Cache) Info(projectID string) (*Info, error) {
	const op = "Info"
	p, err := c.handle(op)
	if err != nil {
		return nil, err
	}
	cp, err := cString(op, "project id", projectID, ResultInvalidName)
	if err != nil {
		return nil, err
	}
	defer free(cp)
	var h *C.goldclone_info
	err = call(op, func() C.goldclone_result { return C.goldclone_cache_info(p, cp, &h) })
	runtime.KeepAlive(c)
	if err != nil {
		return nil, err
	}
	defer C.goldclone_info_free(h)
	var gen, created, size C.uint64_t
	var backend C.goldclone_backend
	var count C.size_t
	if err := call(op, func() C.goldclone_result {
		return C.goldclone_info_get(h, &gen, &created, &size, &backend, &count)
	}); err != nil {
		return nil, err
	}
	info := &Info{
		Project:    projectID,
		Generation: uint64(gen),
		CreatedAt:  time.Unix(int64(created), 0),
		Backend:    Backend(backend),
		SizeBytes:  uint64(size),
		Sessions:   make([]Session, 0, int(count)),
	}
	src, err := readString(op, 128, func(b *C.char, n C.size_t, out *C.size_t) C.goldclone_result {
		return C.goldclone_info_source_session(h, b, n, out)
	})
	switch {
	case err == nil:
		info.SourceSession = src
	case !isCode(err, ResultNotFound):
		return nil, err
	}
	for i := C.size_t(0); i < count; i++ {
		var g C.uint64_t
		id, err := readString(op, 128, func(b *C.char, n C.size_t, out *C.size_t) C.goldclone_result {
			return C.goldclone_info_session(h, i, b, n, out, &g)
		})
		if err != nil {
			return nil, err
		}
		info.Sessions = append(info.Sessions, Session{ID: id, Generation: uint64(g)})
	}
	return info, nil
}

// Projects lists the projects that have a golden, sorted. It reads records only.
func (c *Cache) Projects() ([]string, error) {
	const op = "Projects"
	p, err := c.handle(op)
	if err != nil {
		return nil, err
	}
	list, err := readString(op, 1024, func(b *C.char, n C.size_t, out *C.size_t) C.goldclone_result {
		return C.goldclone_cache_projects(p, b, n, out)
	})
	runtime.KeepAlive(c)
	if err != nil || list == "" {
		return []string{}, err
	}
	return strings.Split(list, "\n"), nil
}

// HasGolden reports whether the project has a golden: one small record read, no walk of its
// tree (Info sizes the tree).
func (c *Cache) HasGolden(projectID string) (bool, error) {
	const op = "HasGolden"
	p, err := c.handle(op)
	if err != nil {
		return false, err
	}
	cp, err := cString(op, "project id", projectID, ResultInvalidName)
	if err != nil {
		return false, err
	}
	defer free(cp)
	var has C.bool
	err = call(op, func() C.goldclone_result { return C.goldclone_cache_has_golden(p, cp, &has) })
	runtime.KeepAlive(c)
	return bool(has), err
}

// SessionInfo is one session's state.
type SessionInfo struct {
	Project, ID string
	Path        string
	// Generation is the generation the session was made from.
	Generation uint64
	CreatedAt  time.Time
	// InUse: a process or a mount (in any mount namespace) holds the session now.
	InUse bool
	// Shown: the session is shown at Path now. False when the bind at the caller's path it was
	// set up at (SetupOptions.At) is gone (a reboot, an interrupted operation);
	// SetupSessionWithOptions with Reuse and the same At shows it there again.
	Shown bool
}

// SessionInfo looks up one session without walking its tree. ErrNotFound for an unknown
// project or session.
func (c *Cache) SessionInfo(projectID, sessionID string) (*SessionInfo, error) {
	const op = "SessionInfo"
	p, err := c.handle(op)
	if err != nil {
		return nil, err
	}
	cp, cs, err := names(op, projectID, sessionID)
	if err != nil {
		return nil, err
	}
	defer free(cp)
	defer free(cs)
	var gen, created C.uint64_t
	var inUse C.bool
	path, err := readString(op, pathBufSize, func(b *C.char, n C.size_t, out *C.size_t) C.goldclone_result {
		return C.goldclone_cache_session_info(p, cp, cs, &gen, &created, &inUse, b, n, out)
	})
	var shown C.bool
	if err == nil {
		err = call(op, func() C.goldclone_result { return C.goldclone_cache_session_shown(p, cp, cs, &shown) })
	}
	runtime.KeepAlive(c)
	if err != nil {
		return nil, err
	}
	return &SessionInfo{
		Project: projectID, ID: sessionID, Path: path, Generation: uint64(gen),
		CreatedAt: time.Unix(int64(created), 0), InUse: bool(inUse), Shown: bool(shown),
	}, nil
}

func isCode(err error, code Result) bool {
	e, ok := err.(*Error)
	return ok && e.Code == code
}

// liveHandles is the library's count of live handles (a leak check for tests).
func liveHandles() int { return int(C.goldclone_debug_live_handles()) }
