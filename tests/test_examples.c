/* Runs the example programs for a few steps on tiny data: exit statuses, error
 * messages for bad flags and malformed IDX files, checkpoints, Ctrl-C and pictures. */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef TG_BUILD_ROOT
#error "TG_BUILD_ROOT must name the build directory"
#endif

enum { TIMEOUT_S = 60, TRAIN_N = 96, TEST_N = 40, SIDE = 28 };

/* ------------------------------------------------------------ processes -- */
typedef struct {
  int status; /* exit code, or 128 + signal */
  char *out, *err;
} run_result;

static void run_result_free(run_result *r) {
  free(r->out);
  free(r->err);
}

static void append(char **buf, size_t *len, const char *data, size_t n) {
  *buf = realloc(*buf, *len + n + 1);
  memcpy(*buf + *len, data, n);
  *len += n;
  (*buf)[*len] = '\0';
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *example_path(const char *name) {
  static char path[4096];
  snprintf(path, sizeof path, "%s/examples/%s", TG_BUILD_ROOT, name);
  return path;
}

/* Runs examples/<argv[0]> with argv (NULL-terminated), capturing stdout and stderr.
 * When interrupt_after is set, sends SIGINT once stdout contains it. */
static run_result run_ex(const char *const *argv, const char *interrupt_after) {
  const char *exe = example_path(argv[0]);
  if (access(exe, X_OK) != 0)
    skip(); /* built with -Dexamples=false */
  int out_pipe[2], err_pipe[2];
  assert_int_equal(pipe(out_pipe), 0);
  assert_int_equal(pipe(err_pipe), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(out_pipe[1], STDOUT_FILENO);
    dup2(err_pipe[1], STDERR_FILENO);
    close(out_pipe[0]);
    close(err_pipe[0]);
    close(out_pipe[1]);
    close(err_pipe[1]);
    execv(exe, (char *const *)argv);
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  run_result r = {0, calloc(1, 1), calloc(1, 1)};
  size_t out_len = 0, err_len = 0;
  struct pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  bool interrupted = false;
  double deadline = now_s() + TIMEOUT_S;
  while (fds[0].fd >= 0 || fds[1].fd >= 0) {
    if (now_s() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      fail_msg("%s timed out after %d s; stdout:\n%s\nstderr:\n%s", argv[0], TIMEOUT_S,
               r.out, r.err);
    }
    if (poll(fds, 2, 200) < 0 && errno != EINTR)
      fail_msg("poll: %s", strerror(errno));
    for (int i = 0; i < 2; i++) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      char buf[4096];
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
      } else if (i == 0) {
        append(&r.out, &out_len, buf, (size_t)n);
      } else {
        append(&r.err, &err_len, buf, (size_t)n);
      }
    }
    if (interrupt_after && !interrupted && strstr(r.out, interrupt_after)) {
      kill(pid, SIGINT);
      interrupted = true;
    }
  }
  int status;
  waitpid(pid, &status, 0);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (interrupt_after && !interrupted)
    fail_msg("%s never printed '%s'; stdout:\n%s\nstderr:\n%s", argv[0], interrupt_after,
             r.out, r.err);
  return r;
}

#define assert_status(r, expected)                                                       \
  do {                                                                                   \
    if ((r).status != (expected))                                                        \
      fail_msg("exit status %d, expected %d; stdout:\n%s\nstderr:\n%s", (r).status,      \
               (expected), (r).out, (r).err);                                            \
  } while (0)

#define assert_contains(text, fragment)                                                  \
  do {                                                                                   \
    if (!strstr((text), (fragment)))                                                     \
      fail_msg("expected '%s' in:\n%s", (fragment), (text));                             \
  } while (0)

/* ---------------------------------------------------------- temp files -- */
static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

typedef struct {
  char dir[256];
} tmpdir;

static int tmpdir_setup(void **state) {
  tmpdir *t = calloc(1, sizeof *t);
  snprintf(t->dir, sizeof t->dir, "/tmp/tg_test_examples_XXXXXX");
  if (!mkdtemp(t->dir)) {
    free(t);
    return -1;
  }
  *state = t;
  return 0;
}

static int tmpdir_teardown(void **state) {
  tmpdir *t = *state;
  nftw(t->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(t);
  return 0;
}

static const char *in_dir(const tmpdir *t, const char *name) {
  static char bufs[8][512];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, 512, "%s/%s", t->dir, name);
  return b;
}

