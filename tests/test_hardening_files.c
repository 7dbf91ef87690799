/* Hardening of files, names and messages (issue #15, items 5-10, 16 and 17): loads
 * that must not hang on FIFOs, saves that stay atomic under concurrent writers and
 * kills, through symlinks and never over devices, variable names safetensors cannot
 * hold, messages that keep their rule, and name lookups that scale. */
#include "common.h"
#include "nn/internal.h" /* tg__name_index; runtime/internal.h: tg__quote, files */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------- helpers -- */

typedef struct {
  char dir[64];
} tmpdir;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int dir_setup(void **state) {
  tmpdir *t = calloc(1, sizeof *t);
  snprintf(t->dir, sizeof t->dir, "/tmp/tg_hfiles_XXXXXX");
  if (!t || !mkdtemp(t->dir)) {
    free(t);
    return -1;
  }
  tg_manual_seed(1234);
  tg_clear_error();
  *state = t;
  return 0;
}

static int dir_teardown(void **state) {
  tmpdir *t = *state;
  atomic_store(&tg__file_no_tmpfile, false);
  nftw(t->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(t);
  return 0;
}

/* t->dir/name, in one of 8 rotating buffers. */
static const char *in_dir(const tmpdir *t, const char *name) {
  static char bufs[8][600];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, sizeof bufs[0], "%s/%s", t->dir, name);
  return b;
}

/* A store with "w" [n] and "b" [7], every element `value`. */
static tg_varstore *store_of(int64_t n, double value) {
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  assert_non_null(tg_path_var(root, "w", TG_SHAPE(n), tg_init_const(value)));
  assert_non_null(tg_path_var(root, "b", TG_SHAPE(7), tg_init_const(value)));
  return vs;
}

/* The value every element of vs holds, or NAN when they differ (a torn file). */
static double uniform(tg_varstore *vs) {
  double v = NAN;
  for (int i = 0; i < tg_varstore_len(vs); i++) {
    tg_tensor *x = tg_varstore_var(vs, i, NULL);
    const float *d = tg_data(x);
    for (int64_t k = 0; k < tg_numel(x); k++) {
      if (i == 0 && k == 0)
        v = d[0];
      else if (d[k] != v)
        return NAN;
    }
  }
  return v;
}

/* Names in t->dir other than the ones listed (NULL-terminated), joined by spaces. */
static void others_in_dir(const tmpdir *t, char *buf, size_t len, ...) {
  buf[0] = '\0';
  DIR *d = opendir(t->dir);
  assert_non_null(d);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    bool known = false;
    va_list ap;
    va_start(ap, len);
    for (const char *n; !known && (n = va_arg(ap, const char *));)
      known = !strcmp(n, e->d_name);
    va_end(ap);
    if (!known)
      snprintf(buf + strlen(buf), len - strlen(buf), "%s ", e->d_name);
  }
  closedir(d);
}

/* Runs fn(ctx) in a child process, which must exit 0 within `seconds`: a call that
 * would hang fails the test instead of hanging the suite. */
static void in_child_within(int seconds, void (*fn)(void *), void *ctx,
                            const char *what) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    alarm((unsigned)seconds);
    fn(ctx);
    _exit(0);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (WIFSIGNALED(status))
    fail_msg("%s: killed by signal %d (SIGALRM %d: it hung)", what, WTERMSIG(status),
             SIGALRM);
  if (WEXITSTATUS(status) != 0)
    fail_msg("%s: child exited %d", what, WEXITSTATUS(status));
}

/* ------------------------------------------- 5: non-regular files, reading -- */

typedef struct {
  const char *path, *fragment;
} load_case;

static void load_refused(void *ctx) {
  const load_case *c = ctx;
  tg_varstore *vs = store_of(4, 0);
  int rc = tg_varstore_load(vs, c->path);
  bool ok = rc < 0 && strstr(tg_last_error(), c->fragment) &&
            strstr(tg_last_error(), "tg_varstore_load") &&
            strstr(tg_last_error(), "not a regular file");
  if (!ok)
    fprintf(stderr, "load %s: rc %d, message '%s' (expected '%s')\n", c->path, rc,
            tg_last_error(), c->fragment);
  int fd = tg_file_open_read(c->path, "reader");
  ok = ok && fd < 0 && strstr(tg_last_error(), "reader: ") &&
       strstr(tg_last_error(), c->fragment);
  if (fd >= 0)
    close(fd);
  tg_varstore_free(vs);
  _exit(ok ? 0 : 1);
}

static void test_load_refuses_non_regular_files_without_blocking(void **state) {
  tmpdir *t = *state;
  const char *fifo = in_dir(t, "fifo.safetensors");
  assert_int_equal(mkfifo(fifo, 0600), 0);
  load_case fifo_case = {fifo, "it is a FIFO"};
  in_child_within(10, load_refused, &fifo_case, "tg_varstore_load on a FIFO");
  load_case dir_case = {t->dir, "it is a directory"};
  in_child_within(10, load_refused, &dir_case, "tg_varstore_load on a directory");
  load_case dev_case = {"/dev/null", "it is a character device"};
  in_child_within(10, load_refused, &dev_case, "tg_varstore_load on /dev/null");
  /* Through a symlink, the FIFO is still refused. */
  const char *link = in_dir(t, "link");
  assert_int_equal(symlink("fifo.safetensors", link), 0);
  load_case link_case = {link, "it is a FIFO"};
  in_child_within(10, load_refused, &link_case, "tg_varstore_load via a link to a FIFO");

  /* A regular file opens, blocking again, and reads. */
  const char *reg = in_dir(t, "plain");
  assert_int_equal(tg_file_write_atomic(reg, "hello", 5, NULL), 0);
  int fd = tg_file_open_read(reg, NULL);
  assert_true(fd >= 0);
  assert_int_equal(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
  assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  char buf[8] = {0};
  assert_int_equal(read(fd, buf, sizeof buf), 5);
  assert_string_equal(buf, "hello");
  close(fd);
  assert_error(tg_file_open_read(in_dir(t, "missing"), NULL) < 0, "tg_file_open_read",
               "cannot open", "missing'", "No such file");
  assert_error(tg_file_open_read("", "op") < 0, "op: the file name is empty");
  assert_error(tg_file_open_read(NULL, NULL) < 0, "'path' is NULL");
}

/* -------------------------------------------- 6: concurrent saves, atomic -- */

enum { WRITERS = 4, SAVES = 12, BIG = 1 << 16 };

typedef struct {
  const char *path;
  int id, failures;
  char error[256];
} writer_arg;

static void *writer(void *p) {
  writer_arg *a = p;
  tg_varstore *vs = store_of(BIG, a->id);
  for (int i = 0; i < SAVES; i++)
    if (tg_varstore_save(vs, a->path) != 0) {
      a->failures++;
      snprintf(a->error, sizeof a->error, "%s", tg_last_error());
    }
  tg_varstore_free(vs);
  return NULL;
}

typedef struct {
  const char *path;
  _Atomic bool *stop;
  int loads, bad;
  char error[256];
} reader_arg;

static void *reader(void *p) {
  reader_arg *a = p;
  tg_varstore *vs = store_of(BIG, -1);
  while (!atomic_load(a->stop) || a->loads < 3) {
    a->loads++;
    double v = tg_varstore_load(vs, a->path) == 0 ? uniform(vs) : NAN;
    if (!(v >= 0 && v <= 100 + WRITERS)) {
      a->bad++;
      snprintf(a->error, sizeof a->error, "value %g: %s", v, tg_last_error());
    }
  }
  tg_varstore_free(vs);
  return NULL;
}

static void test_concurrent_saves_are_atomic(void **state) {
  tmpdir *t = *state;
  const char *path = in_dir(t, "shared.safetensors");
  tg_varstore *first = store_of(BIG, 0);
  assert_ok(tg_varstore_save(first, path) == 0);
  tg_varstore_free(first);

  for (int mode = 0; mode < 2; mode++) { /* O_TMPFILE, then named temporaries */
    atomic_store(&tg__file_no_tmpfile, mode == 1);
    _Atomic bool stop = false;
    reader_arg r = {path, &stop, 0, 0, ""};
    pthread_t rt, wt[WRITERS];
    writer_arg w[WRITERS];
    /* Processes too: each child saves its own value. They are forked before any thread
     * of this test starts: a child forked while another thread holds the allocator's
     * lock (ASan's, or malloc's) waits for it forever when it allocates. */
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
      kids[k] = fork();
      assert_true(kids[k] >= 0);
      if (kids[k] == 0) {
        writer_arg a = {path, 100 + k, 0, ""};
        writer(&a);
        _exit(a.failures ? 1 : 0);
      }
    }
    assert_int_equal(pthread_create(&rt, NULL, reader, &r), 0);
    for (int i = 0; i < WRITERS; i++) {
      w[i] = (writer_arg){path, i + 1, 0, ""};
      assert_int_equal(pthread_create(&wt[i], NULL, writer, &w[i]), 0);
    }
    for (int i = 0; i < WRITERS; i++) {
      pthread_join(wt[i], NULL);
      if (w[i].failures)
        fail_msg("writer %d: %d of %d saves failed: %s", i, w[i].failures, SAVES,
                 w[i].error);
    }
    for (int k = 0; k < 2; k++) {
      int status;
      assert_int_equal(waitpid(kids[k], &status, 0), kids[k]);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("writer process %d failed (status %d)", k, status);
    }
    atomic_store(&stop, true);
    pthread_join(rt, NULL);
    if (r.bad)
      fail_msg("%d of %d concurrent loads saw a torn or missing file: %s", r.bad, r.loads,
               r.error);
    char extra[512];
    others_in_dir(t, extra, sizeof extra, "shared.safetensors", (const char *)NULL);
    if (extra[0])
      fail_msg("temporaries left behind: %s", extra);
  }
}

