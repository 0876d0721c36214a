/* Freed handles, used once: every handle type, after its *_free, gives
 * GOLDCLONE_RESULT_INVALID_HANDLE (and a second free too), never a crash.
 *
 * This is built like every harness, under AddressSanitizer: the library never dereferences a
 * handle pointer (it looks the address up in a registry) and keeps freed handles' memory in a
 * quarantine, so using a freed handle reads no freed memory and ASan stays quiet. If a change
 * made the library read through the pointer, ASan would report a heap-use-after-free here. */
#include "harness.h"

static struct harness_fs fs[6];

static void test_freed_cancel(void) {
    goldclone_cancel *c = NULL;
    bool b;
    CHECK_OK(goldclone_cancel_new(&c));
    CHECK_OK(goldclone_cancel_free(c));
    CHECK_RC(goldclone_cancel_cancel(c), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_cancel_is_cancelled(c, &b), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_cancel_free(c), GOLDCLONE_RESULT_INVALID_HANDLE);
}

static void test_freed_detection(void) {
    goldclone_detection *d = NULL;
    goldclone_detect_kind k;
    char buf[64];
    size_t len;
    CHECK_OK(goldclone_detect(fs[0].path, &d));
    CHECK_OK(goldclone_detection_free(d));
    CHECK_RC(goldclone_detection_kind(d, &k), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_detection_string(d, GOLDCLONE_DETECTION_FIELD_PATH, buf, sizeof buf, &len),
             GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK(strstr(harness_last_error(), "not live") != NULL);
    CHECK_RC(goldclone_detection_free(d), GOLDCLONE_RESULT_INVALID_HANDLE);
}

static void test_freed_cache_info_report(void) {
    char *base = harness_scratch(strcmp(fs[0].name, "root") == 0 ? "/tmp" : fs[0].path, "freed");
    char *golden = harness_join(base, "golden");
    char *root = strcmp(fs[0].name, "root") == 0 ? strdup(fs[0].path) : harness_join(base, "cache");
    char project[64], buf[GOLDCLONE_PATH_BUF_SIZE];
    size_t len;
    uint64_t gen;
    snprintf(project, sizeof project, "freed-%d", (int)getpid());
    CHECK(mkdir(golden, 0755) == 0);
    if (strcmp(fs[0].name, "root") != 0) CHECK(mkdir(root, 0755) == 0);

    goldclone_cache *cache = NULL;
    goldclone_info *info = NULL;
    goldclone_gc_report *report = NULL;
    CHECK_OK(goldclone_cache_open(root, NULL, &cache));
    CHECK_OK(goldclone_cache_import(cache, project, golden, &gen));
    CHECK_OK(goldclone_cache_info(cache, project, &info));
    CHECK_OK(goldclone_cache_gc(cache, &report));

    CHECK_OK(goldclone_info_free(info));
    CHECK_RC(goldclone_info_get(info, &gen, NULL, NULL, NULL, NULL), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_info_free(info), GOLDCLONE_RESULT_INVALID_HANDLE);

    CHECK_OK(goldclone_gc_report_free(report));
    CHECK_RC(goldclone_gc_report_count(report, &len), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_gc_report_free(report), GOLDCLONE_RESULT_INVALID_HANDLE);

    CHECK_OK(goldclone_cache_free(cache));
    CHECK_RC(goldclone_cache_setup(cache, project, "s1", buf, sizeof buf, &len), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_cache_free(cache), GOLDCLONE_RESULT_INVALID_HANDLE);
    /* the setup above did nothing */
    goldclone_cache *again = NULL;
    CHECK_OK(goldclone_cache_open(root, NULL, &again));
    CHECK_OK(goldclone_cache_info(again, project, &info));
    size_t sessions = 99;
    CHECK_OK(goldclone_info_get(info, NULL, NULL, NULL, NULL, &sessions));
    CHECK(sessions == 0);
    CHECK_OK(goldclone_info_free(info));
    CHECK_OK(goldclone_cache_free(again));
    harness_rm_rf(base);
    free(golden);
    free(root);
    free(base);
}

/* A new handle never reuses a recently freed one's address, so a stale pointer cannot silently
 * act on a newer object. */
static void test_addresses_are_not_reused_soon(void) {
    enum { N = 1000 };
    static goldclone_cancel *freed[N];
    for (int i = 0; i < N; i++) {
        CHECK_OK(goldclone_cancel_new(&freed[i]));
        CHECK_OK(goldclone_cancel_free(freed[i]));
    }
    for (int i = 0; i < N; i++) {
        goldclone_cancel *c = NULL;
        CHECK_OK(goldclone_cancel_new(&c));
        for (int j = 0; j < N; j++) CHECK(c != freed[j]);
        CHECK_OK(goldclone_cancel_free(c));
    }
    for (int i = 0; i < N; i++) CHECK_RC(goldclone_cancel_cancel(freed[i]), GOLDCLONE_RESULT_INVALID_HANDLE);
}

int main(void) {
    if (harness_filesystems(fs) == 0) {
        printf("test_freed_handle: 0 passed, 1 failed\n");
        return 1;
    }
    RUN(test_freed_cancel);
    RUN(test_freed_detection);
    RUN(test_freed_cache_info_report);
    RUN(test_addresses_are_not_reused_soon);
    return harness_finish("test_freed_handle");
}
