#include "common.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <png.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ flags -- */

static const char *prog_name = "example";

int ex_common_flags(ex_flag *flags, int n, ex_common_options *o) {
  const ex_flag common[] = {
      {"device", EX_FLAG_STRING, &o->device_name, 0, 0, "cpu|cuda[:N]",
       "where tensors live"},
      {"threads", EX_FLAG_INT, &o->threads, 0, 4096, "N",
       "CPU threads (0 = TG_NUM_THREADS or all cores)"},
      {"epochs", EX_FLAG_INT, &o->epochs, 0, 1e6, "N", "passes over the training set"},
      {"steps", EX_FLAG_I64, &o->steps, 0, 1e15, "N",
       "stop after N training steps (0 = no limit)"},
      {"batch", EX_FLAG_INT, &o->batch, 1, 65536, "N",
       "images per step (over all ranks under mpirun)"},
      {"lr", EX_FLAG_DOUBLE, &o->lr, 0, 100, "X", "peak learning rate of SGD"},
      {"seed", EX_FLAG_I64, &o->seed, 0, 9007199254740992.0, "N",
       "random seed (same seed, device and threads: same numbers)"},
      {"save", EX_FLAG_STRING, &o->save, 0, 0, "FILE",
       "write the weights there (safetensors) at the end"},
      {"load", EX_FLAG_STRING, &o->load, 0, 0, "FILE",
       "start from these weights (safetensors, PyTorch state_dict names)"},
      {"resume", EX_FLAG_STRING, &o->resume, 0, 0, "FILE",
       "continue the run that wrote this checkpoint (same flags)"},
      {"stop-after", EX_FLAG_I64, &o->stop_after, 0, 1e15, "N",
       "stop after N steps as Ctrl-C does, with a checkpoint to --resume"},
      {"out", EX_FLAG_STRING, &o->out, 0, 0, "DIR",
       "pictures and the Ctrl-C checkpoint go here"},
  };
  int k = (int)(sizeof common / sizeof common[0]);
  memcpy(flags + n, common, sizeof common);
  return n + k;
}

static void flag_default(const ex_flag *f, char *buf, size_t len) {
  buf[0] = '\0';
  switch (f->kind) {
  case EX_FLAG_INT:
    snprintf(buf, len, "%d", *(int *)f->value);
    break;
  case EX_FLAG_I64:
    snprintf(buf, len, "%lld", (long long)*(int64_t *)f->value);
    break;
  case EX_FLAG_DOUBLE:
    snprintf(buf, len, "%g", *(double *)f->value);
    break;
  case EX_FLAG_STRING:
    if (*(const char **)f->value)
      snprintf(buf, len, "%s", *(const char **)f->value);
    break;
  }
}

static void print_help(const char *summary, const ex_flag *flags, int n) {
  printf("Usage: %s [FLAGS]\n%s\n\nFlags:\n", prog_name, summary);
  for (int i = 0; i < n; i++) {
    char head[64], def[256];
    snprintf(head, sizeof head, "--%s %s", flags[i].name, flags[i].metavar);
    flag_default(&flags[i], def, sizeof def);
    printf("  %-24s %s", head, flags[i].help);
    if (def[0])
      printf(" (default: %s)", def);
    printf("\n");
  }
  printf("  %-24s %s\n", "-h, --help", "show this help");
  printf("\nCtrl-C stops after the current step and writes a checkpoint that --resume\n"
         "continues bit for bit (with the same flags and thread count).\n"
         "Exit status: 0 done, 1 runtime error, 2 bad flags.\n");
}

static int usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", prog_name);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nTry '%s --help'.\n", prog_name);
  return -1;
}

static int set_flag(const ex_flag *f, const char *arg) {
  char *end;
  errno = 0;
  if (f->kind == EX_FLAG_STRING) {
    if (!*arg)
      return usage_error("--%s: expected a %s, got an empty string", f->name, f->metavar);
    *(const char **)f->value = arg;
    return 0;
  }
  double v;
  if (f->kind == EX_FLAG_DOUBLE) {
    v = strtod(arg, &end);
    if (!*arg || *end || errno || !isfinite(v))
      return usage_error("--%s: expected a number, got '%s'", f->name, arg);
  } else {
    long long iv = strtoll(arg, &end, 10);
    if (!*arg || *end || errno)
      return usage_error("--%s: expected an integer, got '%s'", f->name, arg);
    v = (double)iv;
  }
  if (v < f->lo || v > f->hi)
    return usage_error("--%s: expected a value in [%g, %g], got %s", f->name, f->lo,
                       f->hi, arg);
  if (f->kind == EX_FLAG_INT)
    *(int *)f->value = (int)v;
  else if (f->kind == EX_FLAG_I64)
    *(int64_t *)f->value = (int64_t)strtoll(arg, NULL, 10);
  else
    *(double *)f->value = v;
  return 0;
}