/* ------------------------------------------------ 7: long file names -- */

static void test_longest_file_names_save(void **state) {
  tmpdir *t = *state;
  tg_varstore *vs = store_of(5, 3), *back = store_of(5, 0);
  for (int len = 247; len <= 255; len += 8) {
    char name[256];
    memset(name, 'n', (size_t)len);
    name[len] = '\0';
    const char *path = in_dir(t, name);
    assert_ok(tg_varstore_save(vs, path) == 0);
    assert_ok(tg_varstore_load(back, path) == 0);
    assert_true(uniform(back) == 3);
    unlink(path);
  }
  /* One byte more is the filesystem's refusal, in a message that keeps its reason. */
  char name[257];
  memset(name, 'n', 256);
  name[256] = '\0';
  assert_error(tg_varstore_save(vs, in_dir(t, name)) < 0, "tg_varstore_save",
               "File name too long");
  tg_varstore_free(vs);
  tg_varstore_free(back);
}

/* ---------------------------------------- 8: symlinks and special files -- */

static bool is_kind(const char *path, mode_t kind) {
  struct stat st;
  return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == kind;
}

static void test_save_through_symlinks(void **state) {
  tmpdir *t = *state;
  tg_varstore *one = store_of(5, 1), *two = store_of(5, 2), *back = store_of(5, 0);
  const char *real = in_dir(t, "real.safetensors"), *link = in_dir(t, "link");
  assert_ok(tg_varstore_save(one, real) == 0);
  assert_int_equal(chmod(real, 0640), 0);
  assert_int_equal(symlink("real.safetensors", link), 0);
  /* A relative link from another directory, and a link to the link. */
  assert_int_equal(mkdir(in_dir(t, "sub"), 0700), 0);
  assert_int_equal(symlink("../link", in_dir(t, "sub/chain")), 0);

  assert_ok(tg_varstore_save(two, link) == 0);
  assert_true(is_kind(link, S_IFLNK));
  assert_true(is_kind(real, S_IFREG));
  assert_ok(tg_varstore_load(back, real) == 0);
  assert_true(uniform(back) == 2);
  struct stat st;
  assert_int_equal(stat(real, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0640); /* the replacement keeps the permissions */

  assert_ok(tg_varstore_save(one, in_dir(t, "sub/chain")) == 0);
  assert_true(is_kind(in_dir(t, "sub/chain"), S_IFLNK));
  assert_true(is_kind(link, S_IFLNK));
  assert_ok(tg_varstore_load(back, real) == 0);
  assert_true(uniform(back) == 1);

  /* A dangling symlink names the file to create, as open() would. */
  const char *dangling = in_dir(t, "dangling");
  assert_int_equal(symlink("created.safetensors", dangling), 0);
  assert_ok(tg_varstore_save(two, dangling) == 0);
  assert_true(is_kind(dangling, S_IFLNK));
  assert_true(is_kind(in_dir(t, "created.safetensors"), S_IFREG));
  assert_ok(tg_varstore_load(back, dangling) == 0);
  assert_true(uniform(back) == 2);

  /* A loop is an error, not a hang. */
  assert_int_equal(symlink("loop_b", in_dir(t, "loop_a")), 0);
  assert_int_equal(symlink("loop_a", in_dir(t, "loop_b")), 0);
  assert_error(tg_varstore_save(one, in_dir(t, "loop_a")) < 0, "tg_varstore_save",
               "levels of symbolic links");
  char extra[512];
  others_in_dir(t, extra, sizeof extra, "real.safetensors", "link", "sub", "dangling",
                "created.safetensors", "loop_a", "loop_b", (const char *)NULL);
  assert_string_equal(extra, "");
  tg_varstore_free(one);
  tg_varstore_free(two);
  tg_varstore_free(back);
}

static void expect_refused(const tmpdir *t, const char *path, mode_t kind,
                           const char *what) {
  tg_varstore *vs = store_of(5, 1);
  assert_error(tg_varstore_save(vs, path) < 0, "tg_varstore_save: cannot replace", what,
               "not a regular file");
  assert_true(is_kind(path, kind));
  assert_error(tg_file_write_atomic(path, "x", 1, "writer") < 0, "writer: ", what);
  assert_true(is_kind(path, kind));
  char extra[512];
  const char *slash = strrchr(path, '/');
  others_in_dir(t, extra, sizeof extra, slash ? slash + 1 : path, "to_special",
                (const char *)NULL);
  assert_string_equal(extra, "");
  tg_varstore_free(vs);
}

static void test_save_refuses_special_files(void **state) {
  tmpdir *t = *state;
  const char *fifo = in_dir(t, "fifo");
  assert_int_equal(mkfifo(fifo, 0600), 0);
  expect_refused(t, fifo, S_IFIFO, "it is a FIFO");
  /* Via a symlink too: the link is followed, the FIFO refused. */
  assert_int_equal(symlink("fifo", in_dir(t, "to_special")), 0);
  tg_varstore *vs = store_of(5, 1);
  assert_error(tg_varstore_save(vs, in_dir(t, "to_special")) < 0, "it is a FIFO");
  assert_true(is_kind(fifo, S_IFIFO));
  assert_true(is_kind(in_dir(t, "to_special"), S_IFLNK));
  unlink(in_dir(t, "to_special"));
  unlink(fifo);

  const char *dir = in_dir(t, "dir");
  assert_int_equal(mkdir(dir, 0700), 0);
  expect_refused(t, dir, S_IFDIR, "it is a directory");
  rmdir(dir);
  assert_error(tg_varstore_save(vs, in_dir(t, "newdir/")) < 0, "ends in '/'");

  const char *sock = in_dir(t, "sock");
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  assert_true(s >= 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock);
  assert_int_equal(bind(s, (struct sockaddr *)&addr, sizeof addr), 0);
  expect_refused(t, sock, S_IFSOCK, "it is a socket");
  close(s);
  unlink(sock);

  assert_error(tg_varstore_save(vs, "") < 0, "tg_varstore_save: the file name is empty");
  assert_null(strstr(tg_last_error(), ".tmp"));
  tg_varstore_free(vs);
}

static void test_save_refuses_device_nodes(void **state) {
  tmpdir *t = *state;
  const char *dev = in_dir(t, "null");
  if (mknod(dev, S_IFCHR | 0600, makedev(1, 3)) != 0)
    skip(); /* needs root (CAP_MKNOD) */
  expect_refused(t, dev, S_IFCHR, "it is a character device");
}

/* -------------------------------------------------- 10: killed saves -- */

/* Our temporaries in t->dir; fails on any other file but `keep`. */
static int count_temps(const tmpdir *t, const char *keep) {
  int n = 0;
  DIR *d = opendir(t->dir);
  struct dirent *e;
  while ((e = readdir(d))) {
    bool temp = strlen(e->d_name) == 20 && !strncmp(e->d_name, ".tg-", 4) &&
                strspn(e->d_name + 4, "0123456789abcdef") == 12 &&
                !strcmp(e->d_name + 16, ".tmp");
    if (!temp && strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
        strcmp(e->d_name, keep))
      fail_msg("a killed save left %s", e->d_name);
    n += temp;
  }
  closedir(d);
  return n;
}

/* Kills a child that saves `vs` to path over and over, after `us` microseconds. */
static void kill_saver(tg_varstore *vs, const char *path, long us) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0)
    for (;;)
      if (tg_varstore_save(vs, path) != 0)
        _exit(3);
  struct timespec ts = {0, us * 1000};
  nanosleep(&ts, NULL);
  kill(pid, SIGKILL);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (WIFEXITED(status))
    fail_msg("saver exited %d: saves failed", WEXITSTATUS(status));
}

