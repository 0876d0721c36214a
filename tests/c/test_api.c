/* The API's conventions without any filesystem work: versions, result codes, NULL and bogus
 * arguments, the last error, output buffers. */
#include <pthread.h>

#include "harness.h"

/* The numbers are part of the ABI. */
_Static_assert(GOLDCLONE_RESULT_OK == 0, "fixed number");
_Static_assert(GOLDCLONE_RESULT_NOT_FOUND == 1, "fixed number");
_Static_assert(GOLDCLONE_RESULT_ALREADY_EXISTS == 2, "fixed number");
_Static_assert(GOLDCLONE_RESULT_NOT_A_DIRECTORY == 3, "fixed number");
_Static_assert(GOLDCLONE_RESULT_INVALID_ARGUMENT == 4, "fixed number");
_Static_assert(GOLDCLONE_RESULT_INVALID_NAME == 5, "fixed number");
_Static_assert(GOLDCLONE_RESULT_NAME_TOO_LONG == 6, "fixed number");
_Static_assert(GOLDCLONE_RESULT_NO_SPACE == 7, "fixed number");
_Static_assert(GOLDCLONE_RESULT_BUSY == 8, "fixed number");
_Static_assert(GOLDCLONE_RESULT_PERMISSION_DENIED == 9, "fixed number");
_Static_assert(GOLDCLONE_RESULT_UNSUPPORTED == 10, "fixed number");
_Static_assert(GOLDCLONE_RESULT_CROSS_DEVICE == 11, "fixed number");
_Static_assert(GOLDCLONE_RESULT_CANCELLED == 12, "fixed number");
_Static_assert(GOLDCLONE_RESULT_ZFS_UNAVAILABLE == 13, "fixed number");
_Static_assert(GOLDCLONE_RESULT_SNAPSHOT_HAS_CLONES == 15, "fixed number");
_Static_assert(GOLDCLONE_RESULT_SNAPSHOT_HELD == 16, "fixed number");
_Static_assert(GOLDCLONE_RESULT_DAMAGED == 17, "fixed number");
_Static_assert(GOLDCLONE_RESULT_INCOMPLETE == 18, "fixed number");
_Static_assert(GOLDCLONE_RESULT_IO == 14, "fixed number");
_Static_assert(GOLDCLONE_RESULT_OTHER == 99, "fixed number");
_Static_assert(GOLDCLONE_RESULT_NULL_PARAMETER == 100, "fixed number");
_Static_assert(GOLDCLONE_RESULT_INVALID_HANDLE == 101, "fixed number");
_Static_assert(GOLDCLONE_RESULT_BUFFER_TOO_SMALL == 102, "fixed number");
_Static_assert(GOLDCLONE_RESULT_PANIC == 103, "fixed number");
_Static_assert(sizeof(goldclone_result) == 4, "uint32_t");

static void test_version(void) {
    const char *v = goldclone_version();
    CHECK(v != NULL && strlen(v) >= 5 && v[0] >= '0' && v[0] <= '9');
    CHECK(goldclone_abi_version() == GOLDCLONE_ABI_VERSION);
    CHECK(GOLDCLONE_PATH_BUF_SIZE == 4096);
}

static void test_result_names(void) {
    CHECK(strcmp(goldclone_result_name(GOLDCLONE_RESULT_OK), "GOLDCLONE_RESULT_OK") == 0);
    CHECK(strcmp(goldclone_result_name(GOLDCLONE_RESULT_NOT_FOUND), "GOLDCLONE_RESULT_NOT_FOUND") == 0);
    CHECK(strcmp(goldclone_result_name(GOLDCLONE_RESULT_INVALID_HANDLE),
                 "GOLDCLONE_RESULT_INVALID_HANDLE") == 0);
    CHECK(strcmp(goldclone_result_name(GOLDCLONE_RESULT_PANIC), "GOLDCLONE_RESULT_PANIC") == 0);
    CHECK(strcmp(goldclone_result_name(GOLDCLONE_RESULT_SNAPSHOT_HELD), "GOLDCLONE_RESULT_SNAPSHOT_HELD") == 0);
    CHECK(strcmp(goldclone_result_name(GOLDCLONE_RESULT_DAMAGED), "GOLDCLONE_RESULT_DAMAGED") == 0);
    CHECK(strcmp(goldclone_result_name(GOLDCLONE_RESULT_INCOMPLETE), "GOLDCLONE_RESULT_INCOMPLETE") == 0);
    CHECK(strcmp(goldclone_result_name(GOLDCLONE_RESULT_PARSE), "GOLDCLONE_RESULT_PARSE") == 0);
    CHECK(strcmp(goldclone_result_name(GOLDCLONE_RESULT_EDIT_FAILED), "GOLDCLONE_RESULT_EDIT_FAILED") == 0);
    CHECK(strcmp(goldclone_result_name(GOLDCLONE_RESULT_BAD_STREAM), "GOLDCLONE_RESULT_BAD_STREAM") == 0);
    CHECK(strcmp(goldclone_result_name(22), "GOLDCLONE_RESULT_UNKNOWN") == 0);
    CHECK(strcmp(goldclone_result_name(0xffffffffu), "GOLDCLONE_RESULT_UNKNOWN") == 0);
    /* every number 0..=21 and 99..=103 has a name */
    for (uint32_t c = 0; c <= 103; c++) {
        int known = c <= 21 || c >= 99;
        CHECK((strcmp(goldclone_result_name(c), "GOLDCLONE_RESULT_UNKNOWN") != 0) == known);
    }
}

