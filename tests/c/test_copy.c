/* The tree copy through the C API: content, non-UTF-8 names, progress on the calling thread,
 * cancellation (token, callback, another thread), and every bad input. */
#include <dirent.h>
#include <pthread.h>

#include "harness.h"

static struct harness_fs fs[6];

/* src/{a.txt, sub/b.txt, sub/deeper/c.bin (256 KiB), link -> a.txt, \xff\xfe-name/\x80} */
static char *make_source(const char *base) {
    char *src = harness_join(base, "src");
    char *p;
    CHECK(mkdir(src, 0755) == 0);
    p = harness_join(src, "a.txt"); CHECK(harness_write(p, "alpha\n") == 0); free(p);
    p = harness_join(src, "sub"); CHECK(mkdir(p, 0750) == 0); free(p);
    p = harness_join(src, "sub/b.txt"); CHECK(harness_write(p, "beta\n") == 0); free(p);
    p = harness_join(src, "sub/deeper"); CHECK(mkdir(p, 0700) == 0); free(p);
    p = harness_join(src, "sub/deeper/c.bin");
    {
        FILE *f = fopen(p, "w");
        CHECK(f != NULL);
        if (f) {
            for (int i = 0; i < 256 * 1024; i++) fputc(i * 7 % 251, f);
            fclose(f);
        }
    }
    free(p);
    p = harness_join(src, "link"); CHECK(symlink("a.txt", p) == 0); free(p);
    p = harness_join(src, "\xff\xfe-name"); CHECK(mkdir(p, 0755) == 0); free(p);
    p = harness_join(src, "\xff\xfe-name/\x80"); CHECK(harness_write(p, "bytes\n") == 0); free(p);
    return src;
}

/* n files in a few directories, for copies that take a while */
static char *make_big_source(const char *base, int n) {
    char *src = harness_join(base, "big");
    CHECK(mkdir(src, 0755) == 0);
    char path[4096];
    for (int d = 0; d < 20; d++) {
        snprintf(path, sizeof path, "%s/d%02d", src, d);
        CHECK(mkdir(path, 0755) == 0);
    }
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/d%02d/f%05d", src, i % 20, i);
        CHECK(harness_write(path, "some file content that is not empty\n") == 0);
    }
    return src;
}

/* Nothing named like a staging directory left in dir. */
static int staging_left(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, ".goldclone-staging.", 19) == 0) found++;
    closedir(d);
    return found;
}

struct progress_log {
    int calls, finished_calls, calls_after_finished;
    uint64_t last_entries, last_bytes;
    int monotonic;
    int cancel_on_call; /* return nonzero on this call number (1-based); 0 = never */
    pthread_t thread;
    int wrong_thread;
    int stopped; /* it asked a running copy to stop */
};

static int32_t on_progress(void *user_data, const goldclone_progress *p) {
    struct progress_log *log = user_data;
    log->calls++;
    if (!pthread_equal(pthread_self(), log->thread)) log->wrong_thread++;
    if (log->finished_calls) log->calls_after_finished++;
    if (p->entries < log->last_entries || p->bytes < log->last_bytes) log->monotonic = 0;
    log->last_entries = p->entries;
    log->last_bytes = p->bytes;
    if (p->finished) log->finished_calls++;
    int stop = log->cancel_on_call != 0 && log->calls == log->cancel_on_call;
    if (stop && !p->finished) log->stopped = 1;
    return stop;
}

static void check_copy(const char *dst) {
    char buf[64];
    char *p = harness_join(dst, "sub/b.txt");
    CHECK(harness_read(p, buf, sizeof buf) == 0 && strcmp(buf, "beta\n") == 0);
    free(p);
    p = harness_join(dst, "\xff\xfe-name/\x80");
    CHECK(harness_read(p, buf, sizeof buf) == 0 && strcmp(buf, "bytes\n") == 0);
    free(p);
    p = harness_join(dst, "link");
    ssize_t n = readlink(p, buf, sizeof buf - 1);
    CHECK(n == 5 && memcmp(buf, "a.txt", 5) == 0);
    free(p);
    p = harness_join(dst, "sub/deeper");
    struct stat st;
    CHECK(stat(p, &st) == 0 && (st.st_mode & 07777) == 0700);
    free(p);
}

