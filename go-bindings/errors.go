package goldclone

/*
#include "goldclone.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
)

// Result is a goldclone_result code of the C API. The numbers are fixed.
type Result uint32

// Result codes: the header's constants (generated from the library's list), fixed forever.
const (
	ResultOK                = Result(C.GOLDCLONE_RESULT_OK)
	ResultNotFound          = Result(C.GOLDCLONE_RESULT_NOT_FOUND)
	ResultAlreadyExists     = Result(C.GOLDCLONE_RESULT_ALREADY_EXISTS)
	ResultNotADirectory     = Result(C.GOLDCLONE_RESULT_NOT_A_DIRECTORY)
	ResultInvalidArgument   = Result(C.GOLDCLONE_RESULT_INVALID_ARGUMENT)
	ResultInvalidName       = Result(C.GOLDCLONE_RESULT_INVALID_NAME)
	ResultNameTooLong       = Result(C.GOLDCLONE_RESULT_NAME_TOO_LONG)
	ResultNoSpace           = Result(C.GOLDCLONE_RESULT_NO_SPACE)
	ResultBusy              = Result(C.GOLDCLONE_RESULT_BUSY)
	ResultPermissionDenied  = Result(C.GOLDCLONE_RESULT_PERMISSION_DENIED)
	ResultUnsupported       = Result(C.GOLDCLONE_RESULT_UNSUPPORTED)
	ResultCrossDevice       = Result(C.GOLDCLONE_RESULT_CROSS_DEVICE)
	ResultCancelled         = Result(C.GOLDCLONE_RESULT_CANCELLED)
	ResultZFSUnavailable    = Result(C.GOLDCLONE_RESULT_ZFS_UNAVAILABLE)
	ResultIO                = Result(C.GOLDCLONE_RESULT_IO)
	ResultSnapshotHasClones = Result(C.GOLDCLONE_RESULT_SNAPSHOT_HAS_CLONES)
	ResultSnapshotHeld      = Result(C.GOLDCLONE_RESULT_SNAPSHOT_HELD)
	ResultDamaged           = Result(C.GOLDCLONE_RESULT_DAMAGED)
	ResultIncomplete        = Result(C.GOLDCLONE_RESULT_INCOMPLETE)
	ResultParse             = Result(C.GOLDCLONE_RESULT_PARSE)
	ResultEditFailed        = Result(C.GOLDCLONE_RESULT_EDIT_FAILED)
	ResultBadStream         = Result(C.GOLDCLONE_RESULT_BAD_STREAM)
	ResultOther             = Result(C.GOLDCLONE_RESULT_OTHER)
	ResultNullParameter     = Result(C.GOLDCLONE_RESULT_NULL_PARAMETER)
	ResultInvalidHandle     = Result(C.GOLDCLONE_RESULT_INVALID_HANDLE)
	ResultBufferTooSmall    = Result(C.GOLDCLONE_RESULT_BUFFER_TOO_SMALL)
	ResultPanic             = Result(C.GOLDCLONE_RESULT_PANIC)
)

// String is the C constant's name, e.g. "GOLDCLONE_RESULT_NOT_FOUND".
func (r Result) String() string {
	return C.GoString(C.goldclone_result_name(C.uint32_t(r)))
}

// Error is a failed call: the result code, the errno behind it (0 if none), and the library's
// message. Compare causes with errors.Is and the Err* sentinels.
type Error struct {
	Code    Result
	Errno   syscall.Errno
	Message string
	// Op is the Go function that failed, e.g. "SetupSession".
	Op string
	// ctxErr is the context's error when a context ended the call.
	ctxErr error
	// cause is the caller's own error behind the call's failure (an edit func's).
	cause error
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("goldclone: %s: %s", e.Op, e.Code)
	}
	return fmt.Sprintf("goldclone: %s: %s", e.Op, e.Message)
}

// Is reports whether target is an *Error with the same code (the sentinels), or the standard
// error matching the code: fs.ErrNotExist, fs.ErrExist, fs.ErrPermission, context.Canceled;
// a call that a context ended also matches that context's error (context.DeadlineExceeded).
func (e *Error) Is(target error) bool {
	if t, ok := target.(*Error); ok {
		return t.Code == e.Code
	}
	if e.ctxErr != nil && target == e.ctxErr {
		return true
	}
	if e.cause != nil && errors.Is(e.cause, target) {
		return true
	}
	switch target {
	case fs.ErrNotExist:
		return e.Code == ResultNotFound
	case fs.ErrExist:
		return e.Code == ResultAlreadyExists
	case fs.ErrPermission:
		return e.Code == ResultPermissionDenied
	case context.Canceled:
		// A deadline is not a cancellation in context's terms.
		return e.Code == ResultCancelled && (e.ctxErr == nil || e.ctxErr == context.Canceled)
	}
	return false
}

// Unwrap gives the errno, so errors.Is(err, syscall.ENOSPC) works.
func (e *Error) Unwrap() error {
	if e.Errno != 0 {
		return e.Errno
	}
	return nil
}

// Sentinels for errors.Is, one per result code.
var (
	ErrNotFound          = &Error{Code: ResultNotFound, Op: "sentinel"}
	ErrAlreadyExists     = &Error{Code: ResultAlreadyExists, Op: "sentinel"}
	ErrNotADirectory     = &Error{Code: ResultNotADirectory, Op: "sentinel"}
	ErrInvalidArgument   = &Error{Code: ResultInvalidArgument, Op: "sentinel"}
	ErrInvalidName       = &Error{Code: ResultInvalidName, Op: "sentinel"}
	ErrNameTooLong       = &Error{Code: ResultNameTooLong, Op: "sentinel"}
	ErrNoSpace           = &Error{Code: ResultNoSpace, Op: "sentinel"}
	ErrBusy              = &Error{Code: ResultBusy, Op: "sentinel"}
	ErrPermissionDenied  = &Error{Code: ResultPermissionDenied, Op: "sentinel"}
	ErrUnsupported       = &Error{Code: ResultUnsupported, Op: "sentinel"}
	ErrCrossDevice       = &Error{Code: ResultCrossDevice, Op: "sentinel"}
	ErrCancelled         = &Error{Code: ResultCancelled, Op: "sentinel"}
	ErrZFSUnavailable    = &Error{Code: ResultZFSUnavailable, Op: "sentinel"}
	ErrIO                = &Error{Code: ResultIO, Op: "sentinel"}
	ErrSnapshotHasClones = &Error{Code: ResultSnapshotHasClones, Op: "sentinel"}
	ErrSnapshotHeld      = &Error{Code: ResultSnapshotHeld, Op: "sentinel"}
	ErrDamaged           = &Error{Code: ResultDamaged, Op: "sentinel"}
	ErrIncomplete        = &Error{Code: ResultIncomplete, Op: "sentinel"}
	ErrParse             = &Error{Code: ResultParse, Op: "sentinel"}
	ErrEditFailed        = &Error{Code: ResultEditFailed, Op: "sentinel"}
	ErrBadStream         = &Error{Code: ResultBadStream, Op: "sentinel"}
	ErrOther             = &Error{Code: ResultOther, Op: "sentinel"}
	ErrNullParameter     = &Error{Code: ResultNullParameter, Op: "sentinel"}
	ErrInvalidHandle     = &Error{Code: ResultInvalidHandle, Op: "sentinel"}
	ErrBufferTooSmall    = &Error{Code: ResultBufferTooSmall, Op: "sentinel"}
	ErrPanic             = &Error{Code: ResultPanic, Op: "sentinel"}
)

// allSentinels is every sentinel, for the tests that check them against the library.
var allSentinels = []*Error{
	ErrNotFound, ErrAlreadyExists, ErrNotADirectory, ErrInvalidArgument, ErrInvalidName,
	ErrNameTooLong, ErrNoSpace, ErrBusy, ErrPermissionDenied, ErrUnsupported, ErrCrossDevice,
	ErrCancelled, ErrZFSUnavailable, ErrIO, ErrSnapshotHasClones, ErrSnapshotHeld, ErrDamaged,
	ErrIncomplete, ErrParse, ErrEditFailed, ErrBadStream, ErrOther, ErrNullParameter, ErrInvalidHandle, ErrBufferTooSmall,
	ErrPanic,
}