static bool file_exists(const char *path) { return access(path, F_OK) == 0; }

static void write_file(const char *path, const uint8_t *data, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

/* gzip with stored (uncompressed) deflate blocks: enough for zlib's gzread, without
 * making the tests depend on zlib. */
static uint32_t crc32_of(const uint8_t *p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++)
      c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
  }
  return ~c;
}

static void write_gzip(const char *path, const uint8_t *data, size_t n) {
  size_t cap = 18 + n + 5 * (n / 65535 + 1);
  uint8_t *g = malloc(cap), *p = g;
  const uint8_t head[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff};
  memcpy(p, head, 10);
  p += 10;
  size_t off = 0;
  do {
    size_t len = n - off > 65535 ? 65535 : n - off;
    *p++ = off + len == n; /* BFINAL, BTYPE 00 */
    *p++ = (uint8_t)len;
    *p++ = (uint8_t)(len >> 8);
    *p++ = (uint8_t)~len;
    *p++ = (uint8_t)(~len >> 8);
    memcpy(p, data + off, len);
    p += len;
    off += len;
  } while (off < n);
  uint32_t crc = crc32_of(data, n), size = (uint32_t)n;
  for (int i = 0; i < 4; i++)
    *p++ = (uint8_t)(crc >> (8 * i));
  for (int i = 0; i < 4; i++)
    *p++ = (uint8_t)(size >> (8 * i));
  write_file(path, g, (size_t)(p - g));
  free(g);
}

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* IDX bytes of n 28x28 images whose class shows as a bright bar at a class-dependent
 * row, plus noise; *len gets the size. */
static uint8_t *idx_images(int n, const uint8_t *labels, size_t *len) {
  *len = 16 + (size_t)n * SIDE * SIDE;
  uint8_t *b = malloc(*len);
  put_be32(b, 0x803);
  put_be32(b + 4, (uint32_t)n);
  put_be32(b + 8, SIDE);
  put_be32(b + 12, SIDE);
  unsigned seed = 7;
  for (int i = 0; i < n; i++)
    for (int k = 0; k < SIDE * SIDE; k++) {
      seed = seed * 1103515245u + 12345u;
      int row = k / SIDE, bar = 3 + 2 * labels[i];
      b[16 + (size_t)i * SIDE * SIDE + k] =
          (uint8_t)((row == bar || row == bar + 1 ? 200 : 0) + (seed >> 16) % 50);
    }
  return b;
}

static uint8_t *idx_labels(int n, size_t *len, uint8_t **labels_out) {
  *len = 8 + (size_t)n;
  uint8_t *b = malloc(*len);
  put_be32(b, 0x801);
  put_be32(b + 4, (uint32_t)n);
  for (int i = 0; i < n; i++)
    b[8 + i] = (uint8_t)((i * 7 + 3) % 10);
  *labels_out = b + 8;
  return b;
}

/* A tiny MNIST in t->dir/data: train files gzipped, test files raw (both paths of
 * the reader). */
static const char *write_tiny_mnist(const tmpdir *t) {
  const char *data = in_dir(t, "data");
  mkdir(data, 0777);
  char path[600];
  size_t n_img, n_lab;
  uint8_t *labels;
  uint8_t *lab = idx_labels(TRAIN_N, &n_lab, &labels);
  uint8_t *img = idx_images(TRAIN_N, labels, &n_img);
  snprintf(path, sizeof path, "%s/train-images-idx3-ubyte.gz", data);
  write_gzip(path, img, n_img);
  snprintf(path, sizeof path, "%s/train-labels-idx1-ubyte.gz", data);
  write_gzip(path, lab, n_lab);
  free(img);
  free(lab);
  lab = idx_labels(TEST_N, &n_lab, &labels);
  img = idx_images(TEST_N, labels, &n_img);
  snprintf(path, sizeof path, "%s/t10k-images-idx3-ubyte", data);
  write_file(path, img, n_img);
  snprintf(path, sizeof path, "%s/t10k-labels-idx1-ubyte", data);
  write_file(path, lab, n_lab);
  free(img);
  free(lab);
  return data;
}