static void test_copy_with_progress(void) {
    for (int i = 0; fs[i].name; i++) {
        fprintf(stderr, "  on %s\n", fs[i].name);
        char *base = harness_scratch(fs[i].path, "copy");
        char *src = make_source(base);
        char *dst = harness_join(base, "dst");
        goldclone_copy_options o;
        goldclone_copy_stats stats;
        struct progress_log log = {.monotonic = 1, .thread = pthread_self()};
        memset(&stats, 0xff, sizeof stats);
        CHECK_OK(goldclone_copy_options_init(&o));
        o.progress = on_progress;
        o.progress_user_data = &log;
        o.progress_interval_ms = 1;
        o.count_totals = true;
        o.threads = 3;
        CHECK_OK(goldclone_copy_tree(src, dst, &o, &stats));
        check_copy(dst);
        CHECK(stats.entries == 9);
        CHECK(stats.files == 4 && stats.dirs == 4 && stats.symlinks == 1);
        CHECK(stats.bytes == 6 + 5 + 256 * 1024 + 6);
        CHECK(stats.threads == 3);
        CHECK(stats.elapsed_ns > 0);
        CHECK(log.calls >= 2); /* before the start and after the end at least */
        CHECK(log.finished_calls == 1 && log.calls_after_finished == 0);
        CHECK(log.last_entries == stats.entries && log.last_bytes == stats.bytes);
        CHECK(log.monotonic);
        CHECK(log.wrong_thread == 0);
        if (strcmp(fs[i].name, "xfs") == 0 || strcmp(fs[i].name, "btrfs") == 0) CHECK(stats.cloned == 4);

        /* the destination exists now */
        CHECK_RC(goldclone_copy_tree(src, dst, NULL, NULL), GOLDCLONE_RESULT_ALREADY_EXISTS);
        /* defaults, no stats */
        char *dst2 = harness_join(base, "dst2");
        CHECK_OK(goldclone_copy_tree(src, dst2, NULL, NULL));
        check_copy(dst2);
        free(dst2);
        CHECK(staging_left(base) == 0);
        harness_rm_rf(base);
        free(src); free(dst); free(base);
    }
}

static void test_copy_across_filesystems(void) {
    const char *a = harness_fs_path("tmpfs"), *b = harness_fs_path("xfs");
    if (!a || !b) return;
    char *base_a = harness_scratch(a, "xsrc"), *base_b = harness_scratch(b, "xdst");
    char *src = make_source(base_a), *dst = harness_join(base_b, "dst");
    goldclone_copy_stats stats;
    CHECK_OK(goldclone_copy_tree(src, dst, NULL, &stats));
    check_copy(dst);
    CHECK(stats.entries == 9);
    harness_rm_rf(base_a); harness_rm_rf(base_b);
    free(src); free(dst); free(base_a); free(base_b);
}

