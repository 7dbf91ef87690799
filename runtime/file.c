/* Files: opening for reading never blocks on a FIFO or a device, and writing replaces
 * a regular file atomically, through symlinks, with a temporary of its own.
 *
 * Writing. The data goes to an unnamed file (O_TMPFILE) in the target's directory,
 * which is fsync'ed, linked under a short random name and renamed over the target; a
 * process killed before the link leaves nothing behind, and concurrent writers never
 * share a temporary. Where the filesystem lacks O_TMPFILE (or /proc is not mounted to
 * link it), the temporary is a named file ".tg-<12 hex>.tmp" created with O_EXCL.
 * Every writer holds an flock on its temporary until the rename, so a later save in
 * the same directory can tell a dead writer's leftover (unlocked, older than a minute)
 * from one being written, and removes it. */
#include "runtime/internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

_Atomic bool tg__file_no_tmpfile;

enum {
  MAX_SYMLINKS = 40,        /* as Linux's own limit on a path's symlinks */
  STALE_AFTER_S = 60,       /* an unlocked temporary this old is a dead writer's */
  TMP_NAME_LEN = 4 + 12 + 4 /* ".tg-" hex ".tmp" */
};

/* "a FIFO", "a directory"...: what st is, for "'x' is a FIFO, not a regular file". */
static const char *file_kind(const struct stat *st) {
  return S_ISFIFO(st->st_mode)   ? "a FIFO"
         : S_ISCHR(st->st_mode)  ? "a character device"
         : S_ISBLK(st->st_mode)  ? "a block device"
         : S_ISDIR(st->st_mode)  ? "a directory"
         : S_ISSOCK(st->st_mode) ? "a socket"
         : S_ISLNK(st->st_mode)  ? "a symbolic link"
                                 : "not a regular file";
}

static int not_regular(const char *op, const char *verb, const char *path,
                       const struct stat *st) {
  char q[TG_QUOTE_LEN];
  const char *kind = file_kind(st);
  return tg__error("%s: cannot %s %s: it is %s%s", op, verb, tg__quote(path, q, sizeof q),
                   kind,
                   strcmp(kind, "not a regular file") ? ", not a regular file" : "");
}

int tg_file_open_read(const char *path, const char *op) {
  char q[TG_QUOTE_LEN];
  op = op ? op : "tg_file_open_read";
  if (!path)
    return tg__error("%s: argument 'path' is NULL", op);
  if (!path[0])
    return tg__error("%s: the file name is empty", op);
  /* stat first, so that a device is not even opened (opening one can act on it). */
  struct stat st;
  if (stat(path, &st) != 0)
    return tg__error("%s: cannot open %s: %s", op, tg__quote(path, q, sizeof q),
                     strerror(errno));
  if (!S_ISREG(st.st_mode))
    return not_regular(op, "read", path, &st);
  /* O_NONBLOCK: should path have become a FIFO since, open must not wait for a
   * writer; fstat then says what was really opened. */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0)
    return tg__error("%s: cannot open %s: %s", op, tg__quote(path, q, sizeof q),
                     strerror(errno));
  int flags;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (flags = fcntl(fd, F_GETFL)) < 0 ||
      fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
    int rc = S_ISREG(st.st_mode)
                 ? tg__error("%s: cannot open %s: %s", op, tg__quote(path, q, sizeof q),
                             strerror(errno))
                 : not_regular(op, "read", path, &st);
    close(fd);
    return rc;
  }
  return fd;
}

/* ------------------------------------------------------------------ writing -- */

typedef struct {
  char *dir, *base; /* the target after symlinks: its directory and its name */
  bool exists;
  mode_t mode; /* an existing target's permissions, kept by its replacement */
  int dirfd;
} target;

/* dirname(link) + "/" + rel: where a relative symlink points. */
static char *beside(const char *link, const char *rel) {
  const char *slash = strrchr(link, '/');
  size_t dl = slash ? (size_t)(slash - link) + 1 : 0, rl = strlen(rel);
  char *s = malloc(dl + rl + 1);
  if (s) {
    memcpy(s, link, dl);
    memcpy(s + dl, rel, rl + 1);
  }
  return s;
}

/* Follows path's symlinks (a dangling one names the file to create, as open() would)
 * and checks that what is there, if anything, is a regular file. */
