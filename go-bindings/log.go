package goldclone

/*
#include <stdint.h>
#include "goldclone.h"
#include "shim.h"
*/
import "C"

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
)

// The library's log levels (goldclone_log_level), for reference; SetLogger maps them to slog's.
const (
	logError = C.GOLDCLONE_LOG_LEVEL_ERROR
	logWarn  = C.GOLDCLONE_LOG_LEVEL_WARN
	logInfo  = C.GOLDCLONE_LOG_LEVEL_INFO
	logDebug = C.GOLDCLONE_LOG_LEVEL_DEBUG
	logTrace = C.GOLDCLONE_LOG_LEVEL_TRACE
)

var (
	logMu     sync.Mutex // serialises SetLogger
	logger    atomic.Pointer[slog.Logger]
	logSlevel = map[C.uint32_t]slog.Level{
		logError: slog.LevelError, logWarn: slog.LevelWarn, logInfo: slog.LevelInfo,
		logDebug: slog.LevelDebug, logTrace: slog.LevelDebug - 4,
	}
)

// SetLogger sends what the library decides and repairs to l: the backend a cache got and why
// not a faster one, fallbacks of the tree copy, what recovery finished or rolled back at Open,
// what GC removed or left alone, long waits for a project's lock (info and warnings), and each
// operation's duration (debug). Each record has the attribute "target" (e.g. "goldclone::gc").
// Only the levels l is enabled for when SetLogger is called are produced at all (call it again
// after making l's level more detailed). nil (the default) makes the library
// silent; it never writes to stderr. The logger is called from the library's threads, one
// record at a time per thread; its handler must not call this package. One logger for the
// process: the library's log is global.
func SetLogger(l *slog.Logger) {
	logMu.Lock()
	defer logMu.Unlock()
	max := C.uint32_t(C.GOLDCLONE_LOG_LEVEL_OFF)
	if l != nil {
		for _, lv := range []C.uint32_t{logTrace, logDebug, logInfo, logWarn, logError} {
			if l.Enabled(context.Background(), logSlevel[lv]) {
				max = lv
				break
			}
		}
	}
	if max == C.GOLDCLONE_LOG_LEVEL_OFF {
		// Cleared first: the call returns once records in flight are delivered.
		C.goldclone_set_log_callback(nil, nil, 0)
		logger.Store(nil)
		return
	}
	C.goldclone_set_log_callback(nil, nil, 0)
	logger.Store(l)
	C.goldclone_go_set_log(C.uint32_t(max))
}

// goldcloneGoLog is called by the library on any of its threads (through the trampoline in
// shim.c). A panic or runtime.Goexit in the handler ends only the goroutine it runs on: the
// record is lost, the process and the operation go on.
//
//export goldcloneGoLog
func goldcloneGoLog(level C.uint32_t, target, message *C.char) {
	l := logger.Load() // set before the callback is, cleared after it is gone (SetLogger)
	if l == nil {
		return
	}
	lv, tg, msg := logSlevel[level], C.GoString(target), C.GoString(message)
	guarded(func() { l.Log(context.Background(), lv, msg, slog.String("target", tg)) })
}
