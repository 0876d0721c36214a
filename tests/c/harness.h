/*
 * A tiny test harness for the C API tests: RUN(test) counts a test as passed when none of its
 * CHECKs failed; harness_finish() prints "<name>: N passed, N failed" (tests/c/run.sh sums
 * these lines) and returns the exit status.
 *
 * Filesystems: with GOLDCLONE_TEST_ROOT set (a directory on ZFS, inside the ZFS guest) every
 * test runs there; otherwise GOLDCLONE_TEST_{XFS,BTRFS,EXT4,TMPFS} must name the loop mounts of
 * tests/loopfs.sh -- a missing one fails the run, it never skips.
 */
#ifndef GOLDCLONE_TEST_HARNESS_H
#define GOLDCLONE_TEST_HARNESS_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "goldclone.h"

extern int harness_failed_checks; /* CHECK failures in the running test */

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);             \
            harness_failed_checks++;                                                      \
        }                                                                                 \
    } while (0)

/* Check that a call returns `want`; on a mismatch print both codes and the last error. */
#define CHECK_RC(call, want)                                                              \
    do {                                                                                  \
        goldclone_result rc_ = (call);                                                    \
        goldclone_result want_ = (want);                                                  \
        if (rc_ != want_) {                                                               \
            fprintf(stderr, "  FAIL %s:%d: %s\n    returned %s, want %s: %s\n", __FILE__,   \
                    __LINE__, #call, goldclone_result_name(rc_), goldclone_result_name(want_), \
                    harness_last_error());                                                \
            harness_failed_checks++;                                                      \
        }                                                                                 \
    } while (0)

#define CHECK_OK(call) CHECK_RC(call, GOLDCLONE_RESULT_OK)

#define RUN(test) harness_run(#test, test)

/* The calling thread's last error message (static buffer, for diagnostics). */
const char *harness_last_error(void);
void harness_run(const char *name, void (*test)(void));
/* Print the summary line; returns the process exit status. Also fails on leaked handles. */
int harness_finish(const char *suite);

/* Test filesystems: the roots to run on (NULL-terminated), and their names. */
struct harness_fs {
    const char *name; /* "xfs", "btrfs", "ext4", "tmpfs", "root" */
    const char *path;
};
/* Fills fs[] (at most 5 entries + terminator); returns the count, or 0 after printing why the
 * environment is incomplete (which fails the suite). */
int harness_filesystems(struct harness_fs fs[6]);
/* The mount of one named loop filesystem, or GOLDCLONE_TEST_ROOT in guest mode; NULL (and a
 * failed check) if unset. */
const char *harness_fs_path(const char *name);

/* A fresh scratch directory "<base>/c-<pid>-<tag>-<n>"; the caller frees the string. */
char *harness_scratch(const char *base, const char *tag);
/* rm -rf */
void harness_rm_rf(const char *path);
/* Write a file with `content`; 0 on success. */
int harness_write(const char *path, const char *content);
/* Read up to `len`-1 bytes of a file into buf (NUL-terminated); 0 on success. */
int harness_read(const char *path, char *buf, size_t len);
/* Path join into a malloc'd string. */
char *harness_join(const char *a, const char *b);
int harness_exists(const char *path);

#endif