/* Sets the modification time of every temporary but `except` two minutes back. */
static void age_temps(const tmpdir *t, const char *except) {
  DIR *d = opendir(t->dir);
  struct dirent *e;
  struct timespec old[2] = {{time(NULL) - 120, 0}, {time(NULL) - 120, 0}};
  while ((e = readdir(d)))
    if (!strncmp(e->d_name, ".tg-", 4) && strcmp(e->d_name, except))
      assert_int_equal(utimensat(dirfd(d), e->d_name, old, AT_SYMLINK_NOFOLLOW), 0);
  closedir(d);
}

/* A killed save leaves the old checkpoint or the new, whole. With O_TMPFILE the data
 * is written to an unnamed file, so only a kill between linking it under its
 * temporary name and the rename leaves something (an unlucky few in a hundred kills);
 * without O_TMPFILE a kill mid-write leaves the named temporary. Either way the next
 * save in the directory removes temporaries that no live writer holds once they are a
 * minute old, so kills never pile up files. */
static void test_killed_saves_leave_nothing(void **state) {
  tmpdir *t = *state;
  const char *path = in_dir(t, "model.safetensors");
  tg_varstore *vs = store_of(1 << 20, 5), *back = store_of(1 << 20, 0);
  int left[2] = {0, 0};
  for (int mode = 0; mode < 2; mode++) {
    atomic_store(&tg__file_no_tmpfile, mode == 1);
    for (int round = 0; round < 12; round++) {
      kill_saver(vs, path, 2000 + round * 1500L);
      left[mode] = count_temps(t, "model.safetensors");
    }
    print_message("%s: %d temporaries left by 12 killed saves\n",
                  mode ? "named temporaries" : "O_TMPFILE", left[mode]);
    if (access(path, F_OK) == 0) {
      assert_ok(tg_varstore_load(back, path) == 0);
      assert_true(uniform(back) == 5);
    }
  }
  /* What the next save removes: unlocked temporaries a minute old; not a young one
   * (its writer may not have locked it yet), a locked one, or other names. */
  const char *fresh = in_dir(t, ".tg-00000000beef.tmp"),
             *locked = in_dir(t, ".tg-00000000f00d.tmp"),
             *other = in_dir(t, ".tg-notours.tmp");
  assert_int_equal(tg_file_write_atomic(fresh, "", 0, NULL), 0);
  assert_int_equal(tg_file_write_atomic(locked, "", 0, NULL), 0);
  assert_int_equal(tg_file_write_atomic(other, "", 0, NULL), 0);
  int lock_fd = open(locked, O_RDONLY);
  assert_int_equal(flock(lock_fd, LOCK_EX), 0); /* as a live writer holds it */
  age_temps(t, ".tg-00000000beef.tmp");
  assert_ok(tg_varstore_save(vs, path) == 0);
  char extra[512];
  others_in_dir(t, extra, sizeof extra, "model.safetensors", ".tg-00000000beef.tmp",
                ".tg-00000000f00d.tmp", ".tg-notours.tmp", (const char *)NULL);
  if (extra[0])
    fail_msg("stale temporaries survived a save: %s", extra);
  assert_int_equal(access(fresh, F_OK), 0);
  assert_int_equal(access(locked, F_OK), 0);
  assert_int_equal(access(other, F_OK), 0);
  close(lock_fd);
  assert_ok(tg_varstore_load(back, path) == 0);
  assert_true(uniform(back) == 5);
  tg_varstore_free(vs);
  tg_varstore_free(back);
}

/* ------------------------------------------- 9: names safetensors can hold -- */

