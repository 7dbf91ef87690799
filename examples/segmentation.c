/* segmentation: a toy GroupNorm U-Net (ex_unet of nets.h) that labels every pixel of
 * synthetic scenes as background, disc, square or triangle.
 *
 * Scenes (64x64 RGB) are drawn from a seed: a noisy textured background and 1-4
 * overlapping shapes of random size, position, rotation and colour. The training set
 * and the held-out set come from different seed streams. The net is trained with a
 * class-weighted per-pixel cross-entropy and SGD with momentum.
 *
 * Variables are named as the state_dict of the PyTorch module with blocks written as
 * nn.Sequential(Conv2d, GroupNorm, ReLU, Conv2d, GroupNorm, ReLU): enc1.0.weight,
 * enc1.1.bias, enc1.3.weight, ..., head.weight. Inputs are RGB/255 mapped to [-1, 1]. */
#include "common.h"
#include "nets.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SIDE = EX_UNET_SIDE, PIXELS = SIDE * SIDE, CLASSES = EX_UNET_CLASSES };
static const char *const class_names[CLASSES] = {"background", "disc", "square",
                                                 "triangle"};
static const ex_color class_colors[CLASSES] = {
    {30, 30, 30}, {235, 80, 60}, {80, 200, 90}, {70, 130, 240}};

/* ------------------------------------------------------------------ scenes -- */
typedef struct {
  int64_t n;
  uint8_t *rgb;    /* n * PIXELS * 3, HWC */
  uint8_t *labels; /* n * PIXELS */
} scenes;

static uint8_t clamp_u8(double v) {
  return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v + 0.5);
}

/* Whether pixel centre (px, py) lies in shape `kind` (1 disc, 2 square, 3 triangle)
 * of radius r centred at (cx, cy), rotated by angle. Squares and triangles are sized
 * to cover about the area of the disc of the same r. */
static bool inside(int kind, double px, double py, double cx, double cy, double r,
                   double angle) {
  double dx = px - cx, dy = py - cy;
  if (kind == 1)
    return dx * dx + dy * dy <= r * r;
  double c = cos(angle), s = sin(angle);
  double u = c * dx + s * dy, v = -s * dx + c * dy;
  if (kind == 2) {
    double h = 0.886 * r;
    return fabs(u) <= h && fabs(v) <= h;
  }
  /* Equilateral triangle with circumradius R: inside all three edges' half-planes,
   * each edge at distance R/2 from the centre along its normal. */
  double R = 1.5 * r;
  for (int k = 0; k < 3; k++) {
    double a = M_PI / 2 + k * 2 * M_PI / 3; /* edge normals, point away from vertices */
    if (-(cos(a) * u + sin(a) * v) > R / 2)
      return false;
  }
  return true;
}

/* rgb (0..255) of hue, saturation, value in [0, 1]. */
static void hsv_color(double h, double s, double v, double rgb[3]) {
  double k[3] = {5, 3, 1};
  for (int c = 0; c < 3; c++) {
    double t = fmod(k[c] + 6 * h, 6);
    rgb[c] = 255 * v * (1 - s * fmax(0, fmin(fmin(t, 4 - t), 1)));
  }
}