static int resolve(const char *path, const char *op, target *t) {
  char q[TG_QUOTE_LEN], qd[TG_QUOTE_LEN], *cur = strdup(path);
  if (!cur)
    return tg__error("%s: out of memory", op);
  for (int hops = 0;; hops++) {
    struct stat st;
    if (lstat(cur, &st) != 0) {
      if (errno == ENOENT)
        break;
      int rc = tg__error("%s: cannot save to %s: %s", op, tg__quote(path, q, sizeof q),
                         strerror(errno));
      free(cur);
      return rc;
    }
    if (!S_ISLNK(st.st_mode)) {
      if (!S_ISREG(st.st_mode)) {
        int rc = not_regular(op, "replace", cur, &st);
        free(cur);
        return rc;
      }
      t->exists = true;
      t->mode = st.st_mode & 0777;
      break;
    }
    char *link = hops < MAX_SYMLINKS ? malloc(PATH_MAX) : NULL;
    ssize_t n = link ? readlink(cur, link, PATH_MAX - 1) : -1;
    if (n < 0) {
      int rc = hops < MAX_SYMLINKS
                   ? tg__error("%s: cannot follow the symbolic link %s: %s", op,
                               tg__quote(cur, q, sizeof q),
                               link ? strerror(errno) : "out of memory")
                   : tg__error("%s: cannot save to %s: more than %d levels of symbolic "
                               "links",
                               op, tg__quote(path, q, sizeof q), MAX_SYMLINKS);
      free(link);
      free(cur);
      return rc;
    }
    link[n] = '\0';
    char *next = link[0] == '/' ? strdup(link) : beside(cur, link);
    free(link);
    free(cur);
    if (!(cur = next))
      return tg__error("%s: out of memory", op);
  }
  char *slash = strrchr(cur, '/');
  if (slash ? !slash[1] : !cur[0]) {
    free(cur);
    return tg__error("%s: cannot save to %s: the name ends in '/' (a directory)", op,
                     tg__quote(path, q, sizeof q));
  }
  t->base = strdup(slash ? slash + 1 : cur);
  if (slash)
    slash[slash == cur ? 1 : 0] = '\0';
  t->dir = slash ? cur : strdup(".");
  if (!slash)
    free(cur);
  if (!t->base || !t->dir)
    return tg__error("%s: out of memory", op);
  t->dirfd = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (t->dirfd < 0)
    return tg__error("%s: cannot create %s: cannot open its directory %s: %s", op,
                     tg__quote(path, q, sizeof q), tg__quote(t->dir, qd, sizeof qd),
                     strerror(errno));
  return 0;
}

static void random_name(char name[TMP_NAME_LEN + 1]) {
  static _Atomic uint64_t counter;
  uint64_t r;
  if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r = (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 30 ^ (uint64_t)getpid() << 40;
  }
  r ^= atomic_fetch_add(&counter, 1) * 0x9e3779b97f4a7c15ull;
  snprintf(name, TMP_NAME_LEN + 1, ".tg-%012llx.tmp",
           (unsigned long long)(r & 0xffffffffffffull));
}

static bool is_temp_name(const char *s) {
  if (strlen(s) != TMP_NAME_LEN || strncmp(s, ".tg-", 4) || strcmp(s + 16, ".tmp"))
    return false;
  for (int i = 4; i < 16; i++)
    if (!strchr("0123456789abcdef", s[i]))
      return false;
  return true;
}

/* A new named temporary in the directory, locked; its name into name. */
static int create_named(const target *t, char name[TMP_NAME_LEN + 1]) {
  for (int attempt = 0; attempt < 100; attempt++) {
    random_name(name);
    int fd = openat(t->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      (void)flock(fd, LOCK_EX);
      return fd;
    }
    if (errno != EEXIST)
      return -1;
  }
  errno = EEXIST;
  return -1;
}

/* Links the unnamed temporary fd into the directory under a new random name. */
static int link_unnamed(const target *t, int fd, char name[TMP_NAME_LEN + 1]) {
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  for (int attempt = 0; attempt < 100; attempt++) {
    random_name(name);
    if (linkat(AT_FDCWD, proc, t->dirfd, name, AT_SYMLINK_FOLLOW) == 0 ||
        linkat(fd, "", t->dirfd, name, AT_EMPTY_PATH) == 0)
      return 0;
    if (errno != EEXIST)
      return -1;
  }
  return -1;
}

/* Removes dead writers' temporaries: unlocked and not touched for a minute (a writer
 * locks its temporary right after creating it, so a younger one may be in between). */