static void test_enum_names(void) {
    CHECK(strcmp(goldclone_backend_name(GOLDCLONE_BACKEND_AUTO), "auto") == 0);
    CHECK(strcmp(goldclone_backend_name(GOLDCLONE_BACKEND_ZFS), "zfs") == 0);
    CHECK(strcmp(goldclone_backend_name(GOLDCLONE_BACKEND_ZVOL), "zvol") == 0);
    CHECK(strcmp(goldclone_backend_name(GOLDCLONE_BACKEND_BTRFS), "btrfs") == 0);
    CHECK(strcmp(goldclone_backend_name(GOLDCLONE_BACKEND_COPY), "copy") == 0);
    CHECK(strcmp(goldclone_backend_name(GOLDCLONE_BACKEND_IMAGE), "image") == 0);
    CHECK(strcmp(goldclone_backend_name(6), "unknown") == 0);
    CHECK(strcmp(goldclone_backend_name(0xffffffffu), "unknown") == 0);
    CHECK(strcmp(goldclone_detect_kind_name(GOLDCLONE_DETECT_KIND_ZFS_DATASET), "zfs_dataset") == 0);
    CHECK(strcmp(goldclone_detect_kind_name(GOLDCLONE_DETECT_KIND_ZVOL), "zvol") == 0);
    CHECK(strcmp(goldclone_detect_kind_name(GOLDCLONE_DETECT_KIND_BTRFS), "btrfs") == 0);
    CHECK(strcmp(goldclone_detect_kind_name(GOLDCLONE_DETECT_KIND_REFLINK), "reflink") == 0);
    CHECK(strcmp(goldclone_detect_kind_name(GOLDCLONE_DETECT_KIND_PLAIN), "plain") == 0);
    CHECK(strcmp(goldclone_detect_kind_name(0), "unknown") == 0);
    CHECK(strcmp(goldclone_detect_kind_name(6), "unknown") == 0);
    /* the same pointer each time: static, never freed */
    CHECK(goldclone_backend_name(GOLDCLONE_BACKEND_ZFS) == goldclone_backend_name(GOLDCLONE_BACKEND_ZFS));
}