static void scene_make(uint64_t seed, uint8_t *rgb, uint8_t *label) {
  ex_rng r;
  ex_rng_seed(&r, seed);
  /* Background: a base colour modulated by two random gratings. */
  double base[3], tint[2][3], freq[2][2], phase[2];
  hsv_color(ex_rng_uniform(&r), ex_rng_range(&r, 0.2, 0.9), ex_rng_range(&r, 0.15, 0.45),
            base);
  for (int g = 0; g < 2; g++) {
    double f = ex_rng_range(&r, 0.1, 0.6), a = ex_rng_range(&r, 0, 2 * M_PI);
    freq[g][0] = f * cos(a);
    freq[g][1] = f * sin(a);
    phase[g] = ex_rng_range(&r, 0, 2 * M_PI);
    for (int c = 0; c < 3; c++)
      tint[g][c] = ex_rng_range(&r, -20, 20);
  }
  for (int y = 0; y < SIDE; y++)
    for (int x = 0; x < SIDE; x++) {
      double w0 = sin(freq[0][0] * x + freq[0][1] * y + phase[0]);
      double w1 = sin(freq[1][0] * x + freq[1][1] * y + phase[1]);
      for (int c = 0; c < 3; c++)
        rgb[(y * SIDE + x) * 3 + c] =
            clamp_u8(base[c] + w0 * tint[0][c] + w1 * tint[1][c]);
      label[y * SIDE + x] = 0;
    }
  /* Shapes, painted in order: later ones hide earlier ones. */
  int count = 1 + (int)ex_rng_below(&r, 4);
  for (int k = 0; k < count; k++) {
    int kind = 1 + (int)ex_rng_below(&r, 3);
    double rad = ex_rng_range(&r, 4, 9);
    double cx = ex_rng_range(&r, 0.5 * rad, SIDE - 0.5 * rad);
    double cy = ex_rng_range(&r, 0.5 * rad, SIDE - 0.5 * rad);
    double angle = kind == 3 ? M_PI : 0; /* upright squares and triangles */
    double col[3];
    hsv_color(ex_rng_uniform(&r), ex_rng_range(&r, 0.3, 1), ex_rng_range(&r, 0.7, 1),
              col);
    double ext = 1.5 * rad + 1;
    int x0 = (int)fmax(0, floor(cx - ext)), x1 = (int)fmin(SIDE - 1, ceil(cx + ext));
    int y0 = (int)fmax(0, floor(cy - ext)), y1 = (int)fmin(SIDE - 1, ceil(cy + ext));
    for (int y = y0; y <= y1; y++)
      for (int x = x0; x <= x1; x++)
        if (inside(kind, x + 0.5, y + 0.5, cx, cy, rad, angle)) {
          for (int c = 0; c < 3; c++)
            rgb[(y * SIDE + x) * 3 + c] = clamp_u8(col[c]);
          label[y * SIDE + x] = (uint8_t)kind;
        }
  }
  /* Sensor noise over everything. */
  for (int i = 0; i < PIXELS * 3; i++)
    rgb[i] = clamp_u8(rgb[i] + 12 * ex_rng_normal(&r));
}

static int scenes_make(scenes *s, int64_t n, uint64_t stream) {
  s->n = n;
  s->rgb = malloc((size_t)n * PIXELS * 3);
  s->labels = malloc((size_t)n * PIXELS);
  if (!s->rgb || !s->labels) {
    fprintf(stderr, "error: out of memory for %lld scenes\n", (long long)n);
    return -1;
  }
  for (int64_t i = 0; i < n; i++)
    scene_make(ex_hash2(stream, (uint64_t)i), s->rgb + i * PIXELS * 3,
               s->labels + i * PIXELS);
  return 0;
}

static void scenes_free(scenes *s) {
  free(s->rgb);
  free(s->labels);
}

/* Scenes idx[0..n) as [n, 3, 64, 64] floats in [-1, 1], on device. */
static tg_tensor *batch_images(const scenes *s, const int64_t *idx, int64_t n,
                               tg_device device) {
  tg_tensor *x = tg_empty(TG_SHAPE(n, 3, SIDE, SIDE), TG_F32, TG_CPU);
  if (!x)
    return NULL;
  float *p = tg_data(x);
  for (int64_t i = 0; i < n; i++) {
    const uint8_t *src = s->rgb + idx[i] * PIXELS * 3;
    for (int c = 0; c < 3; c++)
      for (int k = 0; k < PIXELS; k++)
        p[(i * 3 + c) * PIXELS + k] = (float)src[k * 3 + c] / 127.5f - 1.0f;
  }
  return ex_to_device(x, device);
}

