/* Shared by the example programs: command-line flags, a progress bar, a deterministic
 * random generator, Ctrl-C handling and PNG pictures (the library reads MNIST files:
 * tg_mnist_load_dir). Not part of the library: examples use tapegrad.h only. */
#ifndef TG_EXAMPLES_COMMON_H
#define TG_EXAMPLES_COMMON_H

#include "tapegrad.h"

#include <stdbool.h>
#include <stdint.h>

/* Exit statuses: runtime failures (bad data, I/O, CUDA missing) and bad flags. */
enum { EX_EXIT_FAILURE = 1, EX_EXIT_USAGE = 2 };
/* What main returns for a run that ended with `status`: EX_EXIT_FAILURE rather than 0,
 * after saying so, when standard output could not be written (a full disk). */
int ex_exit(int status);

/* ------------------------------------------------------------------ flags -- */
typedef enum { EX_FLAG_INT, EX_FLAG_I64, EX_FLAG_DOUBLE, EX_FLAG_STRING } ex_flag_kind;

/* One --name VALUE flag (also --name=VALUE). Numbers must lie in [lo, hi]. */
typedef struct {
  const char *name;
  ex_flag_kind kind;
  void *value; /* int *, int64_t *, double * or const char ** */
  double lo, hi;
  const char *metavar, *help;
} ex_flag;

/* Flags every example takes. */
typedef struct {
  const char *device_name; /* "cpu", "cuda" or "cuda:N" */
  tg_device device;
  int threads; /* 0: the library's default */
  int epochs;
  int64_t steps; /* 0: no limit */
  int batch;
  double lr;
  int64_t seed;
  const char *save, *load, *resume, *out;
  int64_t stop_after; /* 0: no limit */
  int rank, world;    /* set by ex_common_apply: this process among the mpirun ranks */
} ex_common_options;

/* Appends the common flags to `flags` (room for 12 more), bound to `o`. */
int ex_common_flags(ex_flag *flags, int n, ex_common_options *o);
/* Parses argv. Returns 0 to run, 1 after printing --help (exit 0), or -1 after
 * printing what was wrong and a pointer to --help (exit EX_EXIT_USAGE). */
int ex_parse_flags(int argc, char **argv, const char *summary, const ex_flag *flags,
                   int n);
/* Applies the common options: device availability, threads, seed. Returns 0, or the
 * exit status after printing the error (EX_EXIT_USAGE for a malformed --device,
 * EX_EXIT_FAILURE for one that is unavailable). Joins the MPI job when started by
 * mpirun (tg_dist_init): every rank then trains on its slice of each global batch of
 * --batch (which must divide among the ranks), ranks other than 0 print nothing to
 * stdout and write no files (ex_png_write and the checkpoint savers return at once),
 * and `--device cuda` gives rank r GPU r modulo the count. */
int ex_common_apply(ex_common_options *o);
/* End of main, around ex_exit: leaves the MPI job after a successful run (a failed
 * rank exits without, so that mpirun stops the others rather than wait for it).
 * Returns status. */
int ex_dist_end(int status);
/* Mean over the ranks of v (v in a world of one); NAN when the exchange fails. */
double ex_dist_mean(double v);

/* How many steps a run takes. */
typedef struct {
  int64_t steps_per_epoch, total;
  int epochs;
} ex_plan;
/* A run's training state: SGD with momentum 0.9 at --lr on a cosine schedule down to
 * 0 over the plan's steps (CosineAnnealingLR), and how far the run got. */
typedef struct {
  tg_optimizer *opt;
  tg_scheduler *sched; /* NULL when there are no steps to take */
  ex_plan plan;
  int64_t step; /* steps done: 0, or where --resume picked up */
  int epoch;    /* the epoch (from 1) the next step belongs to */
} ex_training;
/* After the network and its batch iterator are built: loads --load (weights: of
 * PyTorch, --save or a resume checkpoint) into vs when given, makes the optimizer
 * and schedule, plans the steps, resumes everything --resume holds (weights,
 * optimizer, schedule, step, data order position, generator) and installs the
 * Ctrl-C handler. Returns 0, or -1 after printing the error (t is then freed). */
int ex_training_setup(ex_training *t, tg_varstore *vs, const ex_common_options *o,
                      tg_batch_iter *batches);
void ex_training_free(ex_training *t);
/* Whether to stop before the next step: Ctrl-C, or --stop-after steps done. */
bool ex_should_stop(const ex_training *t, const ex_common_options *o);
/* Prints the plan: "training: E epoch(s), S steps of B <items>, SGD ..." (or that
 * there is nothing to train), then flushes stdout. */
void ex_print_plan(const ex_plan *plan, const ex_common_options *o, const char *items);
/* Moves host (a new tensor on the CPU) to device, freeing host when it copies.
 * Returns the tensor on device, or NULL on error. */
tg_tensor *ex_to_device(tg_tensor *host, tg_device device);
/* Number of elements over all variables of vs. */
int64_t ex_num_params(const tg_varstore *vs);