int ex_parse_flags(int argc, char **argv, const char *summary, const ex_flag *flags,
                   int n) {
  if (argc > 0 && argv[0]) {
    const char *slash = strrchr(argv[0], '/');
    prog_name = slash ? slash + 1 : argv[0];
  }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      print_help(summary, flags, n);
      return 1;
    }
    if (strncmp(a, "--", 2) != 0)
      return usage_error("unexpected argument '%s' (flags start with --)", a);
    const char *name = a + 2, *eq = strchr(name, '=');
    size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
    const ex_flag *f = NULL;
    for (int k = 0; k < n && !f; k++)
      if (strlen(flags[k].name) == name_len && !strncmp(flags[k].name, name, name_len))
        f = &flags[k];
    if (!f)
      return usage_error("unknown flag '--%.*s'", (int)name_len, name);
    const char *value = eq ? eq + 1 : NULL;
    if (!value) {
      if (i + 1 >= argc)
        return usage_error("--%s needs a value (%s)", f->name, f->metavar);
      value = argv[++i];
    }
    if (set_flag(f, value) < 0)
      return -1;
  }
  return 0;
}

int ex_exit(int status) {
  if ((fflush(stdout) != 0 || ferror(stdout)) && status == 0) {
    fprintf(stderr, "error: cannot write the standard output: %s\n", strerror(errno));
    return EX_EXIT_FAILURE;
  }
  return status;
}

/* This process's place among the mpirun ranks (0 of 1 without mpirun). */
static int ex_rank, ex_world = 1;

static int join_ranks(ex_common_options *o) {
  if (tg_dist_init() < 0) {
    fprintf(stderr, "error: %s\n", tg_last_error());
    return EX_EXIT_FAILURE;
  }
  o->rank = ex_rank = tg_dist_rank();
  o->world = ex_world = tg_dist_world_size();
  if (o->batch % o->world) {
    usage_error("--batch %d is the global batch and must be a multiple of the %d ranks",
                o->batch, o->world);
    return EX_EXIT_USAGE;
  }
  if (ex_rank > 0 && !freopen("/dev/null", "w", stdout)) {
    fprintf(stderr, "error: rank %d cannot silence stdout: %s\n", ex_rank,
            strerror(errno));
    return EX_EXIT_FAILURE;
  }
  return 0;
}

int ex_dist_end(int status) {
  if (status == 0 && tg_dist_finalize() < 0) {
    fprintf(stderr, "error: %s\n", tg_last_error());
    return EX_EXIT_FAILURE;
  }
  return status;
}

double ex_dist_mean(double v) {
  if (ex_world == 1)
    return v;
  tg_tensor *t = tg_scalar(v, TG_F64, TG_CPU);
  double mean = t && tg_dist_all_reduce(t, TG_DIST_AVERAGE) == 0 ? tg_item(t) : NAN;
  tg_tensor_free(t);
  return mean;
}

/* Output paths are built in PATH_MAX buffers: names that cannot fit are refused
 * before any work, rather than cut short (or a file left unwritten) at the end of a
 * long run. The longest name written in --out is the Ctrl-C checkpoint's. */
static int check_path_lengths(const ex_common_options *o) {
  static const char longest[] = "/interrupted.safetensors";
  if (o->out && strlen(o->out) + sizeof longest > PATH_MAX)
    return usage_error("--out: a directory name of %zu bytes is too long: the files "
                       "written in it (such as %s) need paths under PATH_MAX (%d bytes)",
                       strlen(o->out), longest + 1, PATH_MAX);
  const struct {
    const char *flag, *path;
  } files[] = {{"save", o->save}, {"load", o->load}, {"resume", o->resume}};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
    if (files[i].path && strlen(files[i].path) >= PATH_MAX)
      return usage_error("--%s: a file name of %zu bytes is too long (paths must be "
                         "under PATH_MAX, %d bytes)",
                         files[i].flag, strlen(files[i].path), PATH_MAX);
  return 0;
}