/* Labels of scenes idx[0..n) as [n, 64, 64] int64 class indices, on device. */
static tg_tensor *batch_targets(const scenes *s, const int64_t *idx, int64_t n,
                                tg_device device) {
  tg_tensor *y = tg_empty(TG_SHAPE(n, SIDE, SIDE), TG_I64, TG_CPU);
  if (!y)
    return NULL;
  int64_t *p = tg_data(y);
  for (int64_t i = 0; i < n; i++)
    for (int k = 0; k < PIXELS; k++)
      p[i * PIXELS + k] = s->labels[idx[i] * PIXELS + k];
  return ex_to_device(y, device);
}

/* Class-weighted mean of the per-pixel cross-entropy, PyTorch's
 * cross_entropy(weight=[1, w, w, w]): sum(w_i * ce_i) / sum(w_i). Weighting the few
 * shape pixels up gets SGD past the plateau where the net finds the shapes but calls
 * them all the same class. */
static tg_tensor *weighted_loss(const tg_tensor *logits, const scenes *s,
                                const int64_t *idx, int64_t n, double fg_weight,
                                tg_device device) {
  /* The weighted mean divides by the sum of the pixels' weights; under mpirun the
   * ranks share the global one (the mean of their sums, as their gradients are
   * averaged), so that their losses average to the whole batch's. Every rank gets
   * here, also one whose forward failed. */
  double total = 0;
  for (int64_t i = 0; i < n * PIXELS; i++)
    total += s->labels[idx[i / PIXELS] * PIXELS + i % PIXELS] ? fg_weight : 1;
  total = ex_dist_mean(total);
  if (!logits)
    return NULL;
  double w[CLASSES];
  for (int c = 0; c < CLASSES; c++)
    w[c] = c ? fg_weight : 1;
  tg_cross_entropy_options o = tg_cross_entropy_options_default();
  o.weight =
      ex_to_device(tg_to_dtype(tg_tensor_from_data(w, TG_SHAPE(CLASSES), TG_F64, TG_CPU),
                               tg_dtype_of(logits)),
                   device);
  o.reduction = TG_REDUCTION_SUM;
  return tg_div_scalar(tg_cross_entropy_ex(logits, batch_targets(s, idx, n, device), &o),
                       total);
}

/* ------------------------------------------------------------------ metrics -- */
/* Confusion counts cm[truth][prediction] over pixels. */
typedef struct {
  int64_t cm[CLASSES][CLASSES];
} confusion;

/* Adds the argmax of logits [n, 4, 64, 64] against the labels of scenes idx. */
static int confusion_add(confusion *cm, const tg_tensor *logits, const scenes *s,
                         const int64_t *idx, int64_t n) {
  size_t count = (size_t)n * CLASSES * PIXELS;
  float *host = malloc(count * sizeof *host);
  if (!host || tg_tensor_copy_to_host(logits, host, count * sizeof *host) < 0) {
    free(host);
    return -1;
  }
  for (int64_t i = 0; i < n; i++) {
    const float *l = host + i * CLASSES * PIXELS;
    const uint8_t *truth = s->labels + idx[i] * PIXELS;
    for (int k = 0; k < PIXELS; k++) {
      int best = 0;
      for (int c = 1; c < CLASSES; c++)
        if (l[c * PIXELS + k] > l[best * PIXELS + k])
          best = c;
      cm->cm[truth[k]][best]++;
    }
  }
  free(host);
  return 0;
}

/* Per-class IoU (NAN when a class is absent from truth and prediction); returns the
 * mean over the classes that are present. */
static double confusion_iou(const confusion *cm, double iou[CLASSES]) {
  double sum = 0;
  int present = 0;
  for (int c = 0; c < CLASSES; c++) {
    int64_t tp = cm->cm[c][c], uni = -tp;
    for (int k = 0; k < CLASSES; k++)
      uni += cm->cm[c][k] + cm->cm[k][c];
    iou[c] = uni > 0 ? (double)tp / (double)uni : NAN;
    if (uni > 0) {
      sum += iou[c];
      present++;
    }
  }
  return present ? sum / present : NAN;
}