static void test_null_parameters(void) {
    char buf[64];
    size_t len;
    uint64_t u64;
    bool b;
    goldclone_cache *cache = NULL;
    goldclone_detection *det = NULL;
    goldclone_cancel *cancel = NULL;
    goldclone_info *info = NULL;
    goldclone_detect_kind kind;
    goldclone_backend backend;

    /* free(NULL) is a no-op */
    CHECK_OK(goldclone_cache_free(NULL));
    CHECK_OK(goldclone_detection_free(NULL));
    CHECK_OK(goldclone_cancel_free(NULL));
    CHECK_OK(goldclone_info_free(NULL));
    CHECK_OK(goldclone_gc_report_free(NULL));

    CHECK_RC(goldclone_detect(NULL, &det), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK(strstr(harness_last_error(), "path") != NULL);
    CHECK_RC(goldclone_detect("/", NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_detection_kind(NULL, &kind), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_detection_string(NULL, GOLDCLONE_DETECTION_FIELD_PATH, buf, sizeof buf, &len),
             GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_detection_reflink(NULL, NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_detection_btrfs(NULL, &b, &u64), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_zfs_pool(NULL, buf, sizeof buf, &len), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_zfs_pool("/", NULL, 10, &len), GOLDCLONE_RESULT_NULL_PARAMETER);

    CHECK_RC(goldclone_cancel_new(NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cancel_cancel(NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cancel_is_cancelled(NULL, &b), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_copy_options_init(NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_copy_tree(NULL, "/nonexistent-dst", NULL, NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_copy_tree("/nonexistent-src", NULL, NULL, NULL), GOLDCLONE_RESULT_NULL_PARAMETER);

    CHECK_RC(goldclone_open_options_init(NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_open(NULL, NULL, &cache), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_open("/tmp", NULL, NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK(cache == NULL);
    CHECK_RC(goldclone_cache_backend(NULL, &backend), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_root(NULL, buf, sizeof buf, &len), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_import(NULL, "p", "/tmp", &u64), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_setup(NULL, "p", "s", buf, sizeof buf, &len), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_promote(NULL, "p", "s", &u64), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_cleanup(NULL, "p", "s"), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_gc(NULL, NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_info(NULL, "p", &info), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_gc_report_count(NULL, &len), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_gc_report_item(NULL, 0, buf, sizeof buf, &len), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_info_get(NULL, &u64, NULL, NULL, NULL, NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_info_source_session(NULL, buf, sizeof buf, &len), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_info_session(NULL, 0, buf, sizeof buf, &len, &u64), GOLDCLONE_RESULT_NULL_PARAMETER);
    (void)cancel;
}

/* Pointers that were never handles: the library must not dereference them. */
static void test_bogus_handles(void) {
    char buf[64];
    size_t len;
    bool b;
    uint64_t u64;
    long on_stack = 42;
    goldclone_cache *junk_cache = (goldclone_cache *)&on_stack;
    goldclone_cancel *odd = (goldclone_cancel *)(uintptr_t)0x1;
    goldclone_info *high = (goldclone_info *)(uintptr_t)0xdeadbeefcafe0000ull;
    goldclone_detection *heap = malloc(16);

    CHECK_RC(goldclone_cache_setup(junk_cache, "p", "s", buf, sizeof buf, &len), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK(strstr(harness_last_error(), "goldclone_cache") != NULL);
    CHECK_RC(goldclone_cache_free(junk_cache), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_cancel_cancel(odd), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_cancel_free(odd), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_info_get(high, &u64, NULL, NULL, NULL, NULL), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_info_free(high), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_detection_string(heap, GOLDCLONE_DETECTION_FIELD_PATH, buf, sizeof buf, &len),
             GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_detection_free(heap), GOLDCLONE_RESULT_INVALID_HANDLE);
    free(heap);
    CHECK(on_stack == 42);

    /* a live handle of another type */
    goldclone_cancel *cancel = NULL;
    CHECK_OK(goldclone_cancel_new(&cancel));
    CHECK_RC(goldclone_cache_gc((goldclone_cache *)cancel, NULL), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK(strstr(harness_last_error(), "goldclone_cancel") != NULL);
    CHECK_RC(goldclone_info_free((goldclone_info *)cancel), GOLDCLONE_RESULT_INVALID_HANDLE);
    /* ... and it is still live afterwards */
    CHECK_OK(goldclone_cancel_is_cancelled(cancel, &b));
    CHECK(!b);
    CHECK_OK(goldclone_cancel_cancel(cancel));
    CHECK_OK(goldclone_cancel_cancel(cancel));
    CHECK_OK(goldclone_cancel_is_cancelled(cancel, &b));
    CHECK(b);
    CHECK_OK(goldclone_cancel_free(cancel));
}

static void test_last_error(void) {
    char buf[256];
    size_t len = 12345;
    goldclone_detection *det = NULL;

    CHECK_RC(goldclone_detect("/nonexistent/goldclone/path", &det), GOLDCLONE_RESULT_NOT_FOUND);
    CHECK(det == NULL);
    CHECK(goldclone_last_error_code() == GOLDCLONE_RESULT_NOT_FOUND);
    CHECK(goldclone_last_error_errno() == ENOENT);
    CHECK_OK(goldclone_last_error_message(buf, sizeof buf, &len));
    CHECK(len == strlen(buf) && len > 0);
    CHECK(strstr(buf, "/nonexistent/goldclone/path") != NULL);

    /* reading it does not change it */
    CHECK(goldclone_last_error_code() == GOLDCLONE_RESULT_NOT_FOUND);
    size_t full = len;

    /* length only */
    len = 0;
    CHECK_RC(goldclone_last_error_message(NULL, 0, &len), GOLDCLONE_RESULT_BUFFER_TOO_SMALL);
    CHECK(len == full);

    /* truncated: prefix, NUL-terminated, BUFFER_TOO_SMALL, full length reported */
    char small[6];
    memset(small, 'x', sizeof small);
    CHECK_RC(goldclone_last_error_message(small, sizeof small, &len), GOLDCLONE_RESULT_BUFFER_TOO_SMALL);
    CHECK(len == full);
    CHECK(small[5] == 0 && strncmp(small, buf, 5) == 0);

    /* bad buffer arguments: an error code, and the last error is still the detect failure */
    CHECK_RC(goldclone_last_error_message(NULL, 10, &len), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK(goldclone_last_error_code() == GOLDCLONE_RESULT_NOT_FOUND);

    /* a successful call clears it */
    goldclone_cancel *c = NULL;
    CHECK_OK(goldclone_cancel_new(&c));
    CHECK(goldclone_last_error_code() == GOLDCLONE_RESULT_OK);
    CHECK(goldclone_last_error_errno() == 0);
    CHECK_OK(goldclone_last_error_message(buf, sizeof buf, &len));
    CHECK(len == 0 && buf[0] == 0);
    CHECK_OK(goldclone_cancel_free(c));
}

static void *fail_in_thread(void *arg) {
    (void)arg;
    goldclone_detection *det = NULL;
    goldclone_detect("/nonexistent-in-thread", &det);
    return (void *)(uintptr_t)goldclone_last_error_code();
}

static void test_last_error_is_per_thread(void) {
    goldclone_cancel *c = NULL;
    CHECK_RC(goldclone_cancel_cancel(NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    pthread_t t;
    void *ret = NULL;
    CHECK(pthread_create(&t, NULL, fail_in_thread, NULL) == 0);
    CHECK(pthread_join(t, &ret) == 0);
    CHECK((uintptr_t)ret == GOLDCLONE_RESULT_NOT_FOUND);
    /* this thread still sees its own failure */
    CHECK(goldclone_last_error_code() == GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK(strstr(harness_last_error(), "nonexistent-in-thread") == NULL);
    CHECK_OK(goldclone_cancel_new(&c));
    CHECK_OK(goldclone_cancel_free(c));
}

static void test_output_buffers(void) {
    goldclone_detection *det = NULL;
    char buf[GOLDCLONE_PATH_BUF_SIZE];
    char tiny[2] = {'x', 'x'};
    size_t len = 0;
    CHECK_OK(goldclone_detect("/", &det));
    CHECK_OK(goldclone_detection_string(det, GOLDCLONE_DETECTION_FIELD_PATH, buf, sizeof buf, &len));
    CHECK(len == 1 && strcmp(buf, "/") == 0);
    /* exactly len bytes is one too few (no room for the NUL) */
    CHECK_RC(goldclone_detection_string(det, GOLDCLONE_DETECTION_FIELD_PATH, tiny, 1, &len),
             GOLDCLONE_RESULT_BUFFER_TOO_SMALL);
    CHECK(len == 1 && tiny[0] == 0 && tiny[1] == 'x');
    CHECK_RC(goldclone_detection_string(det, GOLDCLONE_DETECTION_FIELD_PATH, NULL, 0, &len),
             GOLDCLONE_RESULT_BUFFER_TOO_SMALL);
    CHECK(len == 1);
    /* out_len may be NULL */
    CHECK_OK(goldclone_detection_string(det, GOLDCLONE_DETECTION_FIELD_FS_TYPE, buf, sizeof buf, NULL));
    /* an unknown field is an error code, not undefined behaviour */
    CHECK_RC(goldclone_detection_string(det, 999, buf, sizeof buf, &len), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    CHECK_RC(goldclone_detection_string(det, 0, buf, sizeof buf, &len), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    CHECK_OK(goldclone_detection_free(det));
}

static void test_bad_options(void) {
    goldclone_open_options o;
    goldclone_cache *cache = NULL;
    memset(&o, 0xab, sizeof o);
    CHECK_OK(goldclone_open_options_init(&o));
    CHECK(o.backend == GOLDCLONE_BACKEND_AUTO && o.copy_threads == 0);
    o.backend = 77;
    CHECK_RC(goldclone_cache_open("/tmp/goldclone-never-created", &o, &cache), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    CHECK(cache == NULL);
    CHECK(!harness_exists("/tmp/goldclone-never-created"));

    goldclone_copy_options c;
    memset(&c, 0xab, sizeof c);
    CHECK_OK(goldclone_copy_options_init(&c));
    CHECK(c.threads == 0 && !c.sync && !c.count_totals && c.clone_min_size == 0 && c.progress == NULL &&
          c.progress_user_data == NULL && c.progress_interval_ms == 0 && c.cancel == NULL);
}

int main(void) {
    RUN(test_version);
    RUN(test_result_names);
    RUN(test_enum_names);
    RUN(test_null_parameters);
    RUN(test_bogus_handles);
    RUN(test_last_error);
    RUN(test_last_error_is_per_thread);
    RUN(test_output_buffers);
    RUN(test_bad_options);
    return harness_finish("test_api");
}