static void test_reserved_and_unsavable_names(void **state) {
  tmpdir *t = *state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  assert_error(!tg_path_var(root, "__metadata__", TG_SHAPE(1), tg_init_const(1)),
               "tg_path_var", "'__metadata__' is reserved");
  assert_error(!tg_path_var_frozen(root, "__metadata__", TG_SHAPE(1), tg_init_const(1)),
               "tg_path_var_frozen", "reserved");
  assert_int_equal(tg_varstore_len(vs), 0);
  assert_error(!tg_path_var(root, "caf\xe9", TG_SHAPE(1), tg_init_const(1)),
               "'caf\\xe9' is not valid UTF-8 (byte 3)", "safetensors");
  assert_error(!tg_path_sub(root, "\xc3("), "tg_path_sub", "not valid UTF-8");
  /* Only the whole name is reserved: a path component of that name is fine. */
  assert_non_null(
      tg_path_var(tg_path_sub(root, "__metadata__"), "w", TG_SHAPE(1), tg_init_const(1)));

  /* Names JSON must escape round-trip: quotes, backslashes, control characters. */
  static const char *const names[] = {"quote\"d",
                                      "back\\slash",
                                      "tab\there",
                                      "new\nline",
                                      "\x01"
                                      "ctl\x1f",
                                      "del\x7f",
                                      "caf\xc3\xa9 \xf0\x9f\x98\x80",
                                      "trailing ",
                                      "/slash"};
  enum { N = sizeof names / sizeof names[0] };
  tg_varstore *back = tg_varstore_new(TG_CPU);
  assert_non_null(tg_path_var(tg_path_sub(tg_varstore_root(back), "__metadata__"), "w",
                              TG_SHAPE(1), tg_init_const(0)));
  for (int i = 0; i < N; i++) {
    assert_non_null(tg_path_var(root, names[i], TG_SHAPE(2), tg_init_const(i + 10)));
    assert_non_null(
        tg_path_var(tg_varstore_root(back), names[i], TG_SHAPE(2), tg_init_const(0)));
  }
  const char *path = in_dir(t, "names.safetensors");
  assert_ok(tg_varstore_save(vs, path) == 0);
  assert_ok(tg_varstore_load(back, path) == 0);
  for (int i = 0; i < N; i++) {
    tg_tensor *x = tg_varstore_get(back, names[i]);
    assert_non_null(x);
    assert_true(((float *)tg_data(x))[1] == i + 10);
  }
  assert_true(*(float *)tg_data(tg_varstore_get(back, "__metadata__.w")) == 1);
  /* serde_json's escapes, as safetensors writes them. */
  FILE *f = fopen(path, "rb");
  char header[2048] = {0};
  assert_true(fread(header, 1, sizeof header - 1, f) > 8);
  fclose(f);
  const char *want[] = {"\"quote\\\"d\"", "\"back\\\\slash\"",     "\"tab\\there\"",
                        "\"new\\nline\"", "\"\\u0001ctl\\u001f\"", "\"del\x7f\""};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!memmem(header + 8, sizeof header - 9, want[i], strlen(want[i])))
      fail_msg("header lacks %s", want[i]);
  /* Tensor dicts take any name, so saving checks: none that cannot be loaded back. */
  tg_tensor_dict *d = tg_tensor_dict_new();
  tg_tensor *x = tg_zeros(TG_SHAPE(1), TG_F32, TG_CPU);
  assert_int_equal(tg_tensor_dict_set(d, "__metadata__", x), 0);
  assert_error(tg_save_tensors(d, in_dir(t, "dict.safetensors")) < 0, "tg_save_tensors",
               "'__metadata__' is reserved");
  tg_tensor_dict_free(d);
  d = tg_tensor_dict_new();
  assert_int_equal(tg_tensor_dict_set(d, "", x), 0);
  assert_error(tg_save_tensors(d, in_dir(t, "dict.safetensors")) < 0,
               "tensor names must not be empty");
  assert_int_equal(access(in_dir(t, "dict.safetensors"), F_OK), -1);
  tg_tensor_dict_free(d);
  tg_tensor_free(x);
  tg_varstore_free(vs);
  tg_varstore_free(back);
}

/* ------------------------------------------------ 17: many variables -- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Creates n variables (and n/5 paths) in vs, then looks each up; returns seconds. */
static double fill_store(tg_varstore *vs, int n) {
  tg_path *root = tg_varstore_root(vs);
  double t0 = now_s();
  char name[32];
  for (int i = 0; i < n; i++) {
    snprintf(name, sizeof name, "v%d", i);
    if (!tg_path_var(root, name, TG_SHAPE(1), tg_init_const(i)))
      fail_msg("variable %d: %s", i, tg_last_error());
  }
  for (int i = 0; i < n / 5; i++) {
    snprintf(name, sizeof name, "p%d", i);
    tg_path *p = tg_path_sub(root, name);
    assert_non_null(p);
    assert_ptr_equal(tg_path_sub(root, name), p); /* the same name, the same path */
  }
  for (int i = 0; i < n; i++) {
    snprintf(name, sizeof name, "v%d", i);
    tg_tensor *x = tg_varstore_get(vs, name);
    if (!x || *(float *)tg_data(x) != (float)i)
      fail_msg("tg_varstore_get(\"%s\") is wrong", name);
  }
  return now_s() - t0;
}

static void test_many_variables(void **state) {
  (void)state;
  enum { VARS = 100000 };
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  double elapsed = fill_store(vs, VARS);
  /* Names that are not there: a linear search compares each with all 100,000 (10^10
   * comparisons, a minute); hashed, a few probes each. */
  double t0 = now_s();
  char name[32];
  for (int i = 0; i < VARS; i++) {
    snprintf(name, sizeof name, "x%d", i);
    if (tg_varstore_get(vs, name))
      fail_msg("%s should not exist", name);
  }
  double missing = now_s() - t0;
  /* Loading matches every variable with its tensor by name: hashed or sorted, not
   * each against all. */
  char path[64];
  snprintf(path, sizeof path, "/tmp/tg_many_%d.safetensors", (int)getpid());
  assert_ok(tg_varstore_save(vs, path) == 0);
  t0 = now_s();
  assert_ok(tg_varstore_load(vs, path) == 0);
  double load = now_s() - t0;
  unlink(path);
  print_message("%d variables and %d paths created and looked up in %.3f s; %d missing "
                "names looked up in %.3f s; loaded in %.3f s\n",
                VARS, VARS / 5, elapsed, VARS, missing, load);
  assert_true(elapsed < 10); /* generous bounds: the machine is shared */
  assert_true(missing < 10);
  assert_true(load < 10);
  assert_null(tg_varstore_get(vs, "v100000"));
  assert_null(tg_varstore_get(vs, "v"));
  assert_error(!tg_path_var(root, "v99999", TG_SHAPE(1), tg_init_const(0)),
               "a variable named 'v99999' already exists");

  /* A constructor that fails half-way takes its variables out of the index too. */
  tg_path *lin = tg_path_sub(root, "lin");
  assert_non_null(tg_path_var(lin, "bias", TG_SHAPE(1), tg_init_const(0)));
  int before = tg_varstore_len(vs);
  assert_error(!tg_nn_linear(lin, 3, 2, tg_linear_config_default()),
               "'lin.bias' already exists");
  assert_int_equal(tg_varstore_len(vs), before);
  assert_null(tg_varstore_get(vs, "lin.weight"));
  assert_non_null(tg_varstore_get(vs, "lin.bias"));
  assert_non_null(tg_varstore_get(vs, "v12345"));
  assert_non_null(tg_path_var(lin, "weight", TG_SHAPE(2, 3), tg_init_const(0)));
  tg_varstore_free(vs);
}

