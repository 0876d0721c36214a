#include "shim.h"
#include "_cgo_export.h"

static int32_t goldclone_go_trampoline(void *user_data, const goldclone_progress *progress) {
    return goldcloneGoProgress((uintptr_t)user_data, (goldclone_progress *)progress);
}

void goldclone_go_set_progress(goldclone_copy_options *opts, uintptr_t handle) {
    opts->progress = goldclone_go_trampoline;
    opts->progress_user_data = (void *)handle;
}

void goldclone_go_set_op_progress(goldclone_op_options *opts, uintptr_t handle) {
    opts->progress = goldclone_go_trampoline;
    opts->progress_user_data = (void *)handle;
}

static int32_t goldclone_go_edit_trampoline(void *user_data, const char *tree, uint64_t generation) {
    return goldcloneGoEdit((uintptr_t)user_data, (char *)tree, generation);
}

void goldclone_go_set_promote_edit(goldclone_promote_options *opts, uintptr_t handle) {
    opts->edit = goldclone_go_edit_trampoline;
    opts->edit_user_data = (void *)handle;
}

static void goldclone_go_log_trampoline(void *user_data, goldclone_log_level level, const char *target,
                                        const char *message) {
    (void)user_data;
    goldcloneGoLog((uint32_t)level, (char *)target, (char *)message);
}

void goldclone_go_set_log(uint32_t max_level) {
    goldclone_set_log_callback(goldclone_go_log_trampoline, NULL, max_level);
}