/* Confusion over all of s, in eval mode without a tape; -1 on error. */
static int evaluate(const ex_unet *m, const scenes *s, int64_t batch, tg_device device,
                    confusion *cm) {
  memset(cm, 0, sizeof *cm);
  int64_t *idx = malloc((size_t)batch * sizeof *idx);
  int rc = idx ? 0 : -1;
  tg_no_grad_begin();
  for (int64_t start = 0; start < s->n && rc == 0; start += batch) {
    int64_t n = s->n - start < batch ? s->n - start : batch;
    for (int64_t i = 0; i < n; i++)
      idx[i] = start + i;
    tg_scope_begin();
    tg_tensor *logits = ex_unet_forward(m, batch_images(s, idx, n, device), false);
    rc = logits ? confusion_add(cm, logits, s, idx, n) : -1;
    tg_scope_end();
  }
  tg_no_grad_end();
  free(idx);
  return rc;
}

/* ----------------------------------------------------------------- pictures -- */
enum { GRID_ROWS = 6, GRID_GROUPS = 2, ZOOM = 2, TILE = SIDE * ZOOM, GAP = 6 };

static void draw_tile(ex_canvas *c, int x, int y, const uint8_t *rgb,
                      const uint8_t *labels) {
  for (int py = 0; py < TILE; py++)
    for (int px = 0; px < TILE; px++) {
      int k = (py / ZOOM) * SIDE + px / ZOOM;
      uint8_t *dst = c->rgb + ((size_t)(y + py) * (size_t)c->w + (size_t)(x + px)) * 3;
      if (rgb) {
        memcpy(dst, rgb + k * 3, 3);
      } else {
        ex_color col = class_colors[labels[k]];
        dst[0] = col.r;
        dst[1] = col.g;
        dst[2] = col.b;
      }
    }
}

/* input | ground truth | prediction for the first held-out scenes, with a legend. */
static int write_samples(const ex_unet *m, const scenes *held, tg_device device,
                         const char *path) {
  int64_t n = GRID_ROWS * GRID_GROUPS;
  if (n > held->n)
    n = held->n;
  int64_t idx[GRID_ROWS * GRID_GROUPS];
  for (int64_t i = 0; i < n; i++)
    idx[i] = i;
  uint8_t *pred = malloc((size_t)n * PIXELS);
  float *logits_host = malloc((size_t)n * CLASSES * PIXELS * sizeof(float));
  int rc = pred && logits_host ? 0 : -1;
  tg_no_grad_begin();
  tg_scope_begin();
  tg_tensor *logits =
      rc == 0 ? ex_unet_forward(m, batch_images(held, idx, n, device), false) : NULL;
  if (!logits || tg_tensor_copy_to_host(logits, logits_host,
                                        (size_t)n * CLASSES * PIXELS * sizeof(float)) < 0)
    rc = -1;
  tg_scope_end();
  tg_no_grad_end();
  for (int64_t i = 0; rc == 0 && i < n; i++)
    for (int k = 0; k < PIXELS; k++) {
      const float *l = logits_host + i * CLASSES * PIXELS;
      int best = 0;
      for (int c = 1; c < CLASSES; c++)
        if (l[c * PIXELS + k] > l[best * PIXELS + k])
          best = c;
      pred[i * PIXELS + k] = (uint8_t)best;
    }
  free(logits_host);
  if (rc < 0) {
    free(pred);
    fprintf(stderr, "error: cannot predict the sample scenes: %s\n", tg_last_error());
    return -1;
  }

  const ex_color white = {255, 255, 255}, ink = {30, 30, 30};
  int group_w = 3 * TILE + 2 * GAP, margin = 12, head = 26, legend = 34;
  int w = 2 * margin + GRID_GROUPS * group_w + (GRID_GROUPS - 1) * 3 * GAP;
  int h = margin + head + GRID_ROWS * (TILE + GAP) + legend;
  ex_canvas c;
  if (ex_canvas_init(&c, w, h, white) < 0) {
    fprintf(stderr, "error: out of memory for %s\n", path);
    free(pred);
    return -1;
  }
  const char *titles[3] = {"input", "truth", "prediction"};
  for (int g = 0; g < GRID_GROUPS; g++) {
    int gx = margin + g * (group_w + 3 * GAP);
    for (int col = 0; col < 3; col++) {
      int tx = gx + col * (TILE + GAP) + (TILE - ex_text_width(titles[col], 2)) / 2;
      ex_canvas_text(&c, tx, margin, 2, ink, titles[col]);
    }
    for (int r = 0; r < GRID_ROWS; r++) {
      int64_t i = g * GRID_ROWS + r;
      if (i >= n)
        break;
      int y = margin + head + r * (TILE + GAP);
      draw_tile(&c, gx, y, held->rgb + idx[i] * PIXELS * 3, NULL);
      draw_tile(&c, gx + TILE + GAP, y, NULL, held->labels + idx[i] * PIXELS);
      draw_tile(&c, gx + 2 * (TILE + GAP), y, NULL, pred + i * PIXELS);
    }
  }
  int lx = margin, ly = h - legend + 10;
  for (int k = 0; k < CLASSES; k++) {
    ex_canvas_rect(&c, lx, ly, 14, 14, class_colors[k]);
    lx += 20 + ex_canvas_text(&c, lx + 20, ly, 2, ink, class_names[k]) + 24;
  }
  rc = ex_png_write(path, &c);
  ex_canvas_free(&c);
  free(pred);
  return rc;
}