static void remove_stale(const target *t) {
  int fd = fcntl(t->dirfd, F_DUPFD_CLOEXEC, 0);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (!d) {
    if (fd >= 0)
      close(fd);
    return;
  }
  rewinddir(d);
  time_t now = time(NULL);
  struct dirent *e;
  while ((e = readdir(d))) {
    struct stat st, fst;
    if (!is_temp_name(e->d_name) ||
        fstatat(t->dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISREG(st.st_mode) || now - st.st_mtime < STALE_AFTER_S)
      continue;
    int tfd = openat(t->dirfd, e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (tfd < 0)
      continue;
    if (fstat(tfd, &fst) == 0 && fst.st_ino == st.st_ino && fst.st_dev == st.st_dev &&
        flock(tfd, LOCK_EX | LOCK_NB) == 0)
      (void)unlinkat(t->dirfd, e->d_name, 0);
    close(tfd);
  }
  closedir(d);
}

/* Runs write into a new temporary file and renames it over the target. *retry is set
 * when an unnamed temporary could not be linked: the caller tries again, named. */
static int write_once(const char *path, const char *op, const target *t, bool unnamed,
                      tg__write_fn write, void *ctx, bool *retry) {
  char q[TG_QUOTE_LEN], qd[TG_QUOTE_LEN], name[TMP_NAME_LEN + 1] = "";
  int fd = -1;
#ifdef O_TMPFILE
  if (unnamed) {
    fd = openat(t->dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0666);
    if (fd >= 0)
      (void)flock(fd, LOCK_EX);
  }
#endif
  bool named = fd < 0;
  if (named && (fd = create_named(t, name)) < 0)
    return tg__error("%s: cannot create a temporary file in %s to save %s: %s", op,
                     tg__quote(t->dir, qd, sizeof qd), tg__quote(path, q, sizeof q),
                     strerror(errno));
  /* Close-on-exec, as every descriptor here: a child exec'ed meanwhile by another
   * thread must not inherit the temporary, nor its lock. */
  int rc = 0, wfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  FILE *f = wfd >= 0 ? fdopen(wfd, "wb") : NULL;
  if (!f) {
    if (wfd >= 0)
      close(wfd);
    rc = tg__error("%s: cannot save %s: %s", op, tg__quote(path, q, sizeof q),
                   strerror(errno));
  } else {
    if (t->exists && fchmod(fd, t->mode) != 0)
      rc = tg__error("%s: cannot save %s: %s", op, tg__quote(path, q, sizeof q),
                     strerror(errno));
    if (rc == 0)
      rc = write(f, ctx);
    if (rc == 0 && fflush(f) != 0)
      rc = tg__error("%s: writing %s failed: %s", op, tg__quote(path, q, sizeof q),
                     strerror(errno));
    if (rc == 0 && fsync(fd) != 0)
      rc = tg__error("%s: flushing %s to disk failed: %s", op,
                     tg__quote(path, q, sizeof q), strerror(errno));
    if (fclose(f) != 0 && rc == 0)
      rc = tg__error("%s: writing %s failed: %s", op, tg__quote(path, q, sizeof q),
                     strerror(errno));
  }
  if (rc == 0 && !named && link_unnamed(t, fd, name) < 0) {
    *retry = true;
    rc = -1;
  }
  struct stat st;
  if (rc == 0 && fstatat(t->dirfd, t->base, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      !S_ISREG(st.st_mode))
    rc = not_regular(op, "replace", path, &st); /* it changed while we wrote */
  if (rc == 0 && renameat(t->dirfd, name, t->dirfd, t->base) != 0)
    rc = tg__error("%s: cannot save %s: %s", op, tg__quote(path, q, sizeof q),
                   strerror(errno));
  if (rc != 0 && name[0])
    (void)unlinkat(t->dirfd, name, 0);
  close(fd); /* releases the lock */
  if (rc == 0)
    (void)fsync(t->dirfd); /* best effort: not every filesystem syncs directories */
  return rc;
}

int tg__write_atomic(const char *path, const char *op, tg__write_fn write, void *ctx) {
  if (!path)
    return tg__error("%s: argument 'filename' is NULL", op);
  if (!path[0])
    return tg__error("%s: the file name is empty", op);
  target t = {.dirfd = -1};
  int rc = resolve(path, op, &t);
  if (rc == 0) {
    bool retry = false;
    rc = write_once(path, op, &t, !atomic_load(&tg__file_no_tmpfile), write, ctx, &retry);
    if (retry)
      rc = write_once(path, op, &t, false, write, ctx, &retry);
    if (rc == 0)
      remove_stale(&t);
  }
  if (t.dirfd >= 0)
    close(t.dirfd);
  free(t.dir);
  free(t.base);
  return rc;
}

typedef struct {
  const void *data;
  size_t n;
  const char *op, *path;
} buffer;

static int write_buffer(FILE *f, void *ctx) {
  const buffer *b = ctx;
  char q[TG_QUOTE_LEN];
  if (b->n && fwrite(b->data, 1, b->n, f) != b->n)
    return tg__error("%s: writing %s failed: %s", b->op, tg__quote(b->path, q, sizeof q),
                     strerror(errno));
  return 0;
}

int tg_file_write_atomic(const char *path, const void *data, size_t n, const char *op) {
  op = op ? op : "tg_file_write_atomic";
  if (!data && n)
    return tg__error("%s: argument 'data' is NULL", op);
  buffer b = {data, n, op, path};
  return tg__write_atomic(path, op, write_buffer, &b);
}
