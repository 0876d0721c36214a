package goldclone

/*
#include <stdint.h>
#include "goldclone.h"
*/
import "C"

import "runtime/cgo"

// goldcloneGoProgress is called by the library on the goroutine's own thread during
// goldclone_copy_tree (through the trampoline in shim.c). Nonzero cancels the copy.
//
//export goldcloneGoProgress
func goldcloneGoProgress(h C.uintptr_t, p *C.goldclone_progress) C.int32_t {
	st := cgo.Handle(h).Value().(*copyState)
	return C.int32_t(st.report(progressFromC(p)))
}

func progressFromC(p *C.goldclone_progress) Progress {
	return Progress{
		Entries:      uint64(p.entries),
		Bytes:        uint64(p.bytes),
		TotalEntries: uint64(p.total_entries),
		TotalBytes:   uint64(p.total_bytes),
		TotalsKnown:  bool(p.totals_known),
		Finished:     bool(p.finished),
	}
}

// goldcloneGoEdit is called by the library on the goroutine's own thread during
// goldclone_cache_promote_with_options (through the trampoline in shim.c). Nonzero fails the
// promote.
//
//export goldcloneGoEdit
func goldcloneGoEdit(h C.uintptr_t, tree *C.char, generation C.uint64_t) C.int32_t {
	st := cgo.Handle(h).Value().(*editState)
	return C.int32_t(st.edit(C.GoString(tree), uint64(generation)))
}