/* ------------------------------------------------------- 16: messages -- */

/* A safetensors file with this header and data_len bytes of data. */
static void write_st(const char *path, const char *header, size_t data_len) {
  size_t n = strlen(header);
  uint8_t *buf = calloc(1, 8 + n + data_len);
  for (int i = 0; i < 8; i++)
    buf[i] = (uint8_t)((uint64_t)n >> (8 * i));
  memcpy(buf + 8, header, n);
  assert_int_equal(tg_file_write_atomic(path, buf, 8 + n + data_len, NULL), 0);
  free(buf);
}

static void test_schema_errors_name_tensor_and_field(void **state) {
  tmpdir *t = *state;
  const char *path = in_dir(t, "bad.safetensors");
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  assert_non_null(tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(2), tg_init_const(1)));
#define ENTRY(dtype, shape, offsets)                                                     \
  "{\"w\":{\"dtype\":" dtype ",\"shape\":" shape ",\"data_offsets\":" offsets "}}"
  static const struct {
    const char *header, *fragment;
  } cases[] = {
      {ENTRY("\"F32\"", "[2]", "[0,8,16]"),
       "tensor 'w': data_offsets must be [begin, end], found '[0,8,16]}}'"},
      {ENTRY("\"F32\"", "[2]", "[8]"), "tensor 'w': data_offsets must be [begin, end]"},
      {ENTRY("\"F32\"", "[2]", "\"0-8\""),
       "data_offsets must be [begin, end], found '\"0"},
      {ENTRY("\"F32\"", "[2]", "[0,8.5]"),
       "data_offsets must be [begin, end]: expected an integer, found a floating point"},
      {ENTRY("\"F32\"", "[2]", "{}"), "data_offsets must be [begin, end], found '{}}}'"},
      {ENTRY("\"F32\"", "2", "[0,8]"),
       "tensor 'w': shape must be a list of non-negative integers, found '2,"},
      {ENTRY("\"F32\"", "[2,-1]", "[0,8]"),
       "tensor 'w': shape must be a list of non-negative integers: expected a "
       "non-negative integer"},
      {ENTRY("\"F32\"", "[2", "[0,8]"), "shape must be a list of non-negative integers"},
      {ENTRY("32", "[2]", "[0,8]"), "tensor 'w': dtype must be a string such as \"F32\""},
      {"{\"w\":[0,8]}", "tensor 'w': expected an object {\"dtype\""},
      {"{\"w \":5}", "tensor 'w ': expected an object"},
      {"[]", "the header must be a JSON object"},
      {"{\"__metadata__\":[],\"w\":{}}", "__metadata__ must be an object of strings"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    write_st(path, cases[i].header, 8);
    int rc = tg_varstore_load(vs, path);
    if (rc == 0 || !strstr(tg_last_error(), cases[i].fragment) ||
        strstr(tg_last_error(), "invalid JSON") ||
        !strstr(tg_last_error(), "is not a valid safetensors file"))
      fail_msg("case %zu (%s): rc %d, \"%s\" lacks \"%s\" (or says invalid JSON)", i,
               cases[i].header, rc, tg_last_error(), cases[i].fragment);
    tg_clear_error();
  }
  /* Syntax errors are still called that. */
  write_st(path, "{\"w\":{\"dtype\" \"F32\"}}", 8);
  assert_error(tg_varstore_load(vs, path) < 0, "invalid JSON: expected ':'",
               "header byte");
#undef ENTRY
  tg_varstore_free(vs);
}

static void test_messages_keep_the_rule(void **state) {
  tmpdir *t = *state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  /* A 3000-byte name is cut in the middle; the rule after it survives. */
  char *name = malloc(3002);
  memset(name, 'a', 3000);
  name[1500] = '.';
  name[3000] = '\0';
  assert_error(!tg_path_var(root, name, TG_SHAPE(1), tg_init_const(0)),
               "tg_path_var: name 'aaaa", "a...aaaa",
               "aaaa' (3000 bytes) must not contain '.'");
  name[1500] = 'a';
  assert_non_null(tg_path_var(root, name, TG_SHAPE(1), tg_init_const(0)));
  assert_error(!tg_path_var(root, name, TG_SHAPE(1), tg_init_const(0)),
               "(3000 bytes) already exists in the var store");
  assert_true(strlen(tg_last_error()) < 400);
  /* Names are quoted, control characters escaped, so what differs shows. */
  assert_non_null(tg_path_var(root, "w ", TG_SHAPE(1), tg_init_const(0)));
  assert_error(!tg_path_var(root, "w ", TG_SHAPE(1), tg_init_const(0)),
               "a variable named 'w ' already exists");
  assert_error(!tg_path_var(root, "x\n.", TG_SHAPE(1), tg_init_const(0)),
               "name 'x\\n.' must not contain '.'");
  assert_error(!tg_path_var(root, "u", TG_SHAPE(1), tg_init_uniform(2, 1)),
               "uniform init of 'u' expects lo <= hi");
  /* File names too: a trailing space, a very long path. */
  assert_error(tg_varstore_load(vs, in_dir(t, "nope ")) < 0, "nope '",
               "No such file or directory");
  char *long_path = malloc(5000);
  memset(long_path, 'd', 4999);
  long_path[0] = '/';
  long_path[4999] = '\0';
  assert_error(tg_varstore_load(vs, long_path) < 0, "(4999 bytes)", "File name too long");
  assert_error(tg_varstore_save(vs, long_path) < 0, "(4999 bytes)", "File name too long");
  free(long_path);
  free(name);
  tg_varstore_free(vs);
}