/* The number after `key` in text (e.g. "test accuracy: "), as printed. */
static void number_after(const char *text, const char *key, char *buf, size_t len) {
  const char *p = strstr(text, key);
  if (!p)
    fail_msg("no '%s' in:\n%s", key, text);
  p += strlen(key);
  size_t n = strspn(p, "0123456789.-");
  snprintf(buf, len, "%.*s", (int)n, p);
}

/* ---------------------------------------------------------------- tests -- */
static void test_help_and_bad_flags(void **state) {
  (void)state;
  const char *help[] = {"mnist", "--help", NULL};
  run_result r = run_ex(help, NULL);
  assert_status(r, 0);
  assert_contains(r.out, "--device");
  assert_contains(r.out, "--data");
  assert_contains(r.out, "--save");
  run_result_free(&r);
  const char *seg_help[] = {"segmentation", "-h", NULL};
  r = run_ex(seg_help, NULL);
  assert_status(r, 0);
  assert_contains(r.out, "--eval-size");
  run_result_free(&r);

  const struct {
    const char *args[4];
    const char *message;
  } bad[] = {
      {{"--batch", "0"}, "--batch: expected a value in [1, 65536], got 0"},
      {{"--bogus"}, "unknown flag '--bogus'"},
      {{"--lr", "fast"}, "--lr: expected a number, got 'fast'"},
      {{"--epochs=2x"}, "--epochs: expected an integer, got '2x'"},
      {{"--device", "tpu"}, "--device: expected cpu, cuda or cuda:N, got 'tpu'"},
      {{"--device", "cuda:x"}, "got 'cuda:x'"},
      {{"--seed"}, "--seed needs a value"},
      {{"stray"}, "unexpected argument 'stray'"},
  };
  const char *progs[] = {"mnist", "segmentation"};
  for (size_t p = 0; p < 2; p++)
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      const char *argv[6] = {progs[p]};
      for (int k = 0; k < 4 && bad[i].args[k]; k++)
        argv[1 + k] = bad[i].args[k];
      r = run_ex(argv, NULL);
      assert_status(r, 2);
      assert_contains(r.err, bad[i].message);
      assert_contains(r.err, "--help");
      run_result_free(&r);
    }
}

/* Paths that cannot fit PATH_MAX are refused before any work, with a usage error:
 * --out must leave room for "/interrupted.safetensors" (the longest name written in
 * it), --save/--load/--resume must be shorter than PATH_MAX. */
static void test_path_too_long(void **state) {
  (void)state;
  enum { OUT_MAX = PATH_MAX - (int)sizeof "/interrupted.safetensors" };
  char *out = malloc(OUT_MAX + 2), *file = malloc(PATH_MAX + 1);
  assert_ok(out && file);
  memset(out, 'd', OUT_MAX + 1);
  out[OUT_MAX + 1] = '\0'; /* one byte more than fits */
  memset(file, 'f', PATH_MAX);
  file[PATH_MAX] = '\0';
  char out_msg[128], file_msg[128];
  snprintf(out_msg, sizeof out_msg, "--out: a directory name of %d bytes is too long",
           OUT_MAX + 1);
  snprintf(file_msg, sizeof file_msg, "a file name of %d bytes is too long", PATH_MAX);
  const char *progs[] = {"mnist", "segmentation"},
             *file_flags[] = {"--save", "--load", "--resume"};
  for (size_t p = 0; p < 2; p++) {
    const char *argv[] = {progs[p], "--out", out, NULL};
    run_result r = run_ex(argv, NULL);
    assert_status(r, 2);
    assert_contains(r.err, out_msg);
    assert_contains(r.err, "--help");
    run_result_free(&r);
    for (size_t f = 0; f < 3; f++) {
      const char *argv2[] = {progs[p], file_flags[f], file, NULL};
      r = run_ex(argv2, NULL);
      assert_status(r, 2);
      assert_contains(r.err, file_flags[f]);
      assert_contains(r.err, file_msg);
      run_result_free(&r);
    }
  }
  free(out);
  free(file);
}

static void test_cuda_unavailable(void **state) {
  (void)state;
  if (tg_cuda_is_available())
    skip();
  const char *argv[] = {"segmentation", "--device", "cuda", NULL};
  run_result r = run_ex(argv, NULL);
  assert_status(r, 1);
  assert_contains(r.err, "CUDA is not available");
  run_result_free(&r);
}

