package goldclone

/*
#include "goldclone.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// Sent is what a finished Send wrote.
type Sent struct {
	// Generation is the generation sent.
	Generation uint64
	// Entries and Bytes are the tree's entries (the root included) and bytes of file data.
	Entries, Bytes uint64
	// StreamBytes is the length of the stream written.
	StreamBytes uint64
}

// Send writes generation `generation` of the project (0: the current one) to w as a portable
// stream, which Receive makes a generation of a cache of any backend on any host; w is the
// caller's transport (a file, an ssh session's stdin, an HTTP body). onProgress (may be nil)
// gets the bytes of file data sent and the total, known from the start. Cancelling ctx stops
// the send with an error matching ErrCancelled. An error from w stops the send and is
// returned (wrapped). The project's lock is held only while the send starts: setups and
// promotes go on, and a generation they retire stays until the send is done. ErrNotFound for
// a project or generation that does not exist. On ZFS and zvol only the current generation can
// be sent (ErrUnsupported for an older one): the send reads through a session it makes and
// removes.
//
// With base (0: none) the stream is an increment from that older generation: only what
// changed since it, which Receive takes on a cache whose current generation is base. The base
// need not exist here any more, only its manifest, which every send keeps for the generation
// it sends (the newest four): ErrNotFound without one.
func (c *Cache) Send(ctx context.Context, projectID string, generation, base uint64, w io.Writer, onProgress func(sent, total int64)) (Sent, error) {
	const op = "Send"
	ctx, err := liveContext(op, ctx)
	if err != nil {
		return Sent{}, err
	}
	p, err := c.handle(op)
	if err != nil {
		return Sent{}, err
	}
	cp, err := cString(op, "project id", projectID, ResultInvalidName)
	if err != nil {
		return Sent{}, err
	}
	defer free(cp)
	// The library writes into a pipe that a goroutine copies to w: w may be any io.Writer, and
	// the library never sees the caller's descriptor. If w fails, the send is cancelled and the
	// pipe drained, so that the library's writes never meet a closed pipe.
	r, pw, err := os.Pipe()
	if err != nil {
		return Sent{}, &Error{Code: ResultIO, Op: op, Message: err.Error()}
	}
	caller := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A cancel also closes the pipe's read end: a library write blocked on a full pipe (w
	// stuck) then fails at once instead of waiting for w.
	stop := context.AfterFunc(ctx, func() { r.Close() })
	defer stop()
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(w, r)
		if err != nil && !errors.Is(err, os.ErrClosed) {
			cancel()
			_, _ = io.Copy(io.Discard, r)
		}
		copied <- err
	}()
	var s C.goldclone_sent
	err = c.watched(op, ctx, onProgress, func(o *C.goldclone_op_options) C.goldclone_result {
		return C.goldclone_cache_send(p, cp, C.uint64_t(generation), C.uint64_t(base), C.int(pw.Fd()), o, &s)
	})
	var werr error
	if err == nil {
		// The library wrote it all; w must get all of it too: no cancel closes the pipe now,
		// and the copy is waited for (a read end closed by a cancel before this point is an
		// error: w got less than the stream).
		stopped := stop()
		pw.Close()
		werr = <-copied
		if werr == nil && !stopped {
			werr = errors.New("cancelled before the whole stream reached the writer")
		}
	} else {
		pw.Close()
		select {
		case werr = <-copied:
		case <-caller.Done():
			// The caller gave up, and w may be stuck in a Write: the copy is not waited for.
		}
		if errors.Is(werr, os.ErrClosed) {
			werr = nil // closed by the cancel: the library's error says so
		}
	}
	r.Close()
	if werr != nil {
		return Sent{}, fmt.Errorf("goldclone: Send: writing the stream: %w", errors.Join(werr, err))
	}
	if err != nil {
		return Sent{}, err
	}
	return Sent{
		Generation:  uint64(s.generation),
		Entries:     uint64(s.entries),
		Bytes:       uint64(s.bytes),
		StreamBytes: uint64(s.stream_bytes),
	}, nil
}

// Receive reads a stream that Send wrote from r and makes it a generation of the project: its
// first if the project does not exist in this cache, else its next (sessions keep theirs, as
// with ImportNext). It returns the generation's number here. Nothing is committed unless the
// whole stream verifies: a truncated or corrupt stream gives an error matching ErrBadStream
// and leaves the cache as it was; a stream of another project matches ErrInvalidArgument; a
// stream of the project's current generation changes nothing and returns its number. An
// increment goes only onto its base: ErrNotFound if the project is not here or its current
// generation is another. An error from r is returned (wrapped) and commits nothing. Progress
// and cancellation as ImportNext.
func (c *Cache) Receive(ctx context.Context, projectID string, r io.Reader, onProgress func(received, total int64)) (uint64, error) {
	const op = "Receive"
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
	pr, w, err := os.Pipe()
	if err != nil {
		return 0, &Error{Code: ResultIO, Op: op, Message: err.Error()}
	}
	// A cancel closes the pipe's write end: a library read waiting for a stalled r then ends
	// at once (the library answers Cancelled or BadStream, and nothing is committed).
	stop := context.AfterFunc(ctx, func() { w.Close() })
	defer stop()
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(w, r)
		// The library may stop reading early (a bad stream, or done): the write then fails
		// with EPIPE, which is not the reader's fault.
		if errors.Is(err, os.ErrClosed) || errors.Is(err, syscall.EPIPE) {
			err = nil
		}
		// Sent before the pipe is closed: a library that stops at the truncation this close
		// makes finds the reader's error here.
		copied <- err
		w.Close()
	}()
	var g C.uint64_t
	err = c.watched(op, ctx, onProgress, func(o *C.goldclone_op_options) C.goldclone_result {
		return C.goldclone_cache_receive(p, cp, C.int(pr.Fd()), o, &g)
	})
	// Not waited for: r may block (a connection that stays open); its next write into the
	// closed pipe ends the copy.
	pr.Close()
	if err == nil {
		// Committed: whatever r does after the stream's end changes nothing.
		return uint64(g), nil
	}
	select {
	case rerr := <-copied:
		if rerr != nil {
			return 0, fmt.Errorf("goldclone: Receive: reading the stream: %w", errors.Join(rerr, err))
		}
	default:
	}
	return 0, err
}