/* ---------------------------------------------------------------- progress -- */
/* A live bar redrawn in place on a terminal; one plain line every `log_every` steps
 * (and at the end of each epoch) when stdout is a file or a pipe. */
typedef struct {
  bool tty;
  int64_t total_steps, log_every;
  int64_t steps_done, images_done;
  double t_start, t_drawn;
  bool bar_visible;
} ex_progress;

double ex_now(void); /* monotonic seconds */
void ex_progress_init(ex_progress *p, int64_t total_steps, int64_t log_every);
/* Records one finished step of `images` images. `metrics` is a short text such as
 * "loss 0.412 acc 86.1%". step_in_epoch is 1-based. */
void ex_progress_step(ex_progress *p, int epoch, int epochs, int64_t step_in_epoch,
                      int64_t steps_per_epoch, int64_t images, const char *metrics);
/* Prints a line of its own (above the bar on a terminal). printf-style. */
void ex_progress_print(ex_progress *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Ends the bar's line. */
void ex_progress_finish(ex_progress *p);

/* ------------------------------------------------------------------ random -- */
/* splitmix64-seeded xoshiro256**: the examples' own stream, so shuffles and scenes do
 * not depend on how many numbers the library drew. */
typedef struct {
  uint64_t s[4];
} ex_rng;
void ex_rng_seed(ex_rng *r, uint64_t seed);
uint64_t ex_rng_u64(ex_rng *r);
double ex_rng_uniform(ex_rng *r); /* [0, 1) */
double ex_rng_range(ex_rng *r, double lo, double hi);
int64_t ex_rng_below(ex_rng *r, int64_t n); /* [0, n) */
double ex_rng_normal(ex_rng *r);
void ex_rng_shuffle(ex_rng *r, int64_t *a, int64_t n);
/* Mixes two values into a seed (for "the i-th scene of stream s"). */
uint64_t ex_hash2(uint64_t a, uint64_t b);

/* ------------------------------------------------------------------ Ctrl-C -- */
/* The first SIGINT asks to stop after the current step; a second one kills. Under
 * mpirun every rank calls ex_interrupted at the same points, and it tells them all
 * to stop when any rank was interrupted (one tiny all-reduce). mpirun itself answers
 * Ctrl-C by terminating the ranks a second later: signal the ranks to stop cleanly. */
void ex_sigint_install(void);
bool ex_interrupted(void);
/* Saves vs to path (creating its directory), printing the outcome. Returns 0 or -1. */
int ex_save_checkpoint(const tg_varstore *vs, const char *path);
/* After Ctrl-C or --stop-after stopped training: says so and saves a checkpoint to
 * resume from (weights under their names, "train.*" for the rest) to --save, else to
 * OUT/interrupted.safetensors. Returns the exit status. */
int ex_save_interrupted(const ex_training *t, const tg_varstore *vs,
                        const tg_batch_iter *batches, const ex_common_options *o);

/* ------------------------------------------------------------------- files -- */
/* mkdir -p. Returns 0, or -1 after printing the error. */
int ex_mkdir_p(const char *dir);

/* ---------------------------------------------------------------- pictures -- */
typedef struct {
  int w, h;
  uint8_t *rgb; /* w*h*3 */
} ex_canvas;
typedef struct {
  uint8_t r, g, b;
} ex_color;

int ex_canvas_init(ex_canvas *c, int w, int h, ex_color fill);
void ex_canvas_free(ex_canvas *c);
void ex_canvas_rect(ex_canvas *c, int x, int y, int w, int h, ex_color col);
void ex_canvas_line(ex_canvas *c, double x0, double y0, double x1, double y1,
                    ex_color col);
/* Text in a 5x7 pixel font (scale times larger); returns the width drawn. */
int ex_canvas_text(ex_canvas *c, int x, int y, int scale, ex_color col, const char *text);
int ex_text_width(const char *text, int scale);
/* Writes an 8-bit RGB PNG. Returns 0, or -1 after printing the error. */
int ex_png_write(const char *path, const ex_canvas *c);

/* A growing list of points, such as a training curve. */
typedef struct {
  double *x, *y;
  int64_t n, cap;
} ex_curve;
/* Appends (x, y); drops the point when out of memory (the plot only misses it). */
void ex_curve_add(ex_curve *c, double x, double y);
void ex_curve_free(ex_curve *c);

/* One line of a plot: x/y values; connects the points. */
typedef struct {
  const char *label;
  const double *x, *y;
  int64_t n;
  ex_color color;
  bool markers;
} ex_series;
/* Draws a framed plot with axes, ticks, a title and a legend into the rectangle
 * (x, y, w, h) of c. y range: [y_lo, y_hi], or from the data when y_lo >= y_hi. */
void ex_plot(ex_canvas *c, int x, int y, int w, int h, const char *title,
             const char *x_label, const ex_series *series, int n_series, double y_lo,
             double y_hi);

#endif
