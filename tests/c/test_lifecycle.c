/* The whole lifecycle through the C API, on every test filesystem (on ZFS in the guest):
 * open, import, setup two sessions, write into one, promote it, check that a new session sees
 * generation 2 while the old one still sees generation 1, info, cleanup, gc; bad names; many
 * threads on one cache; a reopened cache. */
#include <pthread.h>

#include "harness.h"

static struct harness_fs fs[6];

/* Where the cache lives, and where the import source is made. In the guest the cache root is
 * GOLDCLONE_TEST_ROOT itself (it must be the dataset's mount point) and sources go to /tmp. */
struct place {
    char *cache_root;
    char *scratch;
    char project[64];
    int own_root;
};

static void place_init(struct place *pl, const struct harness_fs *f) {
    static int n;
    snprintf(pl->project, sizeof pl->project, "proj-%d-%d", (int)getpid(), ++n);
    if (strcmp(f->name, "root") == 0) {
        pl->cache_root = strdup(f->path);
        pl->scratch = harness_scratch("/tmp", "lifecycle");
        pl->own_root = 0;
    } else {
        pl->scratch = harness_scratch(f->path, "lifecycle");
        pl->cache_root = harness_join(pl->scratch, "cache");
        CHECK(mkdir(pl->cache_root, 0755) == 0);
        pl->own_root = 1;
    }
}

static void place_free(struct place *pl) {
    harness_rm_rf(pl->scratch);
    free(pl->scratch);
    free(pl->cache_root);
}

static char *make_golden(const char *scratch) {
    char *src = harness_join(scratch, "golden-src");
    char *p;
    CHECK(mkdir(src, 0755) == 0);
    p = harness_join(src, "version.txt"); CHECK(harness_write(p, "gen1\n") == 0); free(p);
    p = harness_join(src, "lib"); CHECK(mkdir(p, 0755) == 0); free(p);
    p = harness_join(src, "lib/data"); CHECK(harness_write(p, "data\n") == 0); free(p);
    return src;
}

static int file_is(const char *dir, const char *name, const char *want) {
    char buf[256];
    char *p = harness_join(dir, name);
    int ok = harness_read(p, buf, sizeof buf) == 0 && strcmp(buf, want) == 0;
    free(p);
    return ok;
}

static int has(const char *dir, const char *name) {
    char *p = harness_join(dir, name);
    int r = harness_exists(p);
    free(p);
    return r;
}

static goldclone_backend expected_backend(const char *fs_name) {
    if (strcmp(fs_name, "btrfs") == 0) return GOLDCLONE_BACKEND_BTRFS;
    /* XFS reflinks: sessions are reflinked images on loop devices; on ext4 images are
       copied sparsely (still ahead of the tree copy at a golden's size). */
    if (strcmp(fs_name, "xfs") == 0 || strcmp(fs_name, "ext4") == 0) return GOLDCLONE_BACKEND_IMAGE;
    if (strcmp(fs_name, "root") == 0) return GOLDCLONE_BACKEND_ZFS;
    return GOLDCLONE_BACKEND_COPY;
}

static int info_session(const goldclone_info *info, const char *id, uint64_t *gen) {
    size_t n = 0;
    if (goldclone_info_get(info, NULL, NULL, NULL, NULL, &n) != GOLDCLONE_RESULT_OK) return 0;
    for (size_t i = 0; i < n; i++) {
        char buf[128];
        size_t len;
        uint64_t g;
        if (goldclone_info_session(info, i, buf, sizeof buf, &len, &g) == GOLDCLONE_RESULT_OK &&
            strcmp(buf, id) == 0) {
            if (gen) *gen = g;
            return 1;
        }
    }
    return 0;
}

static void lifecycle_on(const struct harness_fs *f) {
    struct place pl;
    place_init(&pl, f);
    const char *P = pl.project;
    char *golden = make_golden(pl.scratch);
    goldclone_cache *cache = NULL;
    goldclone_backend backend = 99;
    uint64_t gen = 0;
    char s1[GOLDCLONE_PATH_BUF_SIZE], s2[GOLDCLONE_PATH_BUF_SIZE], s3[GOLDCLONE_PATH_BUF_SIZE];
    size_t len = 0;

    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    if (!cache) goto out;
    CHECK_OK(goldclone_cache_backend(cache, &backend));
    CHECK(backend == expected_backend(f->name) ||
          (strcmp(f->name, "root") == 0 && backend == GOLDCLONE_BACKEND_ZVOL));
    {
        char root[GOLDCLONE_PATH_BUF_SIZE], real[GOLDCLONE_PATH_BUF_SIZE];
        CHECK_OK(goldclone_cache_root(cache, root, sizeof root, &len));
        CHECK(realpath(pl.cache_root, real) && strcmp(root, real) == 0);
    }

    CHECK_OK(goldclone_cache_import(cache, P, golden, &gen));
    CHECK(gen == 1);
    CHECK_RC(goldclone_cache_import(cache, P, golden, &gen), GOLDCLONE_RESULT_ALREADY_EXISTS);

    CHECK_OK(goldclone_cache_setup(cache, P, "s1", s1, sizeof s1, &len));
    CHECK(len == strlen(s1));
    CHECK_OK(goldclone_cache_setup(cache, P, "s2", s2, sizeof s2, NULL));
    CHECK(strcmp(s1, s2) != 0);
    CHECK(file_is(s1, "version.txt", "gen1\n") && file_is(s2, "lib/data", "data\n"));
    CHECK_RC(goldclone_cache_setup(cache, P, "s1", s3, sizeof s3, &len), GOLDCLONE_RESULT_ALREADY_EXISTS);

    /* work in s1, promote it */
    {
        char *p = harness_join(s1, "version.txt");
        CHECK(harness_write(p, "gen2\n") == 0);
        free(p);
        p = harness_join(s1, "added-in-s1");
        CHECK(harness_write(p, "new\n") == 0);
        free(p);
    }
    gen = 0;
    CHECK_OK(goldclone_cache_promote(cache, P, "s1", &gen));
    CHECK(gen == 2);

    /* a new session sees generation 2; the old one still sees generation 1 */
    CHECK_OK(goldclone_cache_setup(cache, P, "s3", s3, sizeof s3, &len));
    CHECK(file_is(s3, "version.txt", "gen2\n") && file_is(s3, "added-in-s1", "new\n"));
    CHECK(file_is(s2, "version.txt", "gen1\n") && !has(s2, "added-in-s1"));
    CHECK(file_is(s1, "version.txt", "gen2\n")); /* the promoted session keeps running */

    /* info */
    {
        goldclone_info *info = NULL;
        uint64_t g = 0, created = 0, size = 0, sg = 0;
        goldclone_backend b = 99;
        size_t count = 0;
        char src[128];
        CHECK_OK(goldclone_cache_info(cache, P, &info));
        CHECK_OK(goldclone_info_get(info, &g, &created, &size, &b, &count));
        CHECK(g == 2 && created > 1600000000u && b == backend && count == 3);
        CHECK_OK(goldclone_info_source_session(info, src, sizeof src, &len));
        CHECK(strcmp(src, "s1") == 0 && len == 2);
        CHECK(info_session(info, "s2", &sg) && sg == 1);
        CHECK(info_session(info, "s3", &sg) && sg == 2);
        CHECK(info_session(info, "s1", &sg) && sg == 1);
        CHECK_RC(goldclone_info_session(info, count, src, sizeof src, &len, &sg), GOLDCLONE_RESULT_INVALID_ARGUMENT);
        CHECK_OK(goldclone_info_free(info));
        CHECK_RC(goldclone_cache_info(cache, "no-such-project", &info), GOLDCLONE_RESULT_NOT_FOUND);
    }

    /* setup with a buffer too small: nothing is left behind, and the needed length is given */
    {
        char tiny[4];
        size_t need = 0;
        CHECK_RC(goldclone_cache_setup(cache, P, "s4", tiny, sizeof tiny, &need), GOLDCLONE_RESULT_BUFFER_TOO_SMALL);
        CHECK(need > sizeof tiny);
        char s4[GOLDCLONE_PATH_BUF_SIZE];
        CHECK_OK(goldclone_cache_setup(cache, P, "s4", s4, sizeof s4, &len));
        CHECK(len == need);
        CHECK_OK(goldclone_cache_cleanup(cache, P, "s4"));
    }

    /* cleanup, gc */
    CHECK_OK(goldclone_cache_cleanup(cache, P, "s2"));
    CHECK(!harness_exists(s2));
    CHECK_RC(goldclone_cache_cleanup(cache, P, "s2"), GOLDCLONE_RESULT_NOT_FOUND);
    CHECK_OK(goldclone_cache_cleanup(cache, P, "s1"));
    CHECK_OK(goldclone_cache_cleanup(cache, P, "s3"));
    {
        goldclone_gc_report *report = NULL;
        size_t n = 99;
        char item[512];
        CHECK_OK(goldclone_cache_gc(cache, &report));
        CHECK_OK(goldclone_gc_report_count(report, &n));
        for (size_t i = 0; i < n; i++) {
            CHECK_OK(goldclone_gc_report_item(report, i, item, sizeof item, &len));
            fprintf(stderr, "  gc removed: %s\n", item);
        }
        CHECK_RC(goldclone_gc_report_item(report, n, item, sizeof item, &len), GOLDCLONE_RESULT_INVALID_ARGUMENT);
        CHECK_OK(goldclone_gc_report_free(report));
        CHECK_OK(goldclone_cache_gc(cache, NULL));
    }
    {
        goldclone_info *info = NULL;
        uint64_t g = 0;
        size_t count = 99;
        CHECK_OK(goldclone_cache_info(cache, P, &info));
        CHECK_OK(goldclone_info_get(info, &g, NULL, NULL, NULL, &count));
        CHECK(g == 2 && count == 0);
        CHECK_OK(goldclone_info_free(info));
    }
    CHECK_OK(goldclone_cache_free(cache));
    cache = NULL;

    /* the state survives reopening */
    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    {
        goldclone_info *info = NULL;
        uint64_t g = 0;
        CHECK_OK(goldclone_cache_info(cache, P, &info));
        CHECK_OK(goldclone_info_get(info, &g, NULL, NULL, NULL, NULL));
        CHECK(g == 2);
        CHECK_OK(goldclone_info_free(info));
    }
out:
    CHECK_OK(goldclone_cache_free(cache));
    free(golden);
    place_free(&pl);
}