static void test_copy_bad_inputs(void) {
    const char *root = harness_fs_path("ext4");
    if (!root) return;
    char *base = harness_scratch(root, "bad");
    char *src = make_source(base);
    char *p;
    goldclone_copy_options o;
    CHECK_OK(goldclone_copy_options_init(&o));

    p = harness_join(base, "missing");
    char *dst = harness_join(base, "dst");
    CHECK_RC(goldclone_copy_tree(p, dst, NULL, NULL), GOLDCLONE_RESULT_NOT_FOUND);
    free(p);
    p = harness_join(src, "a.txt");
    CHECK_RC(goldclone_copy_tree(p, dst, NULL, NULL), GOLDCLONE_RESULT_NOT_A_DIRECTORY);
    free(p);
    p = harness_join(src, "inside");
    CHECK_RC(goldclone_copy_tree(src, p, NULL, NULL), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    free(p);
    p = harness_join(base, "no/parent");
    CHECK(goldclone_copy_tree(src, p, NULL, NULL) != GOLDCLONE_RESULT_OK);
    free(p);
    CHECK_RC(goldclone_copy_tree(src, src, NULL, NULL), GOLDCLONE_RESULT_ALREADY_EXISTS);
    CHECK_RC(goldclone_copy_tree("", dst, NULL, NULL), GOLDCLONE_RESULT_NOT_FOUND);
    o.threads = 5000;
    CHECK_RC(goldclone_copy_tree(src, dst, &o, NULL), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    /* an over-long destination name */
    char name[600];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = 0;
    p = harness_join(base, name);
    CHECK_RC(goldclone_copy_tree(src, p, NULL, NULL), GOLDCLONE_RESULT_NAME_TOO_LONG);
    free(p);
    /* a freed cancel handle in the options */
    goldclone_cancel *c = NULL;
    CHECK_OK(goldclone_copy_options_init(&o));
    CHECK_OK(goldclone_cancel_new(&c));
    CHECK_OK(goldclone_cancel_free(c));
    o.cancel = c;
    CHECK_RC(goldclone_copy_tree(src, dst, &o, NULL), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK(!harness_exists(dst));
    CHECK(staging_left(base) == 0);
    harness_rm_rf(base);
    free(src); free(dst); free(base);
}

static void test_cancel_token(void) {
    const char *root = harness_fs_path("xfs");
    if (!root) return;
    char *base = harness_scratch(root, "cancel");
    char *src = make_source(base), *dst = harness_join(base, "dst");
    goldclone_cancel *c = NULL;
    goldclone_copy_options o;
    CHECK_OK(goldclone_cancel_new(&c));
    CHECK_OK(goldclone_cancel_cancel(c));
    CHECK_OK(goldclone_copy_options_init(&o));
    o.cancel = c;
    CHECK_RC(goldclone_copy_tree(src, dst, &o, NULL), GOLDCLONE_RESULT_CANCELLED);
    CHECK(!harness_exists(dst));
    CHECK(staging_left(base) == 0);
    CHECK_OK(goldclone_cancel_free(c));
    harness_rm_rf(base);
    free(src); free(dst); free(base);
}

static void test_cancel_from_callback(void) {
    const char *root = harness_fs_path("xfs");
    if (!root) return;
    char *base = harness_scratch(root, "cbcancel");
    char *src = make_source(base), *dst = harness_join(base, "dst");
    goldclone_copy_options o;
    struct progress_log log = {.monotonic = 1, .thread = pthread_self(), .cancel_on_call = 1};
    CHECK_OK(goldclone_copy_options_init(&o));
    o.progress = on_progress;
    o.progress_user_data = &log;
    CHECK_RC(goldclone_copy_tree(src, dst, &o, NULL), GOLDCLONE_RESULT_CANCELLED);
    CHECK(log.calls == 1 && log.finished_calls == 0);
    CHECK(!harness_exists(dst));
    CHECK(staging_left(base) == 0);

    /* with a cancel handle too: the callback's stop cancels this copy, not the caller's
       handle (other copies may share it) */
    goldclone_cancel *c = NULL;
    bool cancelled = true;
    CHECK_OK(goldclone_cancel_new(&c));
    o.cancel = c;
    log.calls = 0;
    CHECK_RC(goldclone_copy_tree(src, dst, &o, NULL), GOLDCLONE_RESULT_CANCELLED);
    CHECK_OK(goldclone_cancel_is_cancelled(c, &cancelled));
    CHECK(!cancelled);
    /* and the handle still works for the next copy */
    log.cancel_on_call = 0;
    log.calls = 0;
    CHECK_OK(goldclone_copy_tree(src, dst, &o, NULL));
    check_copy(dst);
    harness_rm_rf(dst);
    log.cancel_on_call = 1;
    CHECK_OK(goldclone_cancel_free(c));

    /* a big tree, cancelled at the first periodic report: cancelled, or done before that */
    char *big = make_big_source(base, 3000);
    char *dst2 = harness_join(base, "dst2");
    struct progress_log log2 = {.monotonic = 1, .thread = pthread_self(), .cancel_on_call = 2};
    o.cancel = NULL;
    o.progress_user_data = &log2;
    o.progress_interval_ms = 1;
    goldclone_result rc = goldclone_copy_tree(big, dst2, &o, NULL);
    fprintf(stderr, "  big tree: %s after %d calls\n", goldclone_result_name(rc), log2.calls);
    CHECK(rc == GOLDCLONE_RESULT_CANCELLED || rc == GOLDCLONE_RESULT_OK);
    if (rc == GOLDCLONE_RESULT_CANCELLED) CHECK(!harness_exists(dst2));
    CHECK(log2.calls <= 2); /* not called again once it asked to cancel */
    CHECK(staging_left(base) == 0);
    harness_rm_rf(dst2);

    /* A stop is honoured wherever it comes, the end of the copy included: a callback that
       asked to stop always gets CANCELLED and nothing at dst; a copy that finished first
       never asked it again. */
    int cancelled_runs = 0;
    for (int stop_at = 2; stop_at <= 2048; stop_at *= 2) {
        struct progress_log l = {.monotonic = 1, .thread = pthread_self(), .cancel_on_call = stop_at};
        o.progress_user_data = &l;
        rc = goldclone_copy_tree(big, dst2, &o, NULL);
        int asked = l.stopped;
        if (asked) {
            CHECK_RC(rc, GOLDCLONE_RESULT_CANCELLED);
            CHECK(!harness_exists(dst2));
            CHECK(l.finished_calls == 0 && l.calls == stop_at);
            cancelled_runs++;
        } else {
            CHECK_OK(rc);
            CHECK(l.finished_calls == 1);
        }
        harness_rm_rf(dst2);
        CHECK(staging_left(base) == 0);
    }
    fprintf(stderr, "  stop honoured in %d of 11 runs (the others finished first)\n", cancelled_runs);
    harness_rm_rf(base);
    free(big); free(dst2); free(src); free(dst); free(base);
}

struct canceller {
    goldclone_cancel *cancel;
    goldclone_result rc;
};

static void *cancel_soon(void *arg) {
    struct canceller *c = arg;
    usleep(2000);
    c->rc = goldclone_cancel_cancel(c->cancel);
    return NULL;
}

static void test_cancel_from_another_thread(void) {
    const char *root = harness_fs_path("ext4");
    if (!root) return;
    char *base = harness_scratch(root, "thcancel");
    char *big = make_big_source(base, 3000), *dst = harness_join(base, "dst");
    struct canceller c = {0};
    goldclone_copy_options o;
    CHECK_OK(goldclone_cancel_new(&c.cancel));
    CHECK_OK(goldclone_copy_options_init(&o));
    o.cancel = c.cancel;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, cancel_soon, &c) == 0);
    goldclone_result rc = goldclone_copy_tree(big, dst, &o, NULL);
    pthread_join(t, NULL);
    fprintf(stderr, "  copy returned %s\n", goldclone_result_name(rc));
    CHECK(c.rc == GOLDCLONE_RESULT_OK);
    CHECK(rc == GOLDCLONE_RESULT_CANCELLED || rc == GOLDCLONE_RESULT_OK);
    if (rc == GOLDCLONE_RESULT_CANCELLED) CHECK(!harness_exists(dst));
    CHECK(staging_left(base) == 0);
    CHECK_OK(goldclone_cancel_free(c.cancel));
    harness_rm_rf(base);
    free(big); free(dst); free(base);
}

int main(void) {
    if (harness_filesystems(fs) == 0) {
        printf("test_copy: 0 passed, 1 failed\n");
        return 1;
    }
    RUN(test_copy_with_progress);
    RUN(test_copy_across_filesystems);
    RUN(test_copy_bad_inputs);
    RUN(test_cancel_token);
    RUN(test_cancel_from_callback);
    RUN(test_cancel_from_another_thread);
    return harness_finish("test_copy");
}
