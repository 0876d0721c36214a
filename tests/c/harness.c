#include "harness.h"

#include <sys/wait.h>

int harness_failed_checks;
static int passed, failed;

const char *harness_last_error(void) {
    static _Thread_local char buf[1024];
    size_t len = 0;
    goldclone_last_error_message(buf, sizeof buf, &len);
    return buf;
}

void harness_run(const char *name, void (*test)(void)) {
    harness_failed_checks = 0;
    fprintf(stderr, "--- %s\n", name);
    test();
    if (harness_failed_checks == 0) {
        passed++;
        fprintf(stderr, "ok   %s\n", name);
    } else {
        failed++;
        fprintf(stderr, "FAIL %s (%d checks)\n", name, harness_failed_checks);
    }
}

int harness_finish(const char *suite) {
    size_t live = goldclone_debug_live_handles();
    if (live != 0) {
        fprintf(stderr, "FAIL %s: %zu handles still live at exit (leaked by a test)\n", suite, live);
        failed++;
    }
    printf("%s: %d passed, %d failed\n", suite, passed, failed);
    fflush(stdout);
    return failed == 0 && passed > 0 ? 0 : 1;
}

static const char *vars[][2] = {
    {"xfs", "GOLDCLONE_TEST_XFS"},
    {"btrfs", "GOLDCLONE_TEST_BTRFS"},
    {"ext4", "GOLDCLONE_TEST_EXT4"},
    {"tmpfs", "GOLDCLONE_TEST_TMPFS"},
};

int harness_filesystems(struct harness_fs fs[6]) {
    int n = 0;
    const char *root = getenv("GOLDCLONE_TEST_ROOT");
    if (root && *root) {
        fs[n].name = "root";
        fs[n++].path = root;
    } else {
        for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
            const char *p = getenv(vars[i][1]);
            if (!p || !*p) {
                fprintf(stderr, "%s is not set: run tests/loopfs.sh up and source its env, "
                                "or set GOLDCLONE_TEST_ROOT\n", vars[i][1]);
                return 0;
            }
            fs[n].name = vars[i][0];
            fs[n++].path = p;
        }
    }
    fs[n].name = NULL;
    fs[n].path = NULL;
    return n;
}

const char *harness_fs_path(const char *name) {
    const char *root = getenv("GOLDCLONE_TEST_ROOT");
    if (root && *root) return root;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        if (strcmp(vars[i][0], name) == 0) {
            const char *p = getenv(vars[i][1]);
            if (p && *p) return p;
            fprintf(stderr, "  FAIL %s is not set\n", vars[i][1]);
            harness_failed_checks++;
            return NULL;
        }
    }
    harness_failed_checks++;
    return NULL;
}

char *harness_join(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 2);
    if (!s) abort();
    memcpy(s, a, la);
    s[la] = '/';
    memcpy(s + la + 1, b, lb + 1);
    return s;
}

char *harness_scratch(const char *base, const char *tag) {
    static int counter;
    char name[256];
    snprintf(name, sizeof name, "c-%d-%s-%d", (int)getpid(), tag, __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
    char *p = harness_join(base, name);
    if (mkdir(p, 0755) != 0) {
        fprintf(stderr, "  FAIL mkdir %s: %s\n", p, strerror(errno));
        harness_failed_checks++;
    }
    return p;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    if (flag == FTW_DP) {
        if (rmdir(path) != 0 && errno != ENOENT) {
            /* a btrfs subvolume or a mount point: leave it to the library's cleanup */
        }
    } else {
        unlink(path);
    }
    return 0;
}

/* Run a program quietly and wait for it. */
static void run_quiet(char *const argv[]) {
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    if (pid > 0) waitpid(pid, NULL, 0);
}

void harness_rm_rf(const char *path) {
    /* btrfs subvolumes the library left (read-only generations) first, deepest first: their
     * files cannot be unlinked, and the walk below does not enter them (another st_dev). A
     * directory with inode 256 that is no subvolume makes the btrfs commands fail, harmlessly. */
    char *subvolumes[] = {"find", (char *)path, "-depth", "-mindepth", "1", "-type", "d",
                          "-inum", "256", "-exec", "sh", "-c",
                          "btrfs property set -ts \"$1\" ro false; btrfs subvolume delete \"$1\"",
                          "_", "{}", ";", NULL};
    run_quiet(subvolumes);
    nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

int harness_write(const char *path, const char *content) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    size_t n = strlen(content);
    int rc = fwrite(content, 1, n, f) == n ? 0 : -1;
    if (fclose(f) != 0) rc = -1;
    return rc;
}

int harness_read(const char *path, char *buf, size_t len) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = 0;
    fclose(f);
    return 0;
}

int harness_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}