static void on_every_fs(void (*test_on)(const struct harness_fs *)) {
    for (int i = 0; fs[i].name; i++) {
        fprintf(stderr, "  on %s\n", fs[i].name);
        test_on(&fs[i]);
    }
}

static void test_lifecycle(void) { on_every_fs(lifecycle_on); }

/* Progress and cancellation of import, setup and promote (the *_with calls). */
struct calls {
    int n;
    int stop_at; /* return nonzero on this call (1 = the first); 0 = never */
    goldclone_progress last;
};

static int32_t count_calls(void *user_data, const goldclone_progress *p) {
    struct calls *c = user_data;
    c->n++;
    c->last = *p;
    return c->stop_at != 0 && c->n >= c->stop_at;
}

static void watched_on(const struct harness_fs *f) {
    struct place pl;
    place_init(&pl, f);
    const char *P = pl.project;
    char *golden = make_golden(pl.scratch);
    goldclone_cache *cache = NULL;
    goldclone_cancel *cancel = NULL;
    goldclone_op_options o;
    struct calls c = {0};
    uint64_t gen = 0;
    char s1[GOLDCLONE_PATH_BUF_SIZE];
    size_t len = 0;
    goldclone_info *info = NULL;
    size_t sessions = 99;

    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    if (!cache) goto out;
    CHECK_OK(goldclone_op_options_init(&o));
    CHECK(o.progress == NULL && o.cancel == NULL && o.progress_interval_ms == 0);

    /* a cancelled handle stops the import: no project */
    CHECK_OK(goldclone_cancel_new(&cancel));
    CHECK_OK(goldclone_cancel_cancel(cancel));
    o.cancel = cancel;
    CHECK_RC(goldclone_cache_import_with(cache, P, golden, &o, &gen), GOLDCLONE_RESULT_CANCELLED);
    CHECK_RC(goldclone_cache_info(cache, P, &info), GOLDCLONE_RESULT_NOT_FOUND);

    /* with a callback: called before, while and after (finished, totals known) */
    o.cancel = NULL;
    o.progress = count_calls;
    o.progress_user_data = &c;
    CHECK_OK(goldclone_cache_import_with(cache, P, golden, &o, &gen));
    CHECK(gen == 1);
    CHECK(c.n >= 2 && c.last.finished && c.last.totals_known && c.last.entries >= 3 &&
          c.last.entries == c.last.total_entries && c.last.bytes == c.last.total_bytes);

    /* the callback's stop at its first call stops the setup: no session */
    memset(&c, 0, sizeof c);
    c.stop_at = 1;
    CHECK_RC(goldclone_cache_setup_with(cache, P, "s1", &o, s1, sizeof s1, &len), GOLDCLONE_RESULT_CANCELLED);
    CHECK(c.n == 1); /* not called again once stopped */
    CHECK_OK(goldclone_cache_info(cache, P, &info));
    CHECK_OK(goldclone_info_get(info, NULL, NULL, NULL, NULL, &sessions));
    CHECK(sessions == 0);
    goldclone_info_free(info);
    info = NULL;
    /* NULL options are the defaults */
    CHECK_OK(goldclone_cache_setup_with(cache, P, "s1", NULL, s1, sizeof s1, &len));
    CHECK(file_is(s1, "version.txt", "gen1\n"));

    /* a callback's stop ends its own call only: the caller's handle stays as it was */
    {
        goldclone_cancel *shared = NULL;
        bool cancelled = true;
        char s2[GOLDCLONE_PATH_BUF_SIZE];
        CHECK_OK(goldclone_cancel_new(&shared));
        o.cancel = shared;
        o.progress = count_calls;
        memset(&c, 0, sizeof c);
        c.stop_at = 1;
        CHECK_RC(goldclone_cache_setup_with(cache, P, "s2", &o, s2, sizeof s2, NULL), GOLDCLONE_RESULT_CANCELLED);
        CHECK_OK(goldclone_cancel_is_cancelled(shared, &cancelled));
        CHECK(!cancelled);
        c.stop_at = 0;
        CHECK_OK(goldclone_cache_setup_with(cache, P, "s2", &o, s2, sizeof s2, NULL));
        CHECK(c.last.finished);
        CHECK_OK(goldclone_cache_cleanup(cache, P, "s2"));
        goldclone_cancel_free(shared);
    }

    /* a stopped promote changes nothing; the handle shared by two calls stops both */
    {
        char *p = harness_join(s1, "version.txt");
        CHECK(harness_write(p, "gen2\n") == 0);
        free(p);
    }
    o.progress = NULL;
    o.cancel = cancel;
    CHECK_RC(goldclone_cache_promote_with(cache, P, "s1", &o, &gen), GOLDCLONE_RESULT_CANCELLED);
    CHECK_RC(goldclone_cache_promote_with(cache, P, "s1", &o, &gen), GOLDCLONE_RESULT_CANCELLED);
    CHECK_OK(goldclone_cache_info(cache, P, &info));
    gen = 0;
    CHECK_OK(goldclone_info_get(info, &gen, NULL, NULL, NULL, NULL));
    CHECK(gen == 1);
    goldclone_info_free(info);
    o.cancel = NULL;
    CHECK_OK(goldclone_cache_promote_with(cache, P, "s1", &o, &gen));
    CHECK(gen == 2);
    CHECK_OK(goldclone_cache_cleanup(cache, P, "s1"));

out:
    goldclone_cancel_free(cancel);
    goldclone_cache_free(cache);
    free(golden);
    place_free(&pl);
}

