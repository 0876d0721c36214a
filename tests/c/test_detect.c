/* Detection on the loop filesystems (or on ZFS in the guest), through the C API. */
#include <limits.h>

#include "harness.h"

static struct harness_fs fs[6];

static goldclone_detect_kind expected_kind(const char *name) {
    if (strcmp(name, "xfs") == 0) return GOLDCLONE_DETECT_KIND_REFLINK;
    if (strcmp(name, "btrfs") == 0) return GOLDCLONE_DETECT_KIND_BTRFS;
    if (strcmp(name, "root") == 0) return GOLDCLONE_DETECT_KIND_ZFS_DATASET;
    return GOLDCLONE_DETECT_KIND_PLAIN;
}

static const char *expected_fs_type(const char *name) {
    return strcmp(name, "root") == 0 ? "zfs" : name;
}

static void test_detect_each_filesystem(void) {
    for (int i = 0; fs[i].name; i++) {
        fprintf(stderr, "  on %s (%s)\n", fs[i].name, fs[i].path);
        goldclone_detection *d = NULL;
        char buf[GOLDCLONE_PATH_BUF_SIZE], real[PATH_MAX];
        size_t len = 0;
        goldclone_detect_kind kind = 0;
        int32_t reflink = 7;
        CHECK_OK(goldclone_detect(fs[i].path, &d));
        if (!d) continue;
        CHECK_OK(goldclone_detection_kind(d, &kind));
        /* in the guest the root is a ZFS dataset or a filesystem on a zvol */
        CHECK(kind == expected_kind(fs[i].name) ||
              (strcmp(fs[i].name, "root") == 0 && kind == GOLDCLONE_DETECT_KIND_ZVOL));
        CHECK_OK(goldclone_detection_string(d, GOLDCLONE_DETECTION_FIELD_FS_TYPE, buf, sizeof buf, &len));
        if (kind != GOLDCLONE_DETECT_KIND_ZVOL) CHECK(strcmp(buf, expected_fs_type(fs[i].name)) == 0);
        CHECK(len == strlen(buf));
        CHECK(realpath(fs[i].path, real) != NULL);
        CHECK_OK(goldclone_detection_string(d, GOLDCLONE_DETECTION_FIELD_PATH, buf, sizeof buf, &len));
        CHECK(strcmp(buf, real) == 0);
        CHECK_OK(goldclone_detection_string(d, GOLDCLONE_DETECTION_FIELD_MOUNT_SOURCE, buf, sizeof buf, &len));
        CHECK(len > 0);
        CHECK_OK(goldclone_detection_reflink(d, &reflink));
        if (strcmp(fs[i].name, "xfs") == 0 || strcmp(fs[i].name, "btrfs") == 0) CHECK(reflink == 1);
        if (strcmp(fs[i].name, "ext4") == 0 || strcmp(fs[i].name, "tmpfs") == 0) CHECK(reflink == 0);
        if (strcmp(fs[i].name, "root") != 0) {
            /* a loop mount: the path is its mount point */
            CHECK_OK(goldclone_detection_string(d, GOLDCLONE_DETECTION_FIELD_MOUNT_POINT, buf, sizeof buf, &len));
            CHECK(strcmp(buf, real) == 0);
        }
        if (kind == GOLDCLONE_DETECT_KIND_ZFS_DATASET || kind == GOLDCLONE_DETECT_KIND_ZVOL) {
            char pool[256];
            CHECK_OK(goldclone_detection_string(d, GOLDCLONE_DETECTION_FIELD_POOL, buf, sizeof buf, &len));
            CHECK_OK(goldclone_detection_string(d, GOLDCLONE_DETECTION_FIELD_DATASET, buf, sizeof buf, &len));
            CHECK_OK(goldclone_zfs_pool(fs[i].path, pool, sizeof pool, &len));
            CHECK(strncmp(buf, pool, strlen(pool)) == 0);
        } else {
            CHECK_RC(goldclone_detection_string(d, GOLDCLONE_DETECTION_FIELD_POOL, buf, sizeof buf, &len),
                     GOLDCLONE_RESULT_NOT_FOUND);
            CHECK_RC(goldclone_detection_string(d, GOLDCLONE_DETECTION_FIELD_DATASET, buf, sizeof buf, &len),
                     GOLDCLONE_RESULT_NOT_FOUND);
            CHECK_RC(goldclone_zfs_pool(fs[i].path, buf, sizeof buf, &len), GOLDCLONE_RESULT_NOT_FOUND);
        }
        CHECK_RC(goldclone_detection_string(d, GOLDCLONE_DETECTION_FIELD_DEVICE, buf, sizeof buf, &len),
                 kind == GOLDCLONE_DETECT_KIND_ZVOL ? GOLDCLONE_RESULT_OK : GOLDCLONE_RESULT_NOT_FOUND);
        bool subvol = false;
        uint64_t id = 0;
        if (kind == GOLDCLONE_DETECT_KIND_BTRFS) {
            CHECK_OK(goldclone_detection_btrfs(d, &subvol, &id));
            CHECK(subvol && id == 5); /* the mount of a fresh btrfs is the top-level subvolume */
            CHECK_OK(goldclone_detection_btrfs(d, NULL, NULL));
        } else {
            CHECK_RC(goldclone_detection_btrfs(d, &subvol, &id), GOLDCLONE_RESULT_NOT_FOUND);
        }
        CHECK_OK(goldclone_detection_free(d));
    }
}