static void test_layer_configs_checked_at_construction(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  tg_group_norm_config gc = tg_group_norm_config_default();
  tg_batch_norm_config bc = tg_batch_norm_config_default();
  tg_layer_norm_config lc = tg_layer_norm_config_default();
  assert_error(!tg_nn_group_norm(tg_path_sub(root, "g"), 2, 0, gc),
               "num_channels must be positive (num_channels 0, num_groups 2)");
  assert_null(strstr(tg_last_error(), "divisible"));
  const double bad_eps[] = {NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < sizeof bad_eps / sizeof bad_eps[0]; i++) {
    gc.eps = bc.eps = lc.eps = bad_eps[i];
    assert_error(!tg_nn_group_norm(tg_path_sub(root, "enc"), 2, 4, gc),
                 "tg_nn_group_norm 'enc': expected eps");
    assert_error(!tg_nn_batch_norm2d(tg_path_sub(root, "bn"), 3, bc),
                 "tg_nn_batch_norm2d 'bn': expected eps");
    assert_error(!tg_nn_layer_norm(root, TG_SHAPE(3), lc),
                 "tg_nn_layer_norm: expected eps");
  }
  assert_int_equal(tg_varstore_len(vs), 0);
  bc = tg_batch_norm_config_default();
  bc.momentum = NAN;
  assert_error(!tg_nn_batch_norm2d(tg_path_sub(root, "bn"), 3, bc),
               "tg_nn_batch_norm2d 'bn': expected a finite momentum");
  assert_int_equal(tg_varstore_len(vs), 0);

  /* eps = 0 and negative eps: the ops and the layers take them, as PyTorch's do (one
   * rule for both); the input's variance (about 1) keeps var + eps positive. */
  tg_tensor *x = tg_randn(TG_SHAPE(2, 4, 3, 3), TG_F32, TG_CPU);
  const double good_eps[] = {0, -1e-5};
  tg_scope_begin();
  for (size_t i = 0; i < sizeof good_eps / sizeof *good_eps; i++) {
    gc = tg_group_norm_config_default();
    bc = tg_batch_norm_config_default();
    lc = tg_layer_norm_config_default();
    gc.eps = bc.eps = lc.eps = good_eps[i];
    char name[3][8];
    snprintf(name[0], sizeof name[0], "g%zu", i);
    snprintf(name[1], sizeof name[1], "b%zu", i);
    snprintf(name[2], sizeof name[2], "l%zu", i);
    tg_module *m[3] = {tg_nn_group_norm(tg_path_sub(root, name[0]), 2, 4, gc),
                       tg_nn_batch_norm2d(tg_path_sub(root, name[1]), 4, bc),
                       tg_nn_layer_norm(tg_path_sub(root, name[2]), TG_SHAPE(3), lc)};
    tg_tensor *y[6] = {tg_group_norm(x, 2, NULL, NULL, good_eps[i]),
                       tg_batch_norm(x, NULL, NULL, NULL, NULL, true, 0.1, good_eps[i]),
                       tg_layer_norm(x, TG_SHAPE(3), NULL, NULL, good_eps[i])};
    for (int k = 0; k < 3; k++) {
      assert_non_null(m[k]);
      y[3 + k] = tg_module_forward(m[k], x, true);
    }
    for (int k = 0; k < 6; k++) {
      assert_non_null(y[k]);
      assert_true(isfinite(tg_item(tg_sum(y[k]))));
    }
  }
  assert_int_equal(tg_scope_end(), 0);
  assert_string_equal(tg_last_error(), "");
  tg_tensor_free(x);
  tg_varstore_free(vs);
}

static void test_layer_dtype_mismatch_names_layer_and_tensors(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs), *enc = tg_path_sub(root, "enc1");
  tg_module *conv =
      tg_nn_conv2d(tg_path_sub(enc, "conv"), 3, 4, 3, tg_conv2d_config_default());
  tg_module *lin =
      tg_nn_linear(tg_path_sub(root, "fc"), 3, 2, tg_linear_config_default());
  tg_module *gn =
      tg_nn_group_norm(tg_path_sub(root, "gn"), 1, 3, tg_group_norm_config_default());
  tg_module *bn =
      tg_nn_batch_norm2d(tg_path_sub(root, "bn"), 3, tg_batch_norm_config_default());
  tg_module *ln = tg_nn_layer_norm(tg_path_sub(root, "ln"), TG_SHAPE(3),
                                   tg_layer_norm_config_default());
  assert_true(conv && lin && gn && bn && ln);
  tg_tensor *x64 = tg_randn(TG_SHAPE(2, 3, 5, 3), TG_F64, TG_CPU);
  tg_tensor *i64 = tg_zeros(TG_SHAPE(2, 3), TG_I64, TG_CPU);
  assert_error(!tg_module_forward(conv, x64, false),
               "tg_nn_conv2d 'enc1.conv': input is float64 but weight is float32");
  assert_error(!tg_module_forward(lin, x64, false),
               "tg_nn_linear 'fc': input is float64 but weight is float32");
  assert_error(!tg_module_forward(lin, i64, false),
               "tg_nn_linear 'fc': input is int64 but weight is float32");
  assert_error(!tg_module_forward(gn, x64, false),
               "tg_nn_group_norm 'gn': input is float64 but weight is float32");
  assert_error(!tg_module_forward(bn, x64, true),
               "tg_nn_batch_norm2d 'bn': input is float64 but running_mean is float32");
  assert_error(!tg_module_forward(ln, x64, false),
               "tg_nn_layer_norm 'ln': input is float64 but weight is float32");
  /* Converted, the same input runs. */
  assert_ok(tg_varstore_set_dtype(vs, TG_F64) == 0);
  tg_tensor *y = tg_module_forward(gn, x64, false);
  assert_ok(y != NULL);
  tg_tensor_free(y);
  tg_tensor_free(x64);
  tg_tensor_free(i64);
  tg_varstore_free(vs);
}

/* --env-probe: what a fresh process does with the variables the library reads. */
static int env_probe(void) {
  tg_tensor *x = tg_randn(TG_SHAPE(2, 4, 3, 3), TG_F32, TG_CPU);
  tg_tensor *w = tg_randn(TG_SHAPE(4, 4, 3, 3), TG_F32, TG_CPU);
  int64_t one[2] = {1, 1}, zero[2] = {0, 0};
  for (int i = 0; i < 3; i++) { /* each warning once, however often it is read */
    tg_tensor *y = tg_group_norm(x, 2, NULL, NULL, 1e-5);
    tg_tensor *c = tg_conv2d(x, w, NULL, one, zero, one, 1);
    if (!y || !c)
      return 1;
    tg_tensor_free(y);
    tg_tensor_free(c);
  }
  printf("threads %d\n", tg_get_num_threads());
  tg_tensor_free(x);
  tg_tensor_free(w);
  return 0;
}

/* Runs this test program with --env-probe and env (NULL-terminated "K=V" list);
 * stdout and stderr together into out. */
static void run_probe(char *const *env, char *out, size_t len) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    close(fds[1]);
    char *argv[] = {"test_hardening_files", "--env-probe", NULL};
    execve("/proc/self/exe", argv, env);
    _exit(127);
  }
  close(fds[1]);
  size_t n = 0;
  ssize_t r;
  while (n + 1 < len && (r = read(fds[0], out + n, len - 1 - n)) > 0)
    n += (size_t)r;
  out[n] = '\0';
  close(fds[0]);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail_msg("probe failed (status %d): %s", status, out);
}

static int count_of(const char *text, const char *s) {
  int n = 0;
  for (const char *p = text; (p = strstr(p, s)); p++)
    n++;
  return n;
}

static void test_bad_environment_values_warn_once(void **state) {
  (void)state;
  char out[4096];
  const char *asan = getenv("ASAN_OPTIONS");
  char asan_env[512];
  snprintf(asan_env, sizeof asan_env, "ASAN_OPTIONS=%s", asan ? asan : "");
  char *bad[] = {"TG_NUM_THREADS=lots", "TG_NORM_STREAM_BYTES=-5", "TG_CONV_DIRECT=yes",
                 asan_env, NULL};
  run_probe(bad, out, sizeof out);
  assert_int_equal(count_of(out, "tapegrad: warning: ignoring TG_NUM_THREADS='lots': "
                                 "expected an integer in [1, 4096]"),
                   1);
  assert_int_equal(count_of(out, "ignoring TG_NORM_STREAM_BYTES='-5'"), 1);
  assert_int_equal(count_of(out, "ignoring TG_CONV_DIRECT='yes': expected an integer in "
                                 "[0, 1]"),
                   1);
  /* Good values, and unset ones, say nothing. */
  char *good[] = {"TG_NUM_THREADS=3", "TG_NORM_STREAM_BYTES=0", "TG_CONV_DIRECT=0",
                  asan_env, NULL};
  run_probe(good, out, sizeof out);
  assert_null(strstr(out, "warning"));
  assert_non_null(strstr(out, "threads 3"));
  char *none[] = {asan_env, NULL};
  run_probe(none, out, sizeof out);
  assert_null(strstr(out, "warning"));
}