static void test_progress_and_cancel(void) { on_every_fs(watched_on); }

/* A promote with drops, an edit callback and consume: the callback runs on the calling thread
 * (also while a progress callback makes the work run on another), after the drops; its failure
 * commits nothing and gives the session back whole. */
struct edit_calls {
    int n;
    int32_t rc;
    uint64_t generation;
    int saw_dropped;
    pthread_t caller;
    int on_caller;
};

static int32_t edit_tree(void *user_data, const char *tree, uint64_t generation) {
    struct edit_calls *e = user_data;
    char *p = harness_join(tree, "containers");
    e->n++;
    e->generation = generation;
    e->saw_dropped = harness_exists(p);
    e->on_caller = pthread_equal(pthread_self(), e->caller);
    free(p);
    p = harness_join(tree, "edited");
    if (harness_write(p, "yes\n") != 0) e->rc = 99;
    free(p);
    return e->rc;
}

static void promote_edit_on(const struct harness_fs *f) {
    struct place pl;
    place_init(&pl, f);
    const char *P = pl.project;
    char *golden = make_golden(pl.scratch);
    goldclone_cache *cache = NULL;
    goldclone_backend backend = 0;
    goldclone_promote_options po;
    goldclone_op_options o;
    struct calls c = {0};
    struct edit_calls e = {0};
    const char *drops[] = {"containers", "lib/gone", "not/there"};
    const char *bad[] = {"../outside"};
    uint64_t gen = 0;
    char s1[GOLDCLONE_PATH_BUF_SIZE], s2[GOLDCLONE_PATH_BUF_SIZE];
    goldclone_info *info = NULL;

    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    if (!cache) goto out;
    CHECK_OK(goldclone_cache_backend(cache, &backend));
    CHECK_OK(goldclone_cache_import(cache, P, golden, NULL));
    CHECK_OK(goldclone_cache_setup(cache, P, "s1", s1, sizeof s1, NULL));
    {
        char *p = harness_join(s1, "containers");
        CHECK(mkdir(p, 0755) == 0);
        free(p);
        p = harness_join(s1, "containers/c1");
        CHECK(harness_write(p, "container\n") == 0);
        free(p);
        p = harness_join(s1, "lib/gone");
        CHECK(harness_write(p, "gone\n") == 0);
        free(p);
        p = harness_join(s1, "version.txt");
        CHECK(harness_write(p, "gen2\n") == 0);
        free(p);
    }
    CHECK_OK(goldclone_promote_options_init(&po));
    CHECK_OK(goldclone_op_options_init(&o));

    /* bad input changes nothing */
    po.drop = bad;
    po.drop_len = 1;
    CHECK_RC(goldclone_cache_promote_with_options(cache, P, "s1", &po, NULL, &gen), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    po.drop = NULL;
    CHECK_RC(goldclone_cache_promote_with_options(cache, P, "s1", &po, NULL, &gen), GOLDCLONE_RESULT_NULL_PARAMETER);
    po.drop = drops;
    po.drop_len = 3;
    if (backend == GOLDCLONE_BACKEND_ZFS || backend == GOLDCLONE_BACKEND_ZVOL) {
        CHECK_RC(goldclone_cache_promote_with_options(cache, P, "s1", &po, NULL, &gen), GOLDCLONE_RESULT_UNSUPPORTED);
    }

    /* a failing callback, with progress reports (the work on another thread) */
    po.consume = true;
    po.edit = edit_tree;
    po.edit_user_data = &e;
    e.rc = 7;
    e.caller = pthread_self();
    o.progress = count_calls;
    o.progress_user_data = &c;
    o.progress_interval_ms = 1;
    CHECK_RC(goldclone_cache_promote_with_options(cache, P, "s1", &po, &o, &gen), GOLDCLONE_RESULT_EDIT_FAILED);
    CHECK(strstr(harness_last_error(), "returned 7") != NULL);
    CHECK(e.n == 1 && e.generation == 2 && !e.saw_dropped && e.on_caller);
    CHECK_OK(goldclone_cache_info(cache, P, &info));
    CHECK_OK(goldclone_info_get(info, &gen, NULL, NULL, NULL, NULL));
    CHECK(gen == 1);
    CHECK(info_session(info, "s1", NULL));
    goldclone_info_free(info);
    info = NULL;
    CHECK(file_is(s1, "containers/c1", "container\n"));
    CHECK(file_is(s1, "lib/gone", "gone\n"));
    CHECK(file_is(s1, "version.txt", "gen2\n"));

    /* now it goes through: the session is consumed */
    e.rc = 0;
    e.n = 0;
    CHECK_OK(goldclone_cache_promote_with_options(cache, P, "s1", &po, &o, &gen));
    CHECK(gen == 2 && e.n == 1 && e.on_caller);
    CHECK(c.last.finished);
    CHECK_RC(goldclone_cache_session_info(cache, P, "s1", NULL, NULL, NULL, NULL, 0, NULL), GOLDCLONE_RESULT_NOT_FOUND);
    CHECK(!harness_exists(s1));
    CHECK_OK(goldclone_cache_setup(cache, P, "s2", s2, sizeof s2, NULL));
    CHECK(file_is(s2, "version.txt", "gen2\n"));
    CHECK(file_is(s2, "edited", "yes\n"));
    CHECK(file_is(s2, "lib/data", "data\n"));
    CHECK(!has(s2, "containers") && !has(s2, "lib/gone"));
    CHECK_OK(goldclone_cache_cleanup(cache, P, "s2"));

out:
    goldclone_cache_free(cache);
    free(golden);
    place_free(&pl);
}

static void test_promote_with_edits(void) { on_every_fs(promote_edit_on); }

/* Deleting a project: BUSY while this very process has its working directory in a session
 * (nothing changed), then everything of it goes and the name can be imported again. */
static void delete_on(const struct harness_fs *f) {
    struct place pl;
    place_init(&pl, f);
    const char *P = pl.project;
    char *golden = make_golden(pl.scratch);
    goldclone_cache *cache = NULL;
    char s1[GOLDCLONE_PATH_BUF_SIZE], cwd[GOLDCLONE_PATH_BUF_SIZE];
    bool golden_there = true;

    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    if (!cache) goto out;
    CHECK_OK(goldclone_cache_import(cache, P, golden, NULL));
    CHECK_OK(goldclone_cache_setup(cache, P, "s1", s1, sizeof s1, NULL));
    {
        char again[GOLDCLONE_PATH_BUF_SIZE];
        bool reused = false;
        CHECK_OK(goldclone_cache_setup_or_reuse(cache, P, "s1", NULL, again, sizeof again, NULL, &reused));
        CHECK(reused && strcmp(again, s1) == 0);
        CHECK_OK(goldclone_cache_setup_or_reuse(cache, P, "s9", NULL, again, sizeof again, NULL, &reused));
        CHECK(!reused && has(again, "version.txt"));
        /* a path that does not fit: the session stays, and a second call hands it out */
        CHECK_RC(goldclone_cache_setup_or_reuse(cache, P, "s8", NULL, again, 4, NULL, &reused), GOLDCLONE_RESULT_BUFFER_TOO_SMALL);
        CHECK_OK(goldclone_cache_setup_or_reuse(cache, P, "s8", NULL, again, sizeof again, NULL, &reused));
        CHECK(reused);
    }
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    CHECK(chdir(s1) == 0);
    CHECK_RC(goldclone_cache_delete_project(cache, P), GOLDCLONE_RESULT_BUSY);
    CHECK(chdir(cwd) == 0);
    CHECK(file_is(s1, "version.txt", "gen1\n"));
    CHECK_OK(goldclone_cache_has_golden(cache, P, &golden_there));
    CHECK(golden_there);
    CHECK_RC(goldclone_cache_delete_project(cache, NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_delete_project(cache, "../x"), GOLDCLONE_RESULT_INVALID_NAME);
    CHECK_OK(goldclone_cache_delete_project(cache, P));
    CHECK(!harness_exists(s1));
    CHECK_OK(goldclone_cache_has_golden(cache, P, &golden_there));
    CHECK(!golden_there);
    CHECK_RC(goldclone_cache_session_info(cache, P, "s1", NULL, NULL, NULL, NULL, 0, NULL), GOLDCLONE_RESULT_NOT_FOUND);
    CHECK_RC(goldclone_cache_delete_project(cache, P), GOLDCLONE_RESULT_NOT_FOUND);
    CHECK_OK(goldclone_cache_import(cache, P, golden, NULL));
    CHECK_OK(goldclone_cache_delete_project(cache, P));

out:
    goldclone_cache_free(cache);
    free(golden);
    place_free(&pl);
}

static void test_delete_project(void) { on_every_fs(delete_on); }

/* A directory imported as the next generation: NOT_FOUND for a project that does not exist,
 * CANCELLED with nothing changed when stopped, then the old session keeps its tree and a new
 * session sees exactly the new one. */
static void import_next_on(const struct harness_fs *f) {
    struct place pl;
    place_init(&pl, f);
    const char *P = pl.project;
    char *golden = make_golden(pl.scratch);
    char *next = harness_join(pl.scratch, "next-src");
    char *p;
    goldclone_cache *cache = NULL;
    goldclone_cancel *cancel = NULL;
    goldclone_op_options o;
    uint64_t gen = 0;
    char s1[GOLDCLONE_PATH_BUF_SIZE], s2[GOLDCLONE_PATH_BUF_SIZE];

    CHECK(mkdir(next, 0755) == 0);
    p = harness_join(next, "version.txt"); CHECK(harness_write(p, "gen2\n") == 0); free(p);
    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    if (!cache) goto out;
    CHECK_RC(goldclone_cache_import_next(cache, P, next, NULL, &gen), GOLDCLONE_RESULT_NOT_FOUND);
    CHECK_OK(goldclone_cache_import(cache, P, golden, NULL));
    CHECK_OK(goldclone_cache_setup(cache, P, "s1", s1, sizeof s1, NULL));
    CHECK_RC(goldclone_cache_import_next(cache, NULL, next, NULL, &gen), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_import_next(cache, "../x", next, NULL, &gen), GOLDCLONE_RESULT_INVALID_NAME);
    p = harness_join(pl.scratch, "missing");
    CHECK_RC(goldclone_cache_import_next(cache, P, p, NULL, &gen), GOLDCLONE_RESULT_NOT_FOUND);
    free(p);
    CHECK_OK(goldclone_cancel_new(&cancel));
    CHECK_OK(goldclone_cancel_cancel(cancel));
    goldclone_op_options_init(&o);
    o.cancel = cancel;
    CHECK_RC(goldclone_cache_import_next(cache, P, next, &o, &gen), GOLDCLONE_RESULT_CANCELLED);
    CHECK_OK(goldclone_cache_import_next(cache, P, next, NULL, &gen));
    CHECK(gen == 2);
    CHECK(file_is(s1, "version.txt", "gen1\n") && has(s1, "lib/data"));
    CHECK_OK(goldclone_cache_setup(cache, P, "s2", s2, sizeof s2, NULL));
    CHECK(file_is(s2, "version.txt", "gen2\n") && !has(s2, "lib"));
    CHECK_OK(goldclone_cache_delete_project(cache, P));

out:
    goldclone_cancel_free(cancel);
    goldclone_cache_free(cache);
    free(next);
    free(golden);
    place_free(&pl);
}

static void test_import_next(void) { on_every_fs(import_next_on); }

static int32_t stop_after_two(void *user_data, const goldclone_progress *p) {
    (void)p;
    return ++*(int *)user_data >= 2;
}

/* Send and receive on file descriptors: a generation sent to a file comes back as the next
 * generation, whole; a truncated stream is BAD_STREAM and changes nothing; a stream of another
 * project, a closed descriptor and a reader that went away (EPIPE, not a SIGPIPE death: this
 * program does not ignore SIGPIPE) are typed errors. */
static void send_receive_on(const struct harness_fs *f) {
    struct place pl;
    place_init(&pl, f);
    const char *P = pl.project;
    char *golden = make_golden(pl.scratch);
    char *next = harness_join(pl.scratch, "next-src");
    char *stream = harness_join(pl.scratch, "stream");
    char *p;
    goldclone_cache *cache = NULL;
    goldclone_sent sent = {0};
    uint64_t gen = 0;
    int fd = -1, pipefd[2] = {-1, -1};
    char s[GOLDCLONE_PATH_BUF_SIZE];
    struct stat st;
    goldclone_backend backend = 0;
    bool sends_older;
    char *inc_path = NULL;
    int ifd = -1;
    goldclone_sent isent = {0};

    CHECK(mkdir(next, 0755) == 0);
    p = harness_join(next, "version.txt"); CHECK(harness_write(p, "gen2\n") == 0); free(p);
    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    if (!cache) goto out;
    CHECK_OK(goldclone_cache_import(cache, P, golden, NULL));
    CHECK_OK(goldclone_cache_backend(cache, &backend));
    /* ZFS and zvol send through a session of the current generation: only it can be sent. */
    sends_older = backend != GOLDCLONE_BACKEND_ZFS && backend != GOLDCLONE_BACKEND_ZVOL;
    fd = open(stream, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK_OK(goldclone_cache_send(cache, P, 1, 0, fd, NULL, &sent));
    CHECK(sent.generation == 1 && sent.entries == 4 && sent.bytes == 10);
    CHECK(fstat(fd, &st) == 0 && (uint64_t)st.st_size == sent.stream_bytes);
    /* A session keeps generation 1 after the next import. */
    CHECK_OK(goldclone_cache_setup(cache, P, "old", s, sizeof s, NULL));
    CHECK_OK(goldclone_cache_import_next(cache, P, next, NULL, &gen));
    CHECK(gen == 2);
    /* Generation 2 as an increment from 1, whose manifest its send kept. */
    inc_path = harness_join(pl.scratch, "stream-inc");
    ifd = open(inc_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(ifd >= 0);
    CHECK_RC(goldclone_cache_send(cache, P, 0, 2, ifd, NULL, &isent), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    CHECK_OK(goldclone_cache_send(cache, P, 0, 1, ifd, NULL, &isent));
    CHECK(isent.generation == 2 && isent.stream_bytes < sent.stream_bytes);
    CHECK_RC(goldclone_cache_send(cache, P, 7, 0, fd, NULL, &sent), GOLDCLONE_RESULT_NOT_FOUND);
    CHECK_RC(goldclone_cache_send(cache, P, 0, 0, -1, NULL, &sent), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    CHECK_RC(goldclone_cache_send(cache, "../x", 0, 0, fd, NULL, &sent), GOLDCLONE_RESULT_INVALID_NAME);
    if (sends_older) {
        /* The older generation, sent again: the same bytes. */
        char *again = harness_join(pl.scratch, "stream-again");
        int afd = open(again, O_RDWR | O_CREAT | O_TRUNC, 0600);
        goldclone_sent older = {0};
        struct stat ast;
        CHECK(afd >= 0);
        CHECK_OK(goldclone_cache_send(cache, P, 1, 0, afd, NULL, &older));
        CHECK(older.generation == 1 && older.stream_bytes == sent.stream_bytes);
        CHECK(fstat(afd, &ast) == 0 && ast.st_size == st.st_size);
        if (afd >= 0) close(afd);
        free(again);
    } else {
        CHECK_RC(goldclone_cache_send(cache, P, 1, 0, -1, NULL, &sent), GOLDCLONE_RESULT_INVALID_ARGUMENT);
        struct stat now;
        CHECK_RC(goldclone_cache_send(cache, P, 1, 0, fd, NULL, &sent), GOLDCLONE_RESULT_UNSUPPORTED);
        CHECK(fstat(fd, &now) == 0 && now.st_size == st.st_size);
    }
    /* Cut one byte short: BAD_STREAM, nothing changes. */
    {
        char *cut = harness_join(pl.scratch, "stream-cut");
        int cfd = open(cut, O_RDWR | O_CREAT | O_TRUNC, 0600);
        char *buf = malloc((size_t)st.st_size);
        CHECK(cfd >= 0 && buf != NULL);
        if (cfd >= 0 && buf != NULL) {
            CHECK(pread(fd, buf, (size_t)st.st_size, 0) == st.st_size);
            CHECK(write(cfd, buf, (size_t)st.st_size - 1) == st.st_size - 1);
            CHECK(lseek(cfd, 0, SEEK_SET) == 0);
            CHECK_RC(goldclone_cache_receive(cache, P, cfd, NULL, &gen), GOLDCLONE_RESULT_BAD_STREAM);
            CHECK(gen == 2);
        }
        if (cfd >= 0) close(cfd);
        free(buf);
        free(cut);
    }
    /* Another project's name for it. */
    CHECK(lseek(fd, 0, SEEK_SET) == 0);
    CHECK_RC(goldclone_cache_receive(cache, "someone-else", fd, NULL, &gen), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    /* Whole: generation 3, with generation 1's tree. */
    CHECK(lseek(fd, 0, SEEK_SET) == 0);
    CHECK_OK(goldclone_cache_receive(cache, P, fd, NULL, &gen));
    CHECK(gen == 3);
    CHECK_OK(goldclone_cache_cleanup(cache, P, "old"));
    CHECK_OK(goldclone_cache_setup(cache, P, "s", s, sizeof s, NULL));
    CHECK(file_is(s, "version.txt", "gen1\n") && has(s, "lib/data"));
    CHECK_OK(goldclone_cache_cleanup(cache, P, "s"));
    /* The increment goes onto generation 3 (generation 1 received, so its base): generation
     * 4, with generation 2's tree; once more it changes nothing. */
    CHECK(lseek(ifd, 0, SEEK_SET) == 0);
    CHECK_OK(goldclone_cache_receive(cache, P, ifd, NULL, &gen));
    CHECK(gen == 4);
    CHECK(lseek(ifd, 0, SEEK_SET) == 0);
    CHECK_OK(goldclone_cache_receive(cache, P, ifd, NULL, &gen));
    CHECK(gen == 4);
    CHECK_OK(goldclone_cache_setup(cache, P, "s", s, sizeof s, NULL));
    CHECK(file_is(s, "version.txt", "gen2\n") && !has(s, "lib/data"));
    CHECK_OK(goldclone_cache_cleanup(cache, P, "s"));
    /* A peer that stalls halfway (the pipe's write end stays open, nothing more comes): the
     * progress callback's stop ends the blocked read, CANCELLED, nothing committed. */
    {
        char buf[256];
        int calls = 0;
        goldclone_op_options o;
        CHECK(pipe(pipefd) == 0);
        CHECK(lseek(fd, 0, SEEK_SET) == 0);
        CHECK(read(fd, buf, sizeof buf) == (ssize_t)sizeof buf);
        CHECK(write(pipefd[1], buf, sizeof buf) == (ssize_t)sizeof buf);
        goldclone_op_options_init(&o);
        o.progress = stop_after_two;
        o.progress_user_data = &calls;
        o.progress_interval_ms = 20;
        CHECK_RC(goldclone_cache_receive(cache, P, pipefd[0], &o, &gen), GOLDCLONE_RESULT_CANCELLED);
        CHECK(calls >= 2);
        close(pipefd[0]);
        close(pipefd[1]);
    }
    /* A reader that went away. */
    CHECK(pipe(pipefd) == 0);
    close(pipefd[0]);
    CHECK_RC(goldclone_cache_send(cache, P, 0, 0, pipefd[1], NULL, &sent), GOLDCLONE_RESULT_IO);
    CHECK(goldclone_last_error_errno() == EPIPE);
    close(pipefd[1]);
    CHECK_RC(goldclone_cache_receive(cache, P, 1000, NULL, &gen), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    CHECK_OK(goldclone_cache_delete_project(cache, P));

out:
    if (fd >= 0) close(fd);
    if (ifd >= 0) close(ifd);
    free(inc_path);
    goldclone_cache_free(cache);
    free(stream);
    free(next);
    free(golden);
    place_free(&pl);
}

static void test_send_receive(void) { on_every_fs(send_receive_on); }

/* A session at a path of the caller's choosing: shown there (the same tree), reused at the
 * same path, refused where the path is bad (nothing made), removed again when the path buffer
 * is too small, and taken away with its directory by cleanup. */
static void setup_at_on(const struct harness_fs *f) {
    struct place pl;
    place_init(&pl, f);
    const char *P = pl.project;
    char *golden = make_golden(pl.scratch);
    char *at = harness_join(pl.scratch, "shown-s1");
    char *inside = harness_join(pl.cache_root, "s2");
    char *small_at = harness_join(pl.scratch, "shown-s3");
    goldclone_cache *cache = NULL;
    goldclone_setup_options so;
    char got[GOLDCLONE_PATH_BUF_SIZE];
    bool reused = true, shown = false;

    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    if (!cache) goto out;
    CHECK_OK(goldclone_cache_import(cache, P, golden, NULL));
    CHECK_RC(goldclone_setup_options_init(NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_OK(goldclone_setup_options_init(&so));
    CHECK(so.at == NULL && !so.reuse);
    so.at = at;
    CHECK_OK(goldclone_cache_setup_with_options(cache, P, "s1", &so, NULL, got, sizeof got, NULL, &reused));
    CHECK(!reused && strcmp(got, at) == 0);
    CHECK(file_is(at, "version.txt", "gen1\n"));
    CHECK_OK(goldclone_cache_session_info(cache, P, "s1", NULL, NULL, NULL, got, sizeof got, NULL));
    CHECK(strcmp(got, at) == 0);
    CHECK_OK(goldclone_cache_session_shown(cache, P, "s1", &shown));
    CHECK(shown);
    CHECK_RC(goldclone_cache_setup_with_options(cache, P, "s1", &so, NULL, got, sizeof got, NULL, NULL), GOLDCLONE_RESULT_ALREADY_EXISTS);
    so.reuse = true;
    CHECK_OK(goldclone_cache_setup_with_options(cache, P, "s1", &so, NULL, got, sizeof got, NULL, &reused));
    CHECK(reused && strcmp(got, at) == 0);
    so.reuse = false;

    /* bad paths: a typed error and no session */
    so.at = "relative/s2";
    CHECK_RC(goldclone_cache_setup_with_options(cache, P, "s2", &so, NULL, got, sizeof got, NULL, NULL), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    so.at = inside;
    CHECK_RC(goldclone_cache_setup_with_options(cache, P, "s2", &so, NULL, got, sizeof got, NULL, NULL), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    CHECK(!harness_exists(inside));
    CHECK_RC(goldclone_cache_session_info(cache, P, "s2", NULL, NULL, NULL, NULL, 0, NULL), GOLDCLONE_RESULT_NOT_FOUND);
    /* NULL options: the session at its place */
    CHECK_OK(goldclone_cache_setup_with_options(cache, P, "s2", NULL, NULL, got, sizeof got, NULL, NULL));
    CHECK(strstr(got, "/sessions/s2") != NULL);
    /* a buffer too small: the session made is removed again, and its path with it */
    so.at = small_at;
    CHECK_RC(goldclone_cache_setup_with_options(cache, P, "s3", &so, NULL, got, 4, NULL, NULL), GOLDCLONE_RESULT_BUFFER_TOO_SMALL);
    CHECK(!harness_exists(small_at));
    CHECK_RC(goldclone_cache_session_info(cache, P, "s3", NULL, NULL, NULL, NULL, 0, NULL), GOLDCLONE_RESULT_NOT_FOUND);

    CHECK_OK(goldclone_cache_cleanup(cache, P, "s1"));
    CHECK(!harness_exists(at));

    /* a lazy cleanup of a session this process is in: detached at once, removed by gc once
     * the process has left it */
    {
        goldclone_cleanup_options co;
        goldclone_gc_report *r = NULL;
        char cwd[GOLDCLONE_PATH_BUF_SIZE], s2[GOLDCLONE_PATH_BUF_SIZE];
        bool detached = false;
        CHECK_OK(goldclone_cache_session_info(cache, P, "s2", NULL, NULL, NULL, s2, sizeof s2, NULL));
        CHECK_RC(goldclone_cleanup_options_init(NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
        CHECK_OK(goldclone_cleanup_options_init(&co));
        CHECK(!co.lazy);
        CHECK(getcwd(cwd, sizeof cwd) != NULL);
        CHECK(chdir(s2) == 0);
        CHECK_RC(goldclone_cache_cleanup_with_options(cache, P, "s2", &co, &detached), GOLDCLONE_RESULT_BUSY);
        co.lazy = true;
        CHECK_OK(goldclone_cache_cleanup_with_options(cache, P, "s2", &co, &detached));
        CHECK(detached);
        CHECK(file_is(".", "version.txt", "gen1\n"));
        CHECK_RC(goldclone_cache_session_info(cache, P, "s2", NULL, NULL, NULL, NULL, 0, NULL), GOLDCLONE_RESULT_NOT_FOUND);
        size_t n = 0;
        CHECK_OK(goldclone_cache_gc(cache, &r));
        CHECK_OK(goldclone_gc_report_list_count(r, GOLDCLONE_GC_LIST_KEPT, &n));
        CHECK(n >= 1);
        goldclone_gc_report_free(r);
        r = NULL;
        CHECK(file_is(".", "version.txt", "gen1\n"));
        CHECK(chdir(cwd) == 0);
        CHECK_OK(goldclone_cache_gc(cache, &r));
        CHECK_OK(goldclone_gc_report_list_count(r, GOLDCLONE_GC_LIST_KEPT, &n));
        CHECK(n == 0);
        CHECK_OK(goldclone_gc_report_list_count(r, GOLDCLONE_GC_LIST_REMOVED, &n));
        CHECK(n >= 1);
        goldclone_gc_report_free(r);
    }

out:
    goldclone_cache_free(cache);
    free(golden);
    free(at);
    free(inside);
    free(small_at);
    place_free(&pl);
}

static void test_setup_at(void) { on_every_fs(setup_at_on); }

/* The log callback: what open decided (backend and why) and what gc left alone reach it, with
 * levels and targets; nothing after it is cleared; a bad level is refused. */
struct log_lines {
    pthread_mutex_t mu;
    int n, backend_info, gc_warn;
    char first[512];
};

static void collect_log(void *user_data, goldclone_log_level level, const char *target, const char *message) {
    struct log_lines *l = user_data;
    pthread_mutex_lock(&l->mu);
    if (l->n++ == 0) snprintf(l->first, sizeof l->first, "%s: %s", target, message);
    if (level == GOLDCLONE_LOG_LEVEL_INFO && strcmp(target, "goldclone::backend") == 0 &&
        strstr(message, " backend, ") != NULL)
        l->backend_info++;
    if (level == GOLDCLONE_LOG_LEVEL_WARN && strcmp(target, "goldclone::gc") == 0 &&
        strstr(message, "stray") != NULL)
        l->gc_warn++;
    pthread_mutex_unlock(&l->mu);
}

static void test_log_callback(void) {
    const struct harness_fs *f = &fs[0];
    struct place pl;
    struct log_lines l = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, ""};
    goldclone_cache *cache = NULL;
    int seen;
    place_init(&pl, f);
    if (pl.own_root) { /* (in the guest the root is shared with other suites: no stray there) */
        char *stray = harness_join(pl.cache_root, "stray");
        CHECK(mkdir(stray, 0755) == 0);
        free(stray);
    }
    CHECK_RC(goldclone_set_log_callback(collect_log, &l, 6), GOLDCLONE_RESULT_INVALID_ARGUMENT);
    CHECK_OK(goldclone_set_log_callback(collect_log, &l, GOLDCLONE_LOG_LEVEL_INFO));
    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    if (cache) CHECK_OK(goldclone_cache_gc(cache, NULL));
    CHECK(l.backend_info == 1);
    if (pl.own_root) CHECK(l.gc_warn == 1);
    fprintf(stderr, "  first line: %s\n", l.first);
    goldclone_cache_free(cache);
    cache = NULL;
    CHECK_OK(goldclone_set_log_callback(NULL, NULL, GOLDCLONE_LOG_LEVEL_INFO));
    seen = l.n;
    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    if (cache) CHECK_OK(goldclone_cache_gc(cache, NULL));
    CHECK(l.n == seen);
    goldclone_cache_free(cache);
    place_free(&pl);
}

/* The cheap queries: projects, has_golden, session_info. */
static void queries_on(const struct harness_fs *f) {
    struct place pl;
    place_init(&pl, f);
    char *golden = make_golden(pl.scratch);
    goldclone_cache *cache = NULL;
    char a[80], b[80], list[4096], tiny[4], path[GOLDCLONE_PATH_BUF_SIZE], got[GOLDCLONE_PATH_BUF_SIZE];
    size_t len = 0, need = 0;
    bool has = true, in_use = true;
    uint64_t gen = 0, created = 0;

    snprintf(a, sizeof a, "%s-a", pl.project);
    snprintf(b, sizeof b, "%s-b", pl.project);
    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    if (!cache) goto out;
    CHECK_OK(goldclone_cache_has_golden(cache, a, &has));
    CHECK(!has);
    CHECK_RC(goldclone_cache_has_golden(cache, "../x", &has), GOLDCLONE_RESULT_INVALID_NAME);
    CHECK_RC(goldclone_cache_has_golden(cache, a, NULL), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_OK(goldclone_cache_import(cache, b, golden, NULL));
    CHECK_OK(goldclone_cache_import(cache, a, golden, NULL));
    CHECK_OK(goldclone_cache_has_golden(cache, a, &has));
    CHECK(has);

    /* both listed, sorted, one per line (the ZFS root may hold other suites' projects) */
    CHECK_OK(goldclone_cache_projects(cache, list, sizeof list, &len));
    CHECK(len == strlen(list));
    {
        char want[200];
        snprintf(want, sizeof want, "%s\n%s", a, b);
        CHECK(strstr(list, want) != NULL);
    }
    CHECK_RC(goldclone_cache_projects(cache, tiny, sizeof tiny, &need), GOLDCLONE_RESULT_BUFFER_TOO_SMALL);
    CHECK(need == len && strlen(tiny) == sizeof tiny - 1);

    CHECK_OK(goldclone_cache_setup(cache, a, "s1", path, sizeof path, NULL));
    CHECK_OK(goldclone_cache_session_info(cache, a, "s1", &gen, &created, &in_use, got, sizeof got, &len));
    CHECK(gen == 1 && created > 1600000000u && !in_use && strcmp(got, path) == 0 && len == strlen(path));
    need = 0;
    CHECK_OK(goldclone_cache_session_info(cache, a, "s1", NULL, NULL, NULL, NULL, 0, &need));
    CHECK(need == strlen(path));
    CHECK_RC(goldclone_cache_session_info(cache, a, "s2", &gen, NULL, NULL, NULL, 0, NULL), GOLDCLONE_RESULT_NOT_FOUND);
    CHECK_RC(goldclone_cache_session_info(cache, "nope", "s1", &gen, NULL, NULL, NULL, 0, NULL), GOLDCLONE_RESULT_NOT_FOUND);
    CHECK_OK(goldclone_cache_cleanup(cache, a, "s1"));

out:
    goldclone_cache_free(cache);
    free(golden);
    place_free(&pl);
}

static void test_queries(void) { on_every_fs(queries_on); }

static void test_bad_names(void) {
    struct place pl;
    place_init(&pl, &fs[0]);
    char *golden = make_golden(pl.scratch);
    goldclone_cache *cache = NULL;
    char buf[GOLDCLONE_PATH_BUF_SIZE];
    size_t len;
    uint64_t gen;
    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    CHECK_OK(goldclone_cache_import(cache, pl.project, golden, &gen));

    char long65[66], long5000[5001];
    memset(long65, 'a', 65); long65[65] = 0;
    memset(long5000, 'b', 5000); long5000[5000] = 0;
    const struct { const char *name; goldclone_result want; } cases[] = {
        {"", GOLDCLONE_RESULT_INVALID_NAME},
        {"..", GOLDCLONE_RESULT_INVALID_NAME},
        {"../escape", GOLDCLONE_RESULT_INVALID_NAME},
        {"a/b", GOLDCLONE_RESULT_INVALID_NAME},
        {"-dash", GOLDCLONE_RESULT_INVALID_NAME},
        {"snap@x", GOLDCLONE_RESULT_INVALID_NAME},
        {"sp ace", GOLDCLONE_RESULT_INVALID_NAME},
        {"caf\xc3\xa9", GOLDCLONE_RESULT_INVALID_NAME},  /* UTF-8, not ASCII */
        {"\xff\xfe", GOLDCLONE_RESULT_INVALID_NAME},      /* not UTF-8 */
        {long65, GOLDCLONE_RESULT_NAME_TOO_LONG},
        {long5000, GOLDCLONE_RESULT_NAME_TOO_LONG},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *n = cases[i].name;
        goldclone_result w = cases[i].want;
        goldclone_info *info = NULL;
        CHECK_RC(goldclone_cache_setup(cache, pl.project, n, buf, sizeof buf, &len), w);
        CHECK_RC(goldclone_cache_setup(cache, n, "s", buf, sizeof buf, &len), w);
        CHECK_RC(goldclone_cache_promote(cache, pl.project, n, &gen), w);
        CHECK_RC(goldclone_cache_cleanup(cache, pl.project, n), w);
        CHECK_RC(goldclone_cache_import(cache, n, golden, &gen), w);
        CHECK_RC(goldclone_cache_info(cache, n, &info), w);
        CHECK(info == NULL);
    }
    /* NULL names */
    CHECK_RC(goldclone_cache_setup(cache, pl.project, NULL, buf, sizeof buf, &len), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_setup(cache, NULL, "s", buf, sizeof buf, &len), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_promote(cache, pl.project, NULL, &gen), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_cleanup(cache, NULL, "s"), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_import(cache, pl.project, NULL, &gen), GOLDCLONE_RESULT_NULL_PARAMETER);
    CHECK_RC(goldclone_cache_setup(cache, pl.project, "s", NULL, 10, &len), GOLDCLONE_RESULT_NULL_PARAMETER);
    /* unknown project / session */
    CHECK_RC(goldclone_cache_setup(cache, "nope", "s", buf, sizeof buf, &len), GOLDCLONE_RESULT_NOT_FOUND);
    CHECK_RC(goldclone_cache_promote(cache, pl.project, "nope", &gen), GOLDCLONE_RESULT_NOT_FOUND);
    CHECK_RC(goldclone_cache_cleanup(cache, pl.project, "nope"), GOLDCLONE_RESULT_NOT_FOUND);
    /* import of something that is not a directory */
    {
        char *file = harness_join(golden, "version.txt");
        CHECK_RC(goldclone_cache_import(cache, "other", file, &gen), GOLDCLONE_RESULT_NOT_A_DIRECTORY);
        CHECK_RC(goldclone_cache_import(cache, "other2", "/nonexistent/dir", &gen), GOLDCLONE_RESULT_NOT_FOUND);
        free(file);
    }
    /* a cache root that is a file, or missing */
    {
        goldclone_cache *c2 = NULL;
        char *file = harness_join(golden, "version.txt");
        CHECK_RC(goldclone_cache_open(file, NULL, &c2), GOLDCLONE_RESULT_NOT_A_DIRECTORY);
        CHECK_RC(goldclone_cache_open("/nonexistent/cache", NULL, &c2), GOLDCLONE_RESULT_NOT_FOUND);
        CHECK(c2 == NULL);
        free(file);
    }
    /* the freed cache, used once */
    CHECK_OK(goldclone_cache_free(cache));
    CHECK_RC(goldclone_cache_setup(cache, pl.project, "s", buf, sizeof buf, &len), GOLDCLONE_RESULT_INVALID_HANDLE);
    CHECK_RC(goldclone_cache_free(cache), GOLDCLONE_RESULT_INVALID_HANDLE);
    free(golden);
    place_free(&pl);
}

struct worker {
    goldclone_cache *cache;
    const char *project;
    int id;
    int failures;
    char error[256];
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    char session[32], path[GOLDCLONE_PATH_BUF_SIZE];
    size_t len;
    for (int round = 0; round < 4; round++) {
        snprintf(session, sizeof session, "w%d-%d", w->id, round);
        goldclone_result rc = goldclone_cache_setup(w->cache, w->project, session, path, sizeof path, &len);
        if (rc == GOLDCLONE_RESULT_OK) rc = goldclone_cache_cleanup(w->cache, w->project, session);
        if (rc != GOLDCLONE_RESULT_OK) {
            w->failures++;
            goldclone_last_error_message(w->error, sizeof w->error, NULL);
        }
    }
    return NULL;
}

static void test_threads_share_a_cache(void) {
    struct place pl;
    place_init(&pl, &fs[0]);
    char *golden = make_golden(pl.scratch);
    goldclone_cache *cache = NULL;
    uint64_t gen;
    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    CHECK_OK(goldclone_cache_import(cache, pl.project, golden, &gen));
    enum { N = 4 };
    pthread_t t[N];
    struct worker w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (struct worker){.cache = cache, .project = pl.project, .id = i};
        CHECK(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        if (w[i].failures) fprintf(stderr, "  worker %d: %d failures, last: %s\n", i, w[i].failures, w[i].error);
        CHECK(w[i].failures == 0);
    }
    CHECK_OK(goldclone_cache_free(cache));
    free(golden);
    place_free(&pl);
}

/* Paths are bytes: a cache root and an import source whose names are not UTF-8. */
static void test_non_utf8_paths(void) {
    if (strcmp(fs[0].name, "root") == 0) return; /* the ZFS root is given */
    char *base = harness_scratch(fs[0].path, "bytes");
    char *root = harness_join(base, "cache-\xff\xfe");
    char *golden = harness_join(base, "golden-\xe9");
    char *file = harness_join(golden, "f\x80");
    CHECK(mkdir(root, 0755) == 0 && mkdir(golden, 0755) == 0 && harness_write(file, "x\n") == 0);
    goldclone_cache *cache = NULL;
    char path[GOLDCLONE_PATH_BUF_SIZE], got[GOLDCLONE_PATH_BUF_SIZE];
    size_t len = 0;
    uint64_t gen = 0;
    CHECK_OK(goldclone_cache_open(root, NULL, &cache));
    CHECK_OK(goldclone_cache_root(cache, got, sizeof got, &len));
    CHECK(strstr(got, "cache-\xff\xfe") != NULL);
    CHECK_OK(goldclone_cache_import(cache, "p", golden, &gen));
    CHECK_OK(goldclone_cache_setup(cache, "p", "s", path, sizeof path, &len));
    CHECK(strstr(path, "cache-\xff\xfe") != NULL && len == strlen(path));
    CHECK(file_is(path, "f\x80", "x\n"));
    CHECK_OK(goldclone_cache_cleanup(cache, "p", "s"));
    CHECK_OK(goldclone_cache_free(cache));
    harness_rm_rf(base);
    free(file); free(golden); free(root); free(base);
}

struct user {
    goldclone_cache *cache;
    const char *project;
    int ok, invalid_handle, other;
};

static void *use_until_freed(void *arg) {
    struct user *u = arg;
    char path[GOLDCLONE_PATH_BUF_SIZE];
    for (int i = 0; u->invalid_handle == 0; i++) { /* until the cache is freed */
        goldclone_info *info = NULL;
        goldclone_result rc = goldclone_cache_info(u->cache, u->project, &info);
        if (rc == GOLDCLONE_RESULT_OK) {
            u->ok++;
            goldclone_info_free(info);
            if (i % 50 == 0) {
                char s[32];
                snprintf(s, sizeof s, "u%d", i);
                if (goldclone_cache_setup(u->cache, u->project, s, path, sizeof path, NULL) == GOLDCLONE_RESULT_OK)
                    goldclone_cache_cleanup(u->cache, u->project, s);
            }
        } else if (rc == GOLDCLONE_RESULT_INVALID_HANDLE) {
            u->invalid_handle++;
        } else {
            u->other++;
        }
    }
    return NULL;
}

/* Freeing a cache while other threads use it: their running calls finish, later ones get
 * INVALID_HANDLE; nothing crashes. */
static void test_free_while_in_use(void) {
    struct place pl;
    place_init(&pl, &fs[0]);
    char *golden = make_golden(pl.scratch);
    goldclone_cache *cache = NULL;
    uint64_t gen;
    CHECK_OK(goldclone_cache_open(pl.cache_root, NULL, &cache));
    CHECK_OK(goldclone_cache_import(cache, pl.project, golden, &gen));
    struct user u[3];
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        u[i] = (struct user){.cache = cache, .project = pl.project};
        CHECK(pthread_create(&t[i], NULL, use_until_freed, &u[i]) == 0);
    }
    usleep(20000);
    CHECK_OK(goldclone_cache_free(cache));
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        fprintf(stderr, "  user %d: %d ok, %d invalid handle, %d other\n", i, u[i].ok, u[i].invalid_handle, u[i].other);
        CHECK(u[i].other == 0);
        CHECK(u[i].invalid_handle == 1); /* stopped at the first one */
    }
    free(golden);
    place_free(&pl);
}

int main(void) {
    if (harness_filesystems(fs) == 0) {
        printf("test_lifecycle: 0 passed, 1 failed\n");
        return 1;
    }
    RUN(test_lifecycle);
    RUN(test_progress_and_cancel);
    RUN(test_promote_with_edits);
    RUN(test_delete_project);
    RUN(test_import_next);
    RUN(test_send_receive);
    RUN(test_setup_at);
    RUN(test_log_callback);
    RUN(test_queries);
    RUN(test_bad_names);
    RUN(test_threads_share_a_cache);
    RUN(test_non_utf8_paths);
    RUN(test_free_while_in_use);
    return harness_finish("test_lifecycle");
}