static void test_mnist_train_save_load(void **state) {
  tmpdir *t = *state;
  const char *data = write_tiny_mnist(t);
  const char *ckpt = in_dir(t, "mnist.safetensors"), *out = in_dir(t, "out");
  const char *train[] = {"mnist", "--data", data,   "--epochs", "2", "--batch",
                         "16",    "--lr",   "0.05", "--seed",   "3", "--save",
                         ckpt,    "--out",  out,    NULL};
  run_result a = run_ex(train, NULL);
  assert_status(a, 0);
  assert_contains(a.out, "epoch 2/2: train loss");
  assert_contains(a.out, "test accuracy: ");
  assert_true(file_exists(ckpt));
  assert_true(file_exists(in_dir(t, "out/mnist_curves.png")));

  /* Same seed, same numbers. */
  run_result b = run_ex(train, NULL);
  assert_status(b, 0);
  char la[32], lb[32], aa[32], ab[32];
  number_after(a.out, "epoch 2/2: train loss ", la, sizeof la);
  number_after(b.out, "epoch 2/2: train loss ", lb, sizeof lb);
  number_after(a.out, "test accuracy: ", aa, sizeof aa);
  number_after(b.out, "test accuracy: ", ab, sizeof ab);
  assert_string_equal(la, lb);
  assert_string_equal(aa, ab);

  /* The checkpoint gives back the same accuracy without training. */
  const char *eval[] = {"mnist",  "--data", data,    "--epochs", "0",
                        "--load", ckpt,     "--out", out,        NULL};
  run_result c = run_ex(eval, NULL);
  assert_status(c, 0);
  char ac[32];
  number_after(c.out, "test accuracy: ", ac, sizeof ac);
  assert_string_equal(aa, ac);
  run_result_free(&a);
  run_result_free(&b);
  run_result_free(&c);
}

/* Rewrites one file of the tiny dataset and expects exit 1 naming it. */
static void expect_data_error(const tmpdir *t, const char *data, const char *file,
                              const char *fragment) {
  const char *argv[] = {"mnist", "--data",         data, "--epochs", "1",
                        "--out", in_dir(t, "out"), NULL};
  run_result r = run_ex(argv, NULL);
  assert_status(r, 1);
  assert_contains(r.err, file);
  assert_contains(r.err, fragment);
  run_result_free(&r);
  write_tiny_mnist(t); /* restore */
}

static void test_mnist_malformed_data(void **state) {
  tmpdir *t = *state;
  const char *data = write_tiny_mnist(t);
  char path[600];
  size_t len;
  uint8_t *b;

  snprintf(path, sizeof path, "%s/t10k-labels-idx1-ubyte", data);
  b = read_file(path, &len);
  put_be32(b, 0x803);
  write_file(path, b, len);
  expect_data_error(t, data, path, "bad magic number 0x00000803");
  b[0] = 0;
  put_be32(b, 0x801);
  b[8 + 5] = 12;
  write_file(path, b, len);
  expect_data_error(t, data, path, "label 12 at index 5 is out of range");
  write_file(path, b, len - 3);
  expect_data_error(t, data, path, "truncated");
  free(b);

  snprintf(path, sizeof path, "%s/t10k-images-idx3-ubyte", data);
  b = read_file(path, &len);
  write_file(path, b, len - 100);
  expect_data_error(t, data, path, "truncated");
  put_be32(b + 4, TEST_N - 1); /* header declares fewer images than the file holds */
  write_file(path, b, len);
  expect_data_error(t, data, path, "more data than its header declares");
  put_be32(b + 4, TEST_N);
  write_file(path, b, len);
  uint8_t *bigger = calloc(1, len + SIDE * SIDE);
  memcpy(bigger, b, len);
  put_be32(bigger + 4, TEST_N + 1); /* images and labels disagree */
  write_file(path, bigger, 16 + (size_t)(TEST_N + 1) * SIDE * SIDE);
  expect_data_error(t, data, path, "but");
  free(bigger);
  free(b);

  /* A gzip file cut short. */
  snprintf(path, sizeof path, "%s/train-images-idx3-ubyte.gz", data);
  b = read_file(path, &len);
  write_file(path, b, len / 2);
  expect_data_error(t, data, path, "train-images-idx3-ubyte.gz");
  free(b);

  snprintf(path, sizeof path, "%s/train-labels-idx1-ubyte.gz", data);
  remove(path);
  expect_data_error(t, data, "train-labels-idx1-ubyte", "exists");

  const char *missing[] = {"mnist", "--data", in_dir(t, "nowhere"), NULL};
  run_result r = run_ex(missing, NULL);
  assert_status(r, 1);
  assert_contains(r.err, "nowhere/train-images-idx3-ubyte");
  run_result_free(&r);
}