/* ------------------------------------------------------ 15: the examples -- */

typedef struct {
  int status; /* exit code, or 128 + signal */
  char out[16384], err[16384];
} ex_run;

static void slurp(const char *path, char *buf, size_t len) {
  buf[0] = '\0';
  FILE *f = fopen(path, "rb");
  if (!f)
    return;
  size_t n = fread(buf, 1, len - 1, f);
  buf[n] = '\0';
  fclose(f);
}

/* Runs build/examples/<argv[0]> (NULL-terminated argv) with stdout to stdout_path
 * (NULL: a file read back into r->out), killing it after 60 s. */
static void run_example(const tmpdir *t, const char *const *argv, const char *stdout_path,
                        ex_run *r) {
  char exe[4096];
  snprintf(exe, sizeof exe, "%s/examples/%s", TG_BUILD_ROOT, argv[0]);
  if (access(exe, X_OK) != 0)
    skip(); /* built with -Dexamples=false */
  char out_path[600], err_path[600];
  snprintf(out_path, sizeof out_path, "%s",
           stdout_path ? stdout_path : in_dir(t, "out.txt"));
  snprintf(err_path, sizeof err_path, "%s", in_dir(t, "err.txt"));
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (o < 0 || e < 0)
      _exit(126);
    dup2(o, STDOUT_FILENO);
    dup2(e, STDERR_FILENO);
    execv(exe, (char *const *)argv);
    _exit(127);
  }
  int status = 0;
  double deadline = now_s() + 60;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (now_s() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  r->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  slurp(stdout_path ? "/dev/null" : out_path, r->out, sizeof r->out);
  slurp(err_path, r->err, sizeof r->err);
}

static void expect_exit(const tmpdir *t, const char *const *argv, const char *stdout_path,
                        int status, const char *fragment) {
  ex_run *r = malloc(sizeof *r);
  run_example(t, argv, stdout_path, r);
  if (r->status != status || !strstr(r->err, fragment)) {
    char cmd[1024] = "";
    for (int i = 0; argv[i]; i++)
      snprintf(cmd + strlen(cmd), sizeof cmd - strlen(cmd), "%s ", argv[i]);
    fail_msg("%s: exit %d (expected %d), stderr lacks '%s':\n%s\nstdout:\n%s", cmd,
             r->status, status, fragment, r->err, r->out);
  }
  free(r);
}

/* Tiny raw IDX files for mnist in t->dir/data: 8 blank 28x28 images per set. */
static const char *tiny_idx(const tmpdir *t) {
  const char *data = in_dir(t, "data");
  mkdir(data, 0700);
  uint8_t images[16 + 8 * 28 * 28] = {0, 0, 8, 3, 0, 0, 0, 8, 0, 0, 0, 28, 0, 0, 0, 28};
  uint8_t labels[8 + 8] = {0, 0, 8, 1, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8};
  const char *sets[] = {"train", "t10k"};
  char path[700];
  for (int i = 0; i < 2; i++) {
    snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte", data, sets[i]);
    assert_int_equal(tg_file_write_atomic(path, images, sizeof images, NULL), 0);
    snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte", data, sets[i]);
    assert_int_equal(tg_file_write_atomic(path, labels, sizeof labels, NULL), 0);
  }
  return data;
}

static void test_examples_exit_codes_and_special_files(void **state) {
  tmpdir *t = *state;
  char data[600], file[600], fifo[600]; /* in_dir's buffers get reused */
  snprintf(data, sizeof data, "%s", tiny_idx(t));
  snprintf(file, sizeof file, "%s", in_dir(t, "a_file"));
  snprintf(fifo, sizeof fifo, "%s", in_dir(t, "fifo"));
  assert_int_equal(tg_file_write_atomic(file, "x", 1, NULL), 0);
  assert_int_equal(mkfifo(fifo, 0600), 0);
  char mn_out[600], seg_out[600], mn_png[700], seg_png[700];
  snprintf(mn_out, sizeof mn_out, "%s", in_dir(t, "mn"));
  snprintf(seg_out, sizeof seg_out, "%s", in_dir(t, "seg"));
  mkdir(mn_out, 0700);
  mkdir(seg_out, 0700);
  snprintf(mn_png, sizeof mn_png, "%s/mnist_curves.png", mn_out);
  snprintf(seg_png, sizeof seg_png, "%s/samples.png", seg_out);
  assert_int_equal(mkfifo(mn_png, 0600), 0);
  assert_int_equal(mkfifo(seg_png, 0600), 0);
#define MNIST "mnist", "--data", data, "--epochs", "1", "--batch", "8"
#define SEG                                                                              \
  "segmentation", "--train-size", "4", "--eval-size", "2", "--epochs", "1", "--steps", "1"
  /* Runtime failures exit 1, whichever example: --out that cannot be a directory
   * (mnist exited 0 there), pictures, checkpoints and data that are FIFOs (which
   * used to block forever). */
  expect_exit(t, (const char *[]){MNIST, "--out", file, NULL}, NULL, 1,
              "is not a directory");
  expect_exit(t, (const char *[]){SEG, "--out", file, NULL}, NULL, 1,
              "is not a directory");
  expect_exit(t, (const char *[]){MNIST, "--out", mn_out, NULL}, NULL, 1,
              "mnist_curves.png': it is a FIFO, not a regular file");
  expect_exit(t, (const char *[]){SEG, "--out", seg_out, NULL}, NULL, 1,
              "samples.png': it is a FIFO, not a regular file");
  expect_exit(t, (const char *[]){MNIST, "--load", fifo, NULL}, NULL, 1, "it is a FIFO");
  expect_exit(t, (const char *[]){SEG, "--load", fifo, NULL}, NULL, 1, "it is a FIFO");
  expect_exit(t, (const char *[]){MNIST, "--save", fifo, "--out", in_dir(t, "o1"), NULL},
              NULL, 1, "cannot replace");
  expect_exit(t, (const char *[]){SEG, "--save", fifo, "--out", in_dir(t, "o2"), NULL},
              NULL, 1, "it is a FIFO");
  assert_true(is_kind(fifo, S_IFIFO));
  assert_true(is_kind(mn_png, S_IFIFO));
  char images[700];
  snprintf(images, sizeof images, "%s/t10k-images-idx3-ubyte", data);
  unlink(images);
  assert_int_equal(mkfifo(images, 0600), 0);
  expect_exit(t, (const char *[]){MNIST, "--out", in_dir(t, "o3"), NULL}, NULL, 1,
              "t10k-images-idx3-ubyte': it is a FIFO, not a regular file");
  /* Output that cannot be written is a failure too, not a silent 0. */
  expect_exit(t, (const char *[]){"mnist", "--help", NULL}, "/dev/full", 1,
              "cannot write the standard output");
  expect_exit(t, (const char *[]){SEG, "--out", in_dir(t, "o4"), NULL}, "/dev/full", 1,
              "cannot write the standard output");
  /* Usage errors exit 2. */
  expect_exit(t, (const char *[]){"mnist", "--epochs", "-1", NULL}, NULL, 2,
              "--epochs: expected a value in");
  expect_exit(t, (const char *[]){"segmentation", "--out", "", NULL}, NULL, 2,
              "--out: expected a DIR, got an empty string");
  /* And success is 0. */
  expect_exit(t, (const char *[]){SEG, "--out", in_dir(t, "o5"), NULL}, NULL, 0, "");
#undef MNIST
#undef SEG
}