int ex_common_apply(ex_common_options *o) {
  if (check_path_lengths(o) < 0)
    return EX_EXIT_USAGE;
  int rc = join_ranks(o);
  if (rc != 0)
    return rc;
  const char *d = o->device_name ? o->device_name : "cpu";
  if (!strcmp(d, "cpu")) {
    o->device = TG_CPU;
  } else if (!strncmp(d, "cuda", 4) && (d[4] == '\0' || d[4] == ':')) {
    int index = tg_cuda_device_count() > 0 ? o->rank % tg_cuda_device_count() : 0;
    if (d[4] == ':') {
      char *end;
      long v = strtol(d + 5, &end, 10);
      if (!d[5] || *end || v < 0 || v > 1024) {
        usage_error("--device: expected cpu, cuda or cuda:N, got '%s'", d);
        return EX_EXIT_USAGE;
      }
      index = (int)v;
    }
    if (!tg_cuda_is_available()) {
      fprintf(stderr,
              "error: --device %s: CUDA is not available (tapegrad was built without "
              "CUDA kernels, or no GPU is visible); use --device cpu\n",
              d);
      return EX_EXIT_FAILURE;
    }
    if (index >= tg_cuda_device_count()) {
      fprintf(stderr, "error: --device %s: only %d CUDA device(s) visible\n", d,
              tg_cuda_device_count());
      return EX_EXIT_FAILURE;
    }
    o->device = tg_cuda(index);
  } else {
    usage_error("--device: expected cpu, cuda or cuda:N, got '%s'", d);
    return EX_EXIT_USAGE;
  }
  if (o->threads > 0 && tg_set_num_threads(o->threads) < 0) {
    fprintf(stderr, "error: %s\n", tg_last_error());
    return EX_EXIT_FAILURE;
  }
  tg_manual_seed((uint64_t)o->seed);
  return 0;
}

/* ---------------------------------------------------------------- progress -- */

double ex_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void ex_progress_init(ex_progress *p, int64_t total_steps, int64_t log_every) {
  memset(p, 0, sizeof *p);
  p->tty = isatty(STDOUT_FILENO);
  p->total_steps = total_steps;
  p->log_every = log_every > 0 ? log_every : 1;
  p->t_start = ex_now();
}

static void format_duration(double s, char *buf, size_t len) {
  if (!isfinite(s) || s < 0)
    s = 0;
  long t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, len, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else
    snprintf(buf, len, "%ld:%02ld", t / 60, t % 60);
}

static int terminal_width(void) {
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20)
    return ws.ws_col;
  return 80;
}

void ex_progress_step(ex_progress *p, int epoch, int epochs, int64_t step_in_epoch,
                      int64_t steps_per_epoch, int64_t images, const char *metrics) {
  p->steps_done++;
  p->images_done += images;
  double t = ex_now(), elapsed = t - p->t_start;
  double rate = elapsed > 0 ? (double)p->images_done / elapsed : 0;
  char eta[32];
  format_duration((double)(p->total_steps - p->steps_done) * elapsed /
                      (double)p->steps_done,
                  eta, sizeof eta);
  bool epoch_end = step_in_epoch == steps_per_epoch || p->steps_done == p->total_steps;
  if (p->tty) {
    if (t - p->t_drawn < 0.1 && !epoch_end)
      return;
    p->t_drawn = t;
    enum { BAR = 20 };
    char bar[BAR + 1];
    int filled = (int)(BAR * step_in_epoch / (steps_per_epoch ? steps_per_epoch : 1));
    for (int i = 0; i < BAR; i++)
      bar[i] = i < filled ? '#' : '.';
    bar[BAR] = '\0';
    char line[512];
    snprintf(line, sizeof line, "epoch %d/%d [%s] %lld/%lld  %s  %.0f img/s  ETA %s",
             epoch, epochs, bar, (long long)step_in_epoch, (long long)steps_per_epoch,
             metrics, rate, eta);
    int width = terminal_width() - 1;
    if ((int)strlen(line) > width)
      line[width] = '\0';
    printf("\r\033[K%s", line);
    p->bar_visible = true;
    if (epoch_end) {
      printf("\n");
      p->bar_visible = false;
    }
    fflush(stdout);
  } else if (step_in_epoch % p->log_every == 0 || epoch_end) {
    printf("epoch %d/%d step %lld/%lld  %s  %.0f img/s  ETA %s\n", epoch, epochs,
           (long long)step_in_epoch, (long long)steps_per_epoch, metrics, rate, eta);
    fflush(stdout);
  }
}

void ex_progress_print(ex_progress *p, const char *fmt, ...) {
  if (p && p->tty && p->bar_visible) {
    printf("\r\033[K");
    p->bar_visible = false;
    p->t_drawn = 0;
  }
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
}

void ex_progress_finish(ex_progress *p) {
  if (p->tty && p->bar_visible) {
    printf("\n");
    p->bar_visible = false;
  }
  fflush(stdout);
}

/* ------------------------------------------------------------------ random -- */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t ex_hash2(uint64_t a, uint64_t b) {
  uint64_t x = a;
  uint64_t h = splitmix64(&x);
  x = h ^ b;
  return splitmix64(&x);
}