static void test_mnist_sigint_checkpoint(void **state) {
  tmpdir *t = *state;
  const char *data = write_tiny_mnist(t), *out = in_dir(t, "out");
  const char *argv[] = {"mnist",   "--data", data,    "--epochs", "1000000",
                        "--batch", "8",      "--out", out,        NULL};
  run_result r = run_ex(argv, "training:");
  assert_status(r, 0);
  assert_contains(r.out, "interrupted after");
  const char *ckpt = in_dir(t, "out/interrupted.safetensors");
  assert_true(file_exists(ckpt));
  run_result_free(&r);

  const char *eval[] = {"mnist",  "--data", data,    "--epochs", "0",
                        "--load", ckpt,     "--out", out,        NULL};
  r = run_ex(eval, NULL);
  assert_status(r, 0);
  assert_contains(r.out, "test accuracy: ");
  run_result_free(&r);
}

/* The bytes of two files are the same. */
static void assert_same_file(const char *a, const char *b) {
  size_t la, lb;
  uint8_t *pa = read_file(a, &la), *pb = read_file(b, &lb);
  if (la != lb || memcmp(pa, pb, la))
    fail_msg("%s and %s differ", a, b);
  free(pa);
  free(pb);
}

/* A run stopped (--stop-after, as Ctrl-C) and resumed ends with the weights of the
 * run that went straight through, bit for bit: mid-epoch and at an epoch's end. */
static void test_resume(void **state) {
  tmpdir *t = *state;
  const char *data = write_tiny_mnist(t), *out = in_dir(t, "out");
  const char *full = in_dir(t, "full.safetensors"),
             *resumed = in_dir(t, "res.safetensors");
  const char *ckpt = in_dir(t, "out/interrupted.safetensors");
  const char *stops[] = {"4", "6", "9"}; /* 6 steps per epoch */
  for (int prog = 0; prog < 2; prog++) {
    const char *seg[] = {"segmentation",
                         "--train-size",
                         "12",
                         "--eval-size",
                         "4",
                         "--batch",
                         "4",
                         "--epochs",
                         "3",
                         "--threads",
                         "2"};
    const char *mnist[] = {"mnist", "--data", data, "--epochs",  "2", "--batch",
                           "16",    "--seed", "3",  "--threads", "2"};
    const char **base = prog ? seg : mnist;
    const char *argv[20];
    int n = 0;
    for (int k = 0; k < 11; k++)
      argv[n++] = base[k];
    argv[n++] = "--out";
    argv[n++] = out;
    argv[n++] = "--save";
    argv[n + 1] = NULL;
    argv[n] = full;
    run_result r = run_ex(argv, NULL);
    assert_status(r, 0);
    run_result_free(&r);
    for (int k = 0; k < (prog ? 1 : 3); k++) {
      const char *stop = prog ? "5" : stops[k];
      argv[n - 1] = "--stop-after";
      argv[n] = stop;
      r = run_ex(argv, NULL);
      assert_status(r, 0);
      assert_contains(r.out, "stopped after");
      assert_contains(r.out, "--resume");
      assert_true(file_exists(ckpt));
      run_result_free(&r);
      argv[n - 1] = "--resume";
      argv[n] = ckpt;
      argv[n + 1] = "--save";
      argv[n + 2] = resumed;
      argv[n + 3] = NULL;
      r = run_ex(argv, NULL);
      assert_status(r, 0);
      assert_contains(r.out, "resumed from");
      run_result_free(&r);
      assert_same_file(full, resumed);
      argv[n - 1] = "--save";
      argv[n] = full;
      argv[n + 1] = NULL;
    }
  }
  /* Other flags than the run that wrote it (the segmentation one): refused, naming
   * the difference. */
  const char *other[] = {"segmentation",
                         "--train-size",
                         "12",
                         "--eval-size",
                         "4",
                         "--batch",
                         "4",
                         "--epochs",
                         "4",
                         "--out",
                         out,
                         "--resume",
                         ckpt,
                         NULL};
  run_result r = run_ex(other, NULL);
  assert_status(r, 1);
  assert_contains(r.err, "it was written by a run of total_steps 9, this run has 12");
  run_result_free(&r);
  other[8] = "3";
  other[9] = "--seed";
  other[10] = "4";
  other[11] = "--resume";
  other[12] = ckpt;
  r = run_ex(other, NULL);
  assert_status(r, 1);
  assert_contains(r.err, "it was written by a run of seed 0, this run has 4");
  run_result_free(&r);
}

