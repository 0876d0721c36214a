// Package goldclone is the Go binding of the goldclone library: an instant, private, writable
// copy of a large "golden" directory tree per session — ZFS clones, btrfs snapshots, or an
// exact parallel reflink tree copy — and the lifecycle around it (import, setup, promote,
// cleanup, gc).
//
// It links the Rust static library through cgo (standard library only):
//
//	cargo build --release --lib          # target/release/libgoldclone.a
//	go build ./...                       # in go-bindings/
//
// The cgo flags link ${SRCDIR}/../target/release/libgoldclone.a; to link another build, put
// its directory first with CGO_LDFLAGS="-L/path/to/dir" (go-bindings/run.sh does that for the
// debug build).
//
// # Errors
//
// Every failure is an *Error carrying the library's result code, the errno (if any) and a
// message. Test for a cause with errors.Is against the sentinels (ErrNotFound, ErrBusy, ...):
//
//	path, err := cache.SetupSession("proj", "s1")
//	if errors.Is(err, goldclone.ErrAlreadyExists) { ... }
//
// errors.Is also answers true for fs.ErrNotExist (ErrNotFound), fs.ErrExist (ErrAlreadyExists),
// fs.ErrPermission (ErrPermissionDenied) and context.Canceled (ErrCancelled), and for the
// syscall.Errno behind an I/O error.
//
// # Concurrency and lifetime
//
// A *Cache may be used from many goroutines at once. Close releases it; a finalizer closes a
// Cache that was dropped without Close, but call Close. Calls on a closed Cache fail with
// ErrInvalidHandle. CopyTree runs on the calling goroutine; its progress callback runs on a
// goroutine of its own while the caller waits (a panic or runtime.Goexit there continues in the
// caller), and ctx cancels it.
//
// Project and session ids are 1–64 bytes of [A-Za-z0-9_.-], not starting with '.' or '-'.
// Paths may hold any bytes except NUL.
package goldclone