static void test_quote(void **state) {
  (void)state;
  char q[TG_QUOTE_LEN];
  assert_string_equal(tg__quote("w ", q, sizeof q), "'w '");
  assert_string_equal(tg__quote("a\tb\nc\x01"
                                "d\x7f",
                                q, sizeof q),
                      "'a\\tb\\nc\\x01d\\x7f'");
  assert_string_equal(tg__quote("caf\xc3\xa9 \xff\xc3(", q, sizeof q),
                      "'caf\xc3\xa9 \\xff\\xc3('");
  assert_string_equal(tg__quote(NULL, q, sizeof q), "(null)");
  /* Long names keep their head and tail, cut between characters, with their size. */
  char s[400];
  for (int i = 0; i < 399; i += 3)
    memcpy(s + i, "\xe2\x82\xac", 3); /* 133 euro signs */
  s[399] = '\0';
  tg__quote(s, q, sizeof q);
  assert_non_null(strstr(q, "...\xe2\x82\xac"));
  assert_non_null(strstr(q, "\xe2\x82\xac..."));
  assert_non_null(strstr(q, "' (399 bytes)"));
  size_t bad;
  assert_true(tg__valid_utf8((const uint8_t *)q, strlen(q), &bad));
  assert_true(strlen(q) < 150);
  /* A short buffer truncates but stays terminated. */
  char tiny[5];
  assert_string_equal(tg__quote("abcdef", tiny, sizeof tiny), "'abc");
}

static int open_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d)
    return -1;
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

/* Every path through saving and loading, failing or not, closes what it opened. */
static void test_no_descriptor_leaks(void **state) {
  tmpdir *t = *state;
  int before = open_fds();
  if (before < 0)
    skip(); /* no /proc */
  tg_varstore *vs = store_of(5, 1);
  const char *path = in_dir(t, "ok.safetensors"), *fifo = in_dir(t, "fifo");
  assert_int_equal(mkfifo(fifo, 0600), 0);
  for (int mode = 0; mode < 2; mode++) {
    atomic_store(&tg__file_no_tmpfile, mode == 1);
    assert_ok(tg_varstore_save(vs, path) == 0);
    assert_ok(tg_varstore_load(vs, path) == 0);
    assert_true(tg_varstore_save(vs, fifo) < 0);
    assert_true(tg_varstore_load(vs, fifo) < 0);
    assert_true(tg_varstore_save(vs, t->dir) < 0);
    assert_true(tg_varstore_load(vs, t->dir) < 0);
    assert_true(tg_varstore_save(vs, in_dir(t, "missing/x")) < 0);
    write_st(path, "{\"w\":5}", 0);
    assert_true(tg_varstore_load(vs, path) < 0);
  }
  tg_clear_error();
  tg_varstore_free(vs);
  assert_int_equal(open_fds(), before);
}

/* The index itself, counted rather than timed: names compared per lookup. */
typedef struct {
  char (*names)[24];
  long long compared;
} counted_names;

static const char *counted_at(const void *owner, int i) {
  counted_names *c = (counted_names *)owner;
  c->compared++;
  return c->names[i];
}

static void test_name_index_probes(void **state) {
  (void)state;
  enum { N = 100000 };
  counted_names c = {malloc(N * sizeof *c.names), 0};
  tg__name_index ix = {.at = counted_at};
  for (int i = 0; i < N; i++) {
    snprintf(c.names[i], sizeof c.names[i], "layer%d.weight", i);
    assert_int_equal(tg__name_reserve(&ix, &c, i, "test"), 0);
    tg__name_add(&ix, &c, i);
  }
  c.compared = 0;
  char name[32];
  for (int i = 0; i < N; i++) {
    snprintf(name, sizeof name, "layer%d.weight", i);
    assert_int_equal(tg__name_find(&ix, &c, name), i);
  }
  long long found = c.compared;
  c.compared = 0;
  for (int i = 0; i < N; i++) {
    snprintf(name, sizeof name, "layer%d.bias", i);
    assert_int_equal(tg__name_find(&ix, &c, name), -1);
  }
  print_message("names compared per lookup: %.2f (present), %.2f (absent)\n",
                (double)found / N, (double)c.compared / N);
  assert_true(found <= 3LL * N); /* a linear search: N / 2 per lookup */
  assert_true(c.compared <= 4LL * N);
  tg__name_refill(&ix, &c, N / 2); /* as after a failed constructor */
  assert_int_equal(tg__name_find(&ix, &c, "layer7.weight"), 7);
  assert_int_equal(tg__name_find(&ix, &c, "layer60000.weight"), -1);
  tg__name_index_free(&ix);
  free(c.names);
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "--env-probe"))
    return env_probe();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          test_load_refuses_non_regular_files_without_blocking, dir_setup, dir_teardown),
      cmocka_unit_test_setup_teardown(test_concurrent_saves_are_atomic, dir_setup,
                                      dir_teardown),
      cmocka_unit_test_setup_teardown(test_longest_file_names_save, dir_setup,
                                      dir_teardown),
      cmocka_unit_test_setup_teardown(test_save_through_symlinks, dir_setup,
                                      dir_teardown),
      cmocka_unit_test_setup_teardown(test_save_refuses_special_files, dir_setup,
                                      dir_teardown),
      cmocka_unit_test_setup_teardown(test_save_refuses_device_nodes, dir_setup,
                                      dir_teardown),
      cmocka_unit_test_setup_teardown(test_killed_saves_leave_nothing, dir_setup,
                                      dir_teardown),
      cmocka_unit_test_setup_teardown(test_reserved_and_unsavable_names, dir_setup,
                                      dir_teardown),
      cmocka_unit_test(test_quote),
      cmocka_unit_test_setup_teardown(test_no_descriptor_leaks, dir_setup, dir_teardown),
      cmocka_unit_test(test_name_index_probes),
      cmocka_unit_test(test_many_variables),
      cmocka_unit_test(test_bad_environment_values_warn_once),
      cmocka_unit_test_setup_teardown(test_examples_exit_codes_and_special_files,
                                      dir_setup, dir_teardown),
      cmocka_unit_test(test_layer_configs_checked_at_construction),
      cmocka_unit_test(test_layer_dtype_mismatch_names_layer_and_tensors),
      cmocka_unit_test_setup_teardown(test_schema_errors_name_tensor_and_field, dir_setup,
                                      dir_teardown),
      cmocka_unit_test_setup_teardown(test_messages_keep_the_rule, dir_setup,
                                      dir_teardown),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