/* Training curves: train loss and mIoU per plotted window, held-out mIoU per epoch. */
typedef struct {
  ex_curve loss, miou, held_miou;
} history;

static int write_curves(const history *h, const char *path) {
  ex_canvas c;
  if (ex_canvas_init(&c, 1000, 380, (ex_color){255, 255, 255}) < 0) {
    fprintf(stderr, "error: out of memory for %s\n", path);
    return -1;
  }
  const ex_curve *loss_c = &h->loss, *miou_c = &h->miou, *held_c = &h->held_miou;
  ex_series loss = {"train loss", loss_c->x, loss_c->y, loss_c->n, {200, 60, 40}, false};
  ex_series iou[2] = {
      {"train mIoU", miou_c->x, miou_c->y, miou_c->n, {240, 160, 40}, false},
      {"held-out mIoU", held_c->x, held_c->y, held_c->n, {40, 90, 200}, true},
  };
  ex_plot(&c, 0, 0, 500, 380, "LOSS", "step", &loss, 1, 0, 0);
  ex_plot(&c, 500, 0, 500, 380, "MEAN IOU", "step", iou, 2, 0, 1);
  int rc = ex_png_write(path, &c);
  ex_canvas_free(&c);
  return rc;
}

static int write_pictures(const ex_unet *m, const scenes *held, const history *h,
                          const ex_common_options *o) {
  char path[PATH_MAX]; /* ex_common_apply refused an --out too long for it */
  if (ex_mkdir_p(o->out) < 0)
    return -1;
  snprintf(path, sizeof path, "%s/samples.png", o->out);
  if (write_samples(m, held, o->device, path) < 0)
    return -1;
  printf("wrote %s\n", path);
  snprintf(path, sizeof path, "%s/curves.png", o->out);
  if (h->loss.n > 0) {
    if (write_curves(h, path) < 0)
      return -1;
    printf("wrote %s\n", path);
  }
  return 0;
}