void ex_rng_seed(ex_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++)
    r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ex_rng_u64(ex_rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double ex_rng_uniform(ex_rng *r) { return (double)(ex_rng_u64(r) >> 11) * 0x1p-53; }

double ex_rng_range(ex_rng *r, double lo, double hi) {
  return lo + (hi - lo) * ex_rng_uniform(r);
}

int64_t ex_rng_below(ex_rng *r, int64_t n) {
  return n <= 1 ? 0 : (int64_t)(ex_rng_uniform(r) * (double)n) % n;
}

double ex_rng_normal(ex_rng *r) {
  double u = 1.0 - ex_rng_uniform(r), v = ex_rng_uniform(r);
  return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}

void ex_rng_shuffle(ex_rng *r, int64_t *a, int64_t n) {
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = ex_rng_below(r, i + 1), t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

/* ------------------------------------------------------------------ Ctrl-C -- */

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
  static const char msg[] =
      "\ninterrupted: stopping after this step (Ctrl-C again to kill)\n";
  ssize_t rc = write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)rc;
}

void ex_sigint_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART | SA_RESETHAND;
  sigaction(SIGINT, &sa, NULL);
}

bool ex_interrupted(void) {
  static bool stop; /* agreed by every rank: stays set */
  if (!stop && ex_world > 1)
    stop = ex_dist_mean(interrupted) != 0; /* NAN (failed exchange) stops too */
  return stop || (ex_world == 1 && interrupted);
}

/* Creates the directory that file path is in (path is shorter than PATH_MAX: see
 * check_path_lengths). 0 or -1, having said why. */
static int make_parent_dir(const char *path) {
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash || slash == dir)
    return 0;
  *slash = '\0';
  return ex_mkdir_p(dir);
}

int ex_save_checkpoint(const tg_varstore *vs, const char *path) {
  if (ex_rank > 0) /* rank 0 holds the same weights and writes them */
    return 0;
  if (make_parent_dir(path) < 0)
    return -1;
  if (tg_varstore_save(vs, path) < 0) {
    fprintf(stderr, "error: cannot save checkpoint %s: %s\n", path, tg_last_error());
    return -1;
  }
  printf("saved checkpoint %s\n", path);
  fflush(stdout);
  return 0;
}

/* The metadata a resume checkpoint records and a resumed run must match. */
static void run_keys(const ex_training *t, const ex_common_options *o, char vals[3][32]) {
  snprintf(vals[0], 32, "%lld", (long long)t->plan.total);
  snprintf(vals[1], 32, "%d", o->batch);
  snprintf(vals[2], 32, "%lld", (long long)o->seed);
}
static const char *const run_key_names[3] = {"total_steps", "batch", "seed"};

int ex_save_interrupted(const ex_training *t, const tg_varstore *vs,
                        const tg_batch_iter *batches, const ex_common_options *o) {
  char path[PATH_MAX];
  if (o->save)
    snprintf(path, sizeof path, "%s", o->save);
  else
    snprintf(path, sizeof path, "%s/interrupted.safetensors", o->out);
  printf("%s after %lld steps\n", ex_interrupted() ? "interrupted" : "stopped",
         (long long)t->step);
  if (ex_rank > 0) /* rank 0 saves the state every rank shares */
    return 0;
  if (make_parent_dir(path) < 0)
    return EX_EXIT_FAILURE;
  tg_tensor_dict *d = tg_tensor_dict_new();
  uint64_t rng[4];
  tg_random_get_state(rng);
  tg_tensor *r = tg_tensor_from_data(rng, TG_SHAPE(4), TG_I64, TG_CPU);
  char vals[3][32], step[32];
  run_keys(t, o, vals);
  snprintf(step, sizeof step, "%lld", (long long)t->step);
  int rc = d && r ? tg_tensor_dict_set_metadata(d, "step", step) : -1;
  for (int k = 0; k < 3 && rc == 0; k++)
    rc = tg_tensor_dict_set_metadata(d, run_key_names[k], vals[k]);
  if (rc == 0)
    rc = tg_batch_iter_state_dict(batches, d, "train.data.");
  if (rc == 0)
    rc = tg_varstore_state_dict(vs, d, NULL);
  if (rc == 0)
    rc = tg_optimizer_state_dict(t->opt, d, "train.optimizer.");
  if (rc == 0 && t->sched)
    rc = tg_scheduler_state_dict(t->sched, d, "train.scheduler.");
  if (rc == 0)
    rc = tg_tensor_dict_set(d, "train.rng", r);
  if (rc == 0)
    rc = tg_save_tensors(d, path);
  tg_tensor_free(r);
  tg_tensor_dict_free(d);
  if (rc < 0) {
    fprintf(stderr, "error: cannot save checkpoint %s: %s\n", path, tg_last_error());
    return EX_EXIT_FAILURE;
  }
  printf("saved checkpoint %s (continue with --resume %s)\n", path, path);
  fflush(stdout);
  return 0;
}

