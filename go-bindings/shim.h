/* C side of the callbacks (progress of CopyTree and the lifecycle's *Context calls, a promote's edit): a trampoline into the exported Go function, so no
 * Go pointer is ever stored in C memory (user data is a runtime/cgo.Handle value). */
#ifndef GOLDCLONE_GO_SHIM_H
#define GOLDCLONE_GO_SHIM_H
#include <stdint.h>
#include "goldclone.h"

/* Point opts at the Go progress callback with `handle` as its user data. */
void goldclone_go_set_progress(goldclone_copy_options *opts, uintptr_t handle);

/* The same for a lifecycle operation's options. */
void goldclone_go_set_op_progress(goldclone_op_options *opts, uintptr_t handle);

/* Point a promote's options at the Go edit callback with `handle` as its user data. */
void goldclone_go_set_promote_edit(goldclone_promote_options *opts, uintptr_t handle);

/* Set the library's log callback to the Go one, passing on messages up to max_level. */
void goldclone_go_set_log(uint32_t max_level);

#endif