/* --------------------------------------------------------------------- main -- */
int main(int argc, char **argv) {
  ex_common_options o = {
      .device_name = "cpu", .epochs = 8, .batch = 4, .lr = 0.05, .seed = 0, .out = "out"};
  int64_t train_size = 2048, eval_size = 256, eval_batch = 32;
  double fg_weight = 10;
  ex_flag flags[16] = {
      {"fg-weight", EX_FLAG_DOUBLE, &fg_weight, 0.01, 1000, "X",
       "loss weight of shape pixels (background: 1)"},
      {"train-size", EX_FLAG_I64, &train_size, 1, 1 << 20, "N", "training scenes"},
      {"eval-size", EX_FLAG_I64, &eval_size, 1, 1 << 20, "N", "held-out scenes"},
      {"eval-batch", EX_FLAG_I64, &eval_batch, 1, 4096, "N", "scenes per eval batch"},
  };
  int n_flags = ex_common_flags(flags, 4, &o);
  int rc = ex_parse_flags(argc, argv,
                          "Trains a GroupNorm U-Net to segment synthetic scenes "
                          "(discs, squares, triangles)\nand writes pictures of its "
                          "predictions and training curves into --out.",
                          flags, n_flags);
  if (rc != 0)
    return rc > 0 ? ex_exit(0) : EX_EXIT_USAGE;
  if ((rc = ex_common_apply(&o)) != 0)
    return rc;

  int status = EX_EXIT_FAILURE;
  ex_unet m = {0};
  ex_training tr = {0};
  history hist = {0};
  scenes train = {0}, held = {0};
  tg_tensor *scene_ids = tg_arange(0, (double)train_size, 1, TG_I64, TG_CPU);
  tg_batch_iter *batches = NULL; /* batches of scene indices, shuffled from --seed */
  double t0 = ex_now();
  /* Held-out scenes come from a fixed stream so runs with different seeds are
   * compared on the same images; training scenes from the seed's own stream. */
  tg_batch_config bc = tg_batch_config_default();
  bc.shuffle = true;
  bc.seed = ex_hash2((uint64_t)o.seed, 100);
  bc.rank = o.rank; /* each rank its slice of every global batch */
  bc.world = o.world;
  if (!(batches = tg_batch_iter_new(scene_ids, NULL, o.batch / o.world, bc))) {
    fprintf(stderr, "error: %s\n", tg_last_error());
    goto done;
  }
  if (scenes_make(&train, train_size, ex_hash2((uint64_t)o.seed, 1)) < 0 ||
      scenes_make(&held, eval_size, ex_hash2(0x5e6e7a11d0u, 2)) < 0)
    goto done;
  if (ex_unet_build(&m, o.device) < 0) {
    fprintf(stderr, "error: cannot build the network: %s\n", tg_last_error());
    goto done;
  }
  if (ex_training_setup(&tr, m.vs, &o, batches) < 0)
    goto done;
  int64_t steps_per_epoch = tr.plan.steps_per_epoch, total = tr.plan.total;
  int epochs = tr.plan.epochs;
  printf("segmentation: %lld training and %lld held-out %dx%d scenes (%.1f s); %lld "
         "parameters; device %s, %d threads\n",
         (long long)train.n, (long long)held.n, SIDE, SIDE, ex_now() - t0,
         (long long)ex_num_params(m.vs), o.device_name, tg_get_num_threads());
  ex_print_plan(&tr.plan, &o, "scenes");

  ex_progress prog;
  ex_progress_init(&prog, total, steps_per_epoch / 10);
  t0 = ex_now();
  int64_t step = tr.step;
  confusion held_cm;
  bool evaluated = false;
  for (int epoch = tr.epoch; epoch <= epochs && !ex_should_stop(&tr, &o); epoch++) {
    confusion epoch_cm = {0}, window_cm = {0};
    double loss_sum = 0, window_loss = 0;
    int64_t seen = 0, window_steps = 0;
    int64_t epoch_steps = total - step < steps_per_epoch ? total - step : steps_per_epoch;
    int64_t plot_every = steps_per_epoch / 25 > 0 ? steps_per_epoch / 25 : 1;
    int64_t s;
    tg_batch_iter_position(batches, NULL, &s);
    for (; step < total && !ex_should_stop(&tr, &o); s++, step = ++tr.step) {
      tg_scope_begin();
      tg_tensor *ids;
      int r = tg_batch_iter_next(batches, &ids, NULL);
      if (r == 0) { /* the epoch is over */
        tg_scope_end();
        break;
      }
      int64_t n = r > 0 ? tg_numel(ids) : 0;
      const int64_t *idx = r > 0 ? tg_data(ids) : NULL;
      tg_tensor *logits =
          r > 0 ? ex_unet_forward(&m, batch_images(&train, idx, n, o.device), true)
                : NULL;
      tg_tensor *loss = weighted_loss(logits, &train, idx, n, fg_weight, o.device);
      tg_optimizer_zero_grad(tr.opt);
      bool ok = loss && tg_backward(loss) == 0;
      /* mpirun: a failed step still joins the averaging, which then fails everywhere */
      ok = tg_dist_average_gradients(ok ? m.vs : NULL) == 0;
      ok = ok && tg_optimizer_step(tr.opt) == 0 && tg_scheduler_step(tr.sched) == 0;
      double loss_v = ok ? tg_item(loss) : NAN;
      confusion batch_cm = {0};
      ok = ok && confusion_add(&batch_cm, logits, &train, idx, n) == 0;
      tg_scope_end();
      if (!ok) {
        ex_progress_finish(&prog);
        fprintf(stderr, "error: training step %lld failed: %s\n", (long long)step + 1,
                tg_last_error());
        goto done;
      }

      for (int a = 0; a < CLASSES; a++)
        for (int b = 0; b < CLASSES; b++) {
          epoch_cm.cm[a][b] += batch_cm.cm[a][b];
          window_cm.cm[a][b] += batch_cm.cm[a][b];
        }
      loss_sum += loss_v * (double)n;
      seen += n;
      window_loss += loss_v;
      window_steps++;
      if ((s + 1) % plot_every == 0 || s + 1 == epoch_steps) {
        double iou[CLASSES];
        ex_curve_add(&hist.loss, (double)step + 1, window_loss / (double)window_steps);
        ex_curve_add(&hist.miou, (double)step + 1, confusion_iou(&window_cm, iou));
        memset(&window_cm, 0, sizeof window_cm);
        window_loss = 0;
        window_steps = 0;
      }
      double iou[CLASSES];
      char metrics[96];
      snprintf(metrics, sizeof metrics, "loss %.4f mIoU %.3f", loss_sum / (double)seen,
               confusion_iou(&epoch_cm, iou));
      ex_progress_step(&prog, epoch, epochs, s + 1, steps_per_epoch, n * o.world,
                       metrics);
    }
    if (ex_should_stop(&tr, &o))
      break;
    if (evaluate(&m, &held, eval_batch, o.device, &held_cm) < 0) {
      fprintf(stderr, "error: evaluation failed: %s\n", tg_last_error());
      goto done;
    }
    evaluated = true;
    double iou[CLASSES], miou = confusion_iou(&held_cm, iou);
    ex_curve_add(&hist.held_miou, (double)step, miou);
    ex_progress_print(&prog, "epoch %d/%d: train loss %.4f | held-out mIoU %.4f | %.1f s",
                      epoch, epochs, loss_sum / (double)(seen ? seen : 1), miou,
                      ex_now() - t0);
  }
  ex_progress_finish(&prog);

  if (step < total && ex_should_stop(&tr, &o)) {
    status = ex_save_interrupted(&tr, m.vs, batches, &o);
    goto done;
  }
  if (!evaluated && evaluate(&m, &held, eval_batch, o.device, &held_cm) < 0) {
    fprintf(stderr, "error: evaluation failed: %s\n", tg_last_error());
    goto done;
  }
  double iou[CLASSES], miou = confusion_iou(&held_cm, iou);
  printf("held-out IoU:");
  for (int c = 0; c < CLASSES; c++)
    printf(" %s %.4f", class_names[c], iou[c]);
  printf("\nheld-out mIoU: %.4f (%lld scenes) after %lld steps in %.1f s\n", miou,
         (long long)held.n, (long long)step, ex_now() - t0);
  if (write_pictures(&m, &held, &hist, &o) < 0)
    goto done;
  status = o.save && ex_save_checkpoint(m.vs, o.save) < 0 ? EX_EXIT_FAILURE : 0;

done:
  ex_training_free(&tr);
  tg_varstore_free(m.vs);
  tg_batch_iter_free(batches);
  tg_tensor_free(scene_ids);
  ex_curve_free(&hist.loss);
  ex_curve_free(&hist.miou);
  ex_curve_free(&hist.held_miou);
  scenes_free(&train);
  scenes_free(&held);
  return ex_dist_end(ex_exit(status));
}