/* ------------------------------------------------------------------- files -- */

int ex_mkdir_p(const char *dir) {
  char buf[PATH_MAX];
  size_t len = strlen(dir);
  if (len == 0 || len >= sizeof buf) {
    if (len == 0)
      fprintf(stderr, "error: cannot create a directory with an empty name\n");
    else
      fprintf(stderr,
              "error: a directory name of %zu bytes is too long (PATH_MAX is %d)\n", len,
              PATH_MAX);
    return -1;
  }
  memcpy(buf, dir, len + 1);
  for (size_t i = 1; i <= len; i++) {
    if (buf[i] != '/' && buf[i] != '\0')
      continue;
    char c = buf[i];
    buf[i] = '\0';
    if (mkdir(buf, 0777) < 0 && errno != EEXIST) {
      fprintf(stderr, "error: cannot create directory %s: %s\n", buf, strerror(errno));
      return -1;
    }
    buf[i] = c;
  }
  struct stat st;
  if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "error: %s is not a directory\n", dir);
    return -1;
  }
  return 0;
}

/* ---------------------------------------------------------------- pictures -- */

int ex_canvas_init(ex_canvas *c, int w, int h, ex_color fill) {
  c->w = w;
  c->h = h;
  c->rgb = malloc((size_t)w * (size_t)h * 3);
  if (!c->rgb)
    return -1;
  ex_canvas_rect(c, 0, 0, w, h, fill);
  return 0;
}

void ex_canvas_free(ex_canvas *c) {
  free(c->rgb);
  c->rgb = NULL;
}

static void put(ex_canvas *c, int x, int y, ex_color col) {
  if (x < 0 || y < 0 || x >= c->w || y >= c->h)
    return;
  uint8_t *p = c->rgb + ((size_t)y * (size_t)c->w + (size_t)x) * 3;
  p[0] = col.r;
  p[1] = col.g;
  p[2] = col.b;
}

void ex_canvas_rect(ex_canvas *c, int x, int y, int w, int h, ex_color col) {
  for (int j = y; j < y + h; j++)
    for (int i = x; i < x + w; i++)
      put(c, i, j, col);
}

/* Two pixels wide: plain enough to read, no anti-aliasing needed. */
void ex_canvas_line(ex_canvas *c, double x0, double y0, double x1, double y1,
                    ex_color col) {
  double dx = x1 - x0, dy = y1 - y0;
  int n = (int)(2 * fmax(fabs(dx), fabs(dy))) + 1;
  for (int k = 0; k <= n; k++) {
    double t = (double)k / n;
    int x = (int)lround(x0 + t * dx), y = (int)lround(y0 + t * dy);
    put(c, x, y, col);
    put(c, x + 1, y, col);
    put(c, x, y + 1, col);
    put(c, x + 1, y + 1, col);
  }
}