/* Paths are bytes: a directory whose name is not UTF-8 is detected and reported verbatim. */
static void test_non_utf8_path(void) {
    for (int i = 0; fs[i].name; i++) {
        char *base = harness_scratch(fs[i].path, "detect");
        char *dir = harness_join(base, "caf\xe9-\xff\xfe");
        CHECK(mkdir(dir, 0755) == 0);
        goldclone_detection *d = NULL;
        char buf[GOLDCLONE_PATH_BUF_SIZE], real[PATH_MAX];
        size_t len = 0;
        CHECK_OK(goldclone_detect(dir, &d));
        CHECK(realpath(dir, real) != NULL);
        CHECK_OK(goldclone_detection_string(d, GOLDCLONE_DETECTION_FIELD_PATH, buf, sizeof buf, &len));
        CHECK(len == strlen(real) && memcmp(buf, real, len + 1) == 0);
        CHECK(strstr(buf, "\xff\xfe") != NULL);
        CHECK_OK(goldclone_detection_free(d));
        /* a file inside it, too */
        char *file = harness_join(dir, "\x80.txt");
        CHECK(harness_write(file, "x") == 0);
        CHECK_OK(goldclone_detect(file, &d));
        CHECK_OK(goldclone_detection_free(d));
        free(file);
        harness_rm_rf(base);
        free(dir);
        free(base);
    }
}

static void test_bad_paths(void) {
    goldclone_detection *d = NULL;
    char buf[64];
    size_t len;
    CHECK_RC(goldclone_detect("/nonexistent/goldclone", &d), GOLDCLONE_RESULT_NOT_FOUND);
    CHECK(d == NULL);
    CHECK(goldclone_last_error_errno() == ENOENT);
    CHECK_RC(goldclone_detect("", &d), GOLDCLONE_RESULT_NOT_FOUND);
    /* a component longer than NAME_MAX, and a path longer than PATH_MAX */
    size_t n = 70000;
    char *longp = malloc(n + 2);
    longp[0] = '/';
    memset(longp + 1, 'a', n);
    longp[n + 1] = 0;
    CHECK_RC(goldclone_detect(longp, &d), GOLDCLONE_RESULT_NAME_TOO_LONG);
    CHECK_RC(goldclone_zfs_pool(longp, buf, sizeof buf, &len), GOLDCLONE_RESULT_NAME_TOO_LONG);
    /* many components: realpath stops at the first missing one (NOT_FOUND) */
    for (size_t i = 100; i < n; i += 101) longp[i] = '/';
    goldclone_result rc = goldclone_detect(longp, &d);
    CHECK(rc == GOLDCLONE_RESULT_NOT_FOUND || rc == GOLDCLONE_RESULT_NAME_TOO_LONG);
    free(longp);
    CHECK(d == NULL);
    /* not a directory on the way */
    CHECK_RC(goldclone_detect("/etc/hostname/x", &d), GOLDCLONE_RESULT_NOT_A_DIRECTORY);
    CHECK_RC(goldclone_zfs_pool("/nonexistent/goldclone", buf, sizeof buf, &len), GOLDCLONE_RESULT_NOT_FOUND);
}

int main(void) {
    if (harness_filesystems(fs) == 0) {
        printf("test_detect: 0 passed, 1 failed\n");
        return 1;
    }
    RUN(test_detect_each_filesystem);
    RUN(test_non_utf8_path);
    RUN(test_bad_paths);
    return harness_finish("test_detect");
}