static bool is_png(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return false;
  uint8_t sig[8] = {0};
  size_t n = fread(sig, 1, 8, f);
  fclose(f);
  return n == 8 && !memcmp(sig, "\x89PNG\r\n\x1a\n", 8);
}

static void test_segmentation_few_steps(void **state) {
  tmpdir *t = *state;
  const char *out = in_dir(t, "seg"), *ckpt = in_dir(t, "seg.safetensors");
  const char *argv[] = {"segmentation",
                        "--train-size",
                        "12",
                        "--eval-size",
                        "6",
                        "--batch",
                        "4",
                        "--epochs",
                        "2",
                        "--steps",
                        "4",
                        "--out",
                        out,
                        "--save",
                        ckpt,
                        NULL};
  run_result r = run_ex(argv, NULL);
  assert_status(r, 0);
  assert_contains(r.out, "held-out IoU: background ");
  assert_contains(r.out, "triangle");
  assert_contains(r.out, "held-out mIoU: ");
  assert_contains(r.out, "after 4 steps");
  assert_true(is_png(in_dir(t, "seg/samples.png")));
  assert_true(is_png(in_dir(t, "seg/curves.png")));
  assert_true(file_exists(ckpt));
  char m1[32], m2[32];
  number_after(r.out, "held-out mIoU: ", m1, sizeof m1);
  run_result_free(&r);

  /* Loading the checkpoint reproduces the held-out numbers. */
  const char *eval[] = {"segmentation",
                        "--eval-size",
                        "6",
                        "--train-size",
                        "4",
                        "--epochs",
                        "0",
                        "--load",
                        ckpt,
                        "--out",
                        out,
                        NULL};
  r = run_ex(eval, NULL);
  assert_status(r, 0);
  number_after(r.out, "held-out mIoU: ", m2, sizeof m2);
  assert_string_equal(m1, m2);
  run_result_free(&r);

  /* A checkpoint of another network is refused with a message, exit 1. */
  const char *data = write_tiny_mnist(t);
  const char *wrong[] = {"mnist", "--data", data, "--load", ckpt, NULL};
  r = run_ex(wrong, NULL);
  assert_status(r, 1);
  assert_contains(r.err, "cannot load");
  run_result_free(&r);
}

static void test_segmentation_sigint_save(void **state) {
  tmpdir *t = *state;
  const char *ckpt = in_dir(t, "ckpt/seg.safetensors");
  const char *argv[] = {"segmentation",
                        "--train-size",
                        "8",
                        "--eval-size",
                        "4",
                        "--batch",
                        "4",
                        "--epochs",
                        "1000000",
                        "--out",
                        in_dir(t, "seg"),
                        "--save",
                        ckpt,
                        NULL};
  run_result r = run_ex(argv, "training:");
  assert_status(r, 0);
  assert_contains(r.out, "interrupted after");
  assert_true(file_exists(ckpt));
  run_result_free(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_help_and_bad_flags),
      cmocka_unit_test(test_path_too_long),
      cmocka_unit_test(test_cuda_unavailable),
      cmocka_unit_test_setup_teardown(test_mnist_train_save_load, tmpdir_setup,
                                      tmpdir_teardown),
      cmocka_unit_test_setup_teardown(test_mnist_malformed_data, tmpdir_setup,
                                      tmpdir_teardown),
      cmocka_unit_test_setup_teardown(test_mnist_sigint_checkpoint, tmpdir_setup,
                                      tmpdir_teardown),
      cmocka_unit_test_setup_teardown(test_segmentation_few_steps, tmpdir_setup,
                                      tmpdir_teardown),
      cmocka_unit_test_setup_teardown(test_resume, tmpdir_setup, tmpdir_teardown),
      cmocka_unit_test_setup_teardown(test_segmentation_sigint_save, tmpdir_setup,
                                      tmpdir_teardown),
  };
  return cmocka_run_group_tests(tests, test_setup, NULL);
}