/* 5x7 glyphs, one byte per row, bit 4 is the leftmost pixel. */
static const struct {
  char ch;
  uint8_t rows[7];
} font[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}},
    {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}},
    {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}},
    {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}},
    {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}},
    {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'A', {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
    {'B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}},
    {'C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}},
    {'D', {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}},
    {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}},
    {'F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}},
    {'G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}},
    {'H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
    {'I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}},
    {'K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}},
    {'L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}},
    {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}},
    {'N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}},
    {'O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}},
    {'P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}},
    {'Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}},
    {'R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}},
    {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}},
    {'T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
    {'U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}},
    {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}},
    {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}},
    {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}},
    {'Y', {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}},
    {'Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}},
    {',', {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}},
    {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}},
    {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}},
    {'=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00}},
    {':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}},
    {'/', {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00}},
    {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}},
    {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}},
    {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
    {'|', {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
    {'_', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F}},
};

static const uint8_t *glyph(char ch) {
  if (ch >= 'a' && ch <= 'z')
    ch = (char)(ch - 'a' + 'A');
  for (size_t i = 0; i < sizeof font / sizeof font[0]; i++)
    if (font[i].ch == ch)
      return font[i].rows;
  return NULL; /* space and anything unknown: blank */
}

int ex_text_width(const char *text, int scale) {
  int n = (int)strlen(text);
  return n ? (6 * n - 1) * scale : 0;
}

int ex_canvas_text(ex_canvas *c, int x, int y, int scale, ex_color col,
                   const char *text) {
  int x0 = x;
  for (const char *s = text; *s; s++, x += 6 * scale) {
    const uint8_t *g = glyph(*s);
    if (!g)
      continue;
    for (int r = 0; r < 7; r++)
      for (int b = 0; b < 5; b++)
        if (g[r] & (0x10 >> b))
          ex_canvas_rect(c, x + b * scale, y + r * scale, scale, scale, col);
  }
  return x - x0;
}

/* libpng's output, gathered in memory so that the file is written atomically. */
typedef struct {
  uint8_t *data;
  size_t len, cap;
  bool oom;
} png_buffer;

static void png_buffer_write(png_structp png, png_bytep data, png_size_t n) {
  png_buffer *b = png_get_io_ptr(png);
  if (b->oom)
    return;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? 2 * b->cap : 1 << 16;
    while (cap < b->len + n)
      cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->data = p;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, n);
  b->len += n;
}

static void png_buffer_flush(png_structp png) { (void)png; }

int ex_png_write(const char *path, const ex_canvas *c) {
  if (ex_rank > 0)
    return 0;
  /* On the heap: a local changed between setjmp and longjmp would be indeterminate. */
  png_buffer *buf = calloc(1, sizeof *buf);
  png_structp png =
      buf ? png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL) : NULL;
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    if (buf)
      free(buf->data);
    free(buf);
    fprintf(stderr, "error: cannot write %s: libpng failed\n", path);
    return -1;
  }
  png_set_write_fn(png, buf, png_buffer_write, png_buffer_flush);
  png_set_IHDR(png, info, (png_uint_32)c->w, (png_uint_32)c->h, 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < c->h; y++)
    png_write_row(png, c->rgb + (size_t)y * (size_t)c->w * 3);
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  int rc = buf->oom ? -1 : tg_file_write_atomic(path, buf->data, buf->len, "--out");
  if (rc < 0 && buf->oom)
    fprintf(stderr, "error: cannot write %s: out of memory\n", path);
  else if (rc < 0)
    fprintf(stderr, "error: %s\n", tg_last_error());
  free(buf->data);
  free(buf);
  return rc;
}

void ex_curve_add(ex_curve *c, double x, double y) {
  if (c->n == c->cap) {
    int64_t cap = c->cap ? 2 * c->cap : 256;
    double *xs = realloc(c->x, (size_t)cap * sizeof *xs);
    if (xs)
      c->x = xs;
    double *ys = xs ? realloc(c->y, (size_t)cap * sizeof *ys) : NULL;
    if (!ys)
      return;
    c->y = ys;
    c->cap = cap;
  }
  c->x[c->n] = x;
  c->y[c->n++] = y;
}

void ex_curve_free(ex_curve *c) {
  free(c->x);
  free(c->y);
  memset(c, 0, sizeof *c);
}

/* Tick spacing of 1, 2 or 5 times a power of ten giving about `want` ticks. */
static double nice_step(double range, int want) {
  double raw = range / want, mag = pow(10, floor(log10(raw))), r = raw / mag;
  return (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * mag;
}

static void tick_label(double v, double step, char *buf, size_t len) {
  int decimals = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
  if (fabs(v) < step * 1e-6)
    v = 0;
  snprintf(buf, len, "%.*f", decimals, v);
}

void ex_plot(ex_canvas *c, int x, int y, int w, int h, const char *title,
             const char *x_label, const ex_series *series, int n_series, double y_lo,
             double y_hi) {
  const ex_color white = {255, 255, 255}, black = {30, 30, 30}, grid = {225, 225, 225},
                 grey = {90, 90, 90};
  ex_canvas_rect(c, x, y, w, h, white);
  double x_lo = INFINITY, x_hi = -INFINITY, d_lo = INFINITY, d_hi = -INFINITY;
  for (int s = 0; s < n_series; s++)
    for (int64_t i = 0; i < series[s].n; i++) {
      x_lo = fmin(x_lo, series[s].x[i]);
      x_hi = fmax(x_hi, series[s].x[i]);
      if (isfinite(series[s].y[i])) {
        d_lo = fmin(d_lo, series[s].y[i]);
        d_hi = fmax(d_hi, series[s].y[i]);
      }
    }
  if (!(x_lo < x_hi)) {
    x_lo = isfinite(x_lo) ? x_lo - 1 : 0;
    x_hi = x_lo + 2;
  }
  if (y_lo >= y_hi) {
    y_lo = isfinite(d_lo) ? d_lo : 0;
    y_hi = isfinite(d_hi) ? d_hi : 1;
    double pad = y_hi > y_lo ? 0.05 * (y_hi - y_lo) : 0.5;
    y_lo -= pad;
    y_hi += pad;
  }
  /* Plot area inside the frame: room for tick labels left and below. */
  int left = x + 62, right = x + w - 16, top = y + 34, bottom = y + h - 44;
  int title_w = ex_text_width(title, 2);
  ex_canvas_text(c, x + (w - title_w) / 2, y + 8, 2, black, title);
  double xs = (right - left) / (x_hi - x_lo), ys = (bottom - top) / (y_hi - y_lo);
  double ystep = nice_step(y_hi - y_lo, 5), xstep = nice_step(x_hi - x_lo, 6);
  char buf[64];
  for (double v = ceil(y_lo / ystep) * ystep; v <= y_hi + 1e-9 * ystep; v += ystep) {
    int py = (int)lround(bottom - (v - y_lo) * ys);
    ex_canvas_rect(c, left, py, right - left, 1, grid);
    tick_label(v, ystep, buf, sizeof buf);
    ex_canvas_text(c, left - 6 - ex_text_width(buf, 1), py - 3, 1, grey, buf);
  }
  for (double v = ceil(x_lo / xstep) * xstep; v <= x_hi + 1e-9 * xstep; v += xstep) {
    int px = (int)lround(left + (v - x_lo) * xs);
    ex_canvas_rect(c, px, top, 1, bottom - top, grid);
    tick_label(v, xstep, buf, sizeof buf);
    ex_canvas_text(c, px - ex_text_width(buf, 1) / 2, bottom + 6, 1, grey, buf);
  }
  ex_canvas_rect(c, left, top, 1, bottom - top + 1, black);
  ex_canvas_rect(c, left, bottom, right - left + 1, 1, black);
  ex_canvas_text(c, left + (right - left - ex_text_width(x_label, 1)) / 2, bottom + 22, 1,
                 black, x_label);
  /* Legend in the right corner (top or bottom) that hides fewer data points. */
  int legend_w = 0, legend_h = 12 * n_series + 4;
  for (int s = 0; s < n_series; s++)
    if (ex_text_width(series[s].label, 1) + 30 > legend_w)
      legend_w = ex_text_width(series[s].label, 1) + 30;
  int64_t hidden_top = 0, hidden_bottom = 0;
  for (int s = 0; s < n_series; s++)
    for (int64_t i = 0; i < series[s].n; i++) {
      double px = left + (series[s].x[i] - x_lo) * xs;
      double py = bottom - (series[s].y[i] - y_lo) * ys;
      if (px < right - legend_w - 8)
        continue;
      hidden_top += py < top + legend_h + 8;
      hidden_bottom += py > bottom - legend_h - 8;
    }
  int legend_y = hidden_bottom < hidden_top ? bottom - legend_h - 4 : top + 4;
  for (int s = 0; s < n_series; s++) {
    const ex_series *se = &series[s];
    double px_prev = 0, py_prev = 0;
    bool have_prev = false;
    for (int64_t i = 0; i < se->n; i++) {
      if (!isfinite(se->y[i])) {
        have_prev = false;
        continue;
      }
      double yv = fmin(fmax(se->y[i], y_lo), y_hi);
      double px = left + (se->x[i] - x_lo) * xs, py = bottom - (yv - y_lo) * ys;
      if (have_prev)
        ex_canvas_line(c, px_prev, py_prev, px, py, se->color);
      if (se->markers)
        ex_canvas_rect(c, (int)px - 2, (int)py - 2, 5, 5, se->color);
      px_prev = px;
      py_prev = py;
      have_prev = true;
    }
  }
  ex_canvas_rect(c, right - legend_w - 4, legend_y, legend_w, legend_h, white);
  for (int s = 0; s < n_series; s++) {
    int ly = legend_y + 4 + 12 * s, lx = right - legend_w + 20;
    ex_canvas_rect(c, lx - 18, ly + 2, 12, 3, series[s].color);
    ex_canvas_text(c, lx, ly, 1, black, series[s].label);
  }
}

/* ------------------------------------------------------------ training setup -- */

/* Loads --resume into a training state just made for the same flags. Returns 0, or
 * -1 after printing the error. */
static int resume(ex_training *t, tg_varstore *vs, const ex_common_options *o,
                  tg_batch_iter *batches) {
  tg_tensor_dict *d = tg_load_tensors(o->resume, NULL);
  if (!d) {
    fprintf(stderr, "error: cannot resume: %s\n", tg_last_error());
    return -1;
  }
  int rc = 0;
  char vals[3][32];
  run_keys(t, o, vals);
  for (int k = 0; k < 3 && rc == 0; k++) {
    const char *v = tg_tensor_dict_metadata(d, run_key_names[k]);
    if (v && !strcmp(v, vals[k]))
      continue;
    fprintf(stderr,
            "error: cannot resume from %s: it was written by a run of %s %s, this run "
            "has %s (resume with that run's --epochs/--steps, --batch and --seed)\n",
            o->resume, run_key_names[k], v ? v : "(none)", vals[k]);
    rc = -1;
  }
  tg_load_options lo = tg_load_options_default();
  lo.strict_dtype = true;
  lo.exclude_prefix = "train.";
  const char *step = tg_tensor_dict_metadata(d, "step");
  const tg_tensor *rng = tg_tensor_dict_get(d, "train.rng");
  if (rc == 0 && (!step || !rng || tg_numel(rng) != 4)) {
    fprintf(stderr, "error: %s is not a resume checkpoint (no step or generator state)\n",
            o->resume);
    rc = -1;
  }
  bool checked = rc < 0; /* the errors below come from the library */
  if (rc == 0)
    rc = tg_varstore_load_dict(vs, d, &lo, NULL);
  if (rc == 0)
    rc = tg_optimizer_load_state_dict(t->opt, d, "train.optimizer.");
  if (rc == 0 && t->sched)
    rc = tg_scheduler_load_state_dict(t->sched, d, "train.scheduler.");
  if (rc == 0)
    rc = tg_batch_iter_load_state_dict(batches, d, "train.data.");
  if (rc == 0) {
    uint64_t state[4];
    memcpy(state, tg_data((tg_tensor *)rng), sizeof state);
    tg_random_set_state(state);
    t->step = atoll(step);
    int64_t epoch;
    tg_batch_iter_position(batches, &epoch, NULL);
    t->epoch = (int)epoch + 1;
    printf("resumed from %s at step %lld\n", o->resume, (long long)t->step);
  } else if (!checked) {
    fprintf(stderr, "error: cannot resume from %s: %s\n", o->resume, tg_last_error());
  }
  tg_tensor_dict_free(d);
  return rc;
}

int ex_training_setup(ex_training *t, tg_varstore *vs, const ex_common_options *o,
                      tg_batch_iter *batches) {
  memset(t, 0, sizeof *t);
  t->epoch = 1;
  if (o->load) {
    tg_load_options lo = tg_load_options_default();
    lo.exclude_prefix = "train."; /* a resume checkpoint's training state */
    if (tg_varstore_load_ex(vs, o->load, &lo, NULL) < 0) {
      fprintf(stderr, "error: cannot load %s: %s\n", o->load, tg_last_error());
      return -1;
    }
    printf("loaded weights from %s\n", o->load);
  }
  /* Every rank starts from rank 0's weights (the same seed made them alike anyway). */
  if (tg_dist_broadcast_varstore(vs, 0) < 0) {
    fprintf(stderr, "error: %s\n", tg_last_error());
    return -1;
  }
  ex_plan *plan = &t->plan;
  plan->steps_per_epoch = tg_batch_iter_len(batches);
  plan->total = (int64_t)o->epochs * plan->steps_per_epoch;
  if (o->steps > 0 && o->steps < plan->total)
    plan->total = o->steps;
  plan->epochs =
      plan->steps_per_epoch
          ? (int)((plan->total + plan->steps_per_epoch - 1) / plan->steps_per_epoch)
          : 0;
  tg_sgd_config sc = tg_sgd_config_default(o->lr);
  sc.momentum = 0.9;
  t->opt = tg_sgd_new(vs, sc);
  if (t->opt && plan->total > 0)
    t->sched = tg_cosine_lr_new(t->opt, plan->total, 0);
  if (!t->opt || (plan->total > 0 && !t->sched)) {
    fprintf(stderr, "error: %s\n", tg_last_error());
    ex_training_free(t);
    return -1;
  }
  if (o->resume && resume(t, vs, o, batches) < 0) {
    ex_training_free(t);
    return -1;
  }
  ex_sigint_install();
  return 0;
}

void ex_training_free(ex_training *t) {
  tg_scheduler_free(t->sched);
  tg_optimizer_free(t->opt);
  t->sched = NULL;
  t->opt = NULL;
}

bool ex_should_stop(const ex_training *t, const ex_common_options *o) {
  return ex_interrupted() || (o->stop_after > 0 && t->step >= o->stop_after);
}

void ex_print_plan(const ex_plan *plan, const ex_common_options *o, const char *items) {
  if (plan->total == 0)
    printf("no training steps: evaluating only\n");
  else
    printf("training: %d epoch(s), %lld steps of %d %s, SGD lr %g (cosine), "
           "momentum 0.9, seed %lld\n",
           plan->epochs, (long long)plan->total, o->batch, items, o->lr,
           (long long)o->seed);
  if (o->world > 1)
    printf("data-parallel: %d ranks, %d %s each per step\n", o->world,
           o->batch / o->world, items);
  fflush(stdout);
}

tg_tensor *ex_to_device(tg_tensor *host, tg_device device) {
  if (device.type == TG_DEVICE_CPU)
    return host;
  tg_tensor *on_device = tg_tensor_to(host, device);
  tg_tensor_free(host);
  return on_device;
}

int64_t ex_num_params(const tg_varstore *vs) {
  int64_t total = 0;
  for (int i = 0; i < tg_varstore_len(vs); i++)
    total += tg_numel(tg_varstore_var(vs, i, NULL));
  return total;
}
