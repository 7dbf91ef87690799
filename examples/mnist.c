/* mnist: a small GroupNorm conv net on MNIST-format images (Fashion-MNIST by default).
 *
 *   conv 1->32 3x3 pad 1, GroupNorm(8, 32), ReLU, max-pool 2
 *   conv 32->64 3x3 pad 1, GroupNorm(8, 64), ReLU, max-pool 2
 *   linear 64*7*7 -> 10, cross-entropy, SGD with momentum 0.9 and a cosine schedule
 *
 * The variables are named as the state_dict of the equivalent PyTorch module
 * (conv1.weight, gn1.weight, conv2.bias, fc.weight, ...), so --load takes weights
 * exported from PyTorch. Inputs are pixel/255 normalised to [-1, 1], i.e.
 * transforms.Normalize((0.5,), (0.5,)). */
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SIDE = 28, NUM_CLASSES = 10 };

typedef struct {
  int64_t n;
  uint8_t *pixels; /* n * SIDE * SIDE */
  uint8_t *labels;
} dataset;

static void dataset_free(dataset *d) {
  free(d->pixels);
  free(d->labels);
  memset(d, 0, sizeof *d);
}

static int dataset_load(const char *dir, const char *images_name, const char *labels_name,
                        dataset *d) {
  memset(d, 0, sizeof *d);
  char images_path[4096], labels_path[4096];
  if (!ex_idx_path(dir, images_name, images_path, sizeof images_path) ||
      !ex_idx_path(dir, labels_name, labels_path, sizeof labels_path))
    return -1;
  ex_idx_images im;
  if (ex_idx_read_images(images_path, &im) < 0)
    return -1;
  if (im.rows != SIDE || im.cols != SIDE) {
    fprintf(stderr, "error: %s: images are %lldx%lld pixels, this network takes %dx%d\n",
            images_path, (long long)im.rows, (long long)im.cols, SIDE, SIDE);
    free(im.pixels);
    return -1;
  }
  int64_t n_labels;
  uint8_t *labels;
  if (ex_idx_read_labels(labels_path, NUM_CLASSES, &n_labels, &labels) < 0) {
    free(im.pixels);
    return -1;
  }
  if (n_labels != im.n) {
    fprintf(stderr, "error: %s holds %lld images but %s holds %lld labels\n", images_path,
            (long long)im.n, labels_path, (long long)n_labels);
    free(im.pixels);
    free(labels);
    return -1;
  }
  d->n = im.n;
  d->pixels = im.pixels;
  d->labels = labels;
  return 0;
}

/* ------------------------------------------------------------------- model -- */
typedef struct {
  tg_varstore *vs;
  tg_module *conv1, *gn1, *conv2, *gn2, *fc;
} net;

static int net_build(net *m, tg_device device) {
  memset(m, 0, sizeof *m);
  m->vs = tg_varstore_new(device);
  if (!m->vs)
    return -1;
  tg_path *root = tg_varstore_root(m->vs);
  tg_conv2d_config cc = tg_conv2d_config_default();
  cc.padding = 1;
  tg_group_norm_config gc = tg_group_norm_config_default();
  m->conv1 = tg_nn_conv2d(tg_path_sub(root, "conv1"), 1, 32, 3, cc);
  m->gn1 = tg_nn_group_norm(tg_path_sub(root, "gn1"), 8, 32, gc);
  m->conv2 = tg_nn_conv2d(tg_path_sub(root, "conv2"), 32, 64, 3, cc);
  m->gn2 = tg_nn_group_norm(tg_path_sub(root, "gn2"), 8, 64, gc);
  m->fc = tg_nn_linear(tg_path_sub(root, "fc"), 64 * 7 * 7, NUM_CLASSES,
                       tg_linear_config_default());
  return m->conv1 && m->gn1 && m->conv2 && m->gn2 && m->fc ? 0 : -1;
}

/* x [N, 1, 28, 28] -> logits [N, 10]. Intermediates belong to the caller's scope. */
static tg_tensor *net_forward(net *m, const tg_tensor *x, bool train) {
  const int64_t two[2] = {2, 2}, zero[2] = {0, 0};
  tg_tensor *h = tg_module_forward(m->conv1, x, train);
  h = tg_relu(tg_module_forward(m->gn1, h, train));
  h = tg_max_pool2d(h, two, two, zero);
  h = tg_module_forward(m->conv2, h, train);
  h = tg_relu(tg_module_forward(m->gn2, h, train));
  h = tg_max_pool2d(h, two, two, zero);
  return tg_module_forward(m->fc, tg_flatten(h, 1, -1), train);
}

/* Images idx[0..n) as a [n, 1, 28, 28] float tensor on device. */
static tg_tensor *batch_images(const dataset *d, const int64_t *idx, int64_t n,
                               tg_device device) {
  tg_tensor *x = tg_empty(TG_SHAPE(n, 1, SIDE, SIDE), TG_F32, TG_CPU);
  if (!x)
    return NULL;
  float *p = tg_data(x);
  for (int64_t i = 0; i < n; i++) {
    const uint8_t *src = d->pixels + idx[i] * SIDE * SIDE;
    for (int k = 0; k < SIDE * SIDE; k++)
      p[i * SIDE * SIDE + k] = (float)src[k] / 127.5f - 1.0f;
  }
  if (device.type == TG_DEVICE_CPU)
    return x;
  tg_tensor *on_device = tg_tensor_to(x, device);
  tg_tensor_free(x);
  return on_device;
}

static tg_tensor *batch_labels(const dataset *d, const int64_t *idx, int64_t n,
                               tg_device device) {
  tg_tensor *y = tg_empty(TG_SHAPE(n), TG_I64, TG_CPU);
  if (!y)
    return NULL;
  int64_t *p = tg_data(y);
  for (int64_t i = 0; i < n; i++)
    p[i] = d->labels[idx[i]];
  if (device.type == TG_DEVICE_CPU)
    return y;
  tg_tensor *on_device = tg_tensor_to(y, device);
  tg_tensor_free(y);
  return on_device;
}

/* Number of rows of logits whose argmax is the label; -1 on error. */
static int64_t count_correct(const tg_tensor *logits, const dataset *d,
                             const int64_t *idx, int64_t n) {
  tg_tensor *pred = tg_argmax(logits, 1, false);
  int64_t *host = malloc((size_t)n * sizeof *host);
  int64_t correct = -1;
  if (pred && host && tg_tensor_copy_to_host(pred, host, (size_t)n * sizeof *host) == 0) {
    correct = 0;
    for (int64_t i = 0; i < n; i++)
      correct += host[i] == d->labels[idx[i]];
  }
  free(host);
  tg_tensor_free(pred);
  return correct;
}

/* Accuracy on all of d, in eval mode without a tape; negative on error. */
static double evaluate(net *m, const dataset *d, int64_t batch, tg_device device) {
  int64_t *idx = malloc((size_t)batch * sizeof *idx), correct = 0;
  if (!idx)
    return -1;
  tg_no_grad_begin();
  for (int64_t start = 0; start < d->n && correct >= 0; start += batch) {
    int64_t n = d->n - start < batch ? d->n - start : batch;
    for (int64_t i = 0; i < n; i++)
      idx[i] = start + i;
    tg_scope_begin();
    tg_tensor *logits = net_forward(m, batch_images(d, idx, n, device), false);
    int64_t c = logits ? count_correct(logits, d, idx, n) : -1;
    correct = c < 0 ? -1 : correct + c;
    tg_scope_end();
  }
  tg_no_grad_end();
  free(idx);
  return correct < 0 ? -1 : (double)correct / (double)d->n;
}


/* Training curve: smoothed train loss per logged step and test accuracy per epoch. */
typedef struct {
  double *step, *loss;
  int64_t n, cap;
  double eval_step[1024], eval_acc[1024];
  int n_eval;
} history;

static void history_add(history *h, double step, double loss) {
  if (h->n == h->cap) {
    h->cap = h->cap ? 2 * h->cap : 256;
    h->step = realloc(h->step, (size_t)h->cap * sizeof *h->step);
    h->loss = realloc(h->loss, (size_t)h->cap * sizeof *h->loss);
  }
  h->step[h->n] = step;
  h->loss[h->n++] = loss;
}

static void write_curves(const history *h, const char *out_dir) {
  if (h->n == 0 || ex_mkdir_p(out_dir) < 0)
    return;
  ex_canvas c;
  if (ex_canvas_init(&c, 960, 360, (ex_color){255, 255, 255}) < 0)
    return;
  ex_series loss = {"train loss", h->step, h->loss, h->n, {200, 60, 40}, false};
  ex_series acc = {"test accuracy", h->eval_step,  h->eval_acc,
                   h->n_eval,       {40, 90, 200}, true};
  ex_plot(&c, 0, 0, 480, 360, "TRAIN LOSS", "step", &loss, 1, 0, 0);
  ex_plot(&c, 480, 0, 480, 360, "TEST ACCURACY %", "step", &acc, 1, 0, 0);
  char path[4096];
  snprintf(path, sizeof path, "%s/mnist_curves.png", out_dir);
  if (ex_png_write(path, &c) == 0)
    printf("wrote %s\n", path);
  ex_canvas_free(&c);
}

/* --------------------------------------------------------------------- main -- */
int main(int argc, char **argv) {
  ex_common_options o = {.device_name = "cpu",
                         .epochs = 4,
                         .batch = 64,
                         .lr = 0.01,
                         .seed = 0,
                         .out = "out"};
  const char *data_dir = "/usr/share/datasets/fashion-mnist";
  int64_t eval_batch = 250;
  ex_flag flags[16] = {
      {"data", EX_FLAG_STRING, &data_dir, 0, 0, "DIR",
       "MNIST IDX files (train-images-idx3-ubyte[.gz], ...)"},
      {"eval-batch", EX_FLAG_I64, &eval_batch, 1, 1 << 20, "N",
       "images per evaluation batch"},
  };
  int n_flags = ex_common_flags(flags, 2, &o);
  int rc = ex_parse_flags(argc, argv,
                          "Trains a GroupNorm conv net on MNIST-format images and "
                          "reports its test accuracy.",
                          flags, n_flags);
  if (rc != 0)
    return rc > 0 ? 0 : EX_EXIT_USAGE;
  if ((rc = ex_common_apply(&o)) != 0)
    return rc;

  dataset train, test;
  if (dataset_load(data_dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                   &train) < 0)
    return EX_EXIT_FAILURE;
  if (dataset_load(data_dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", &test) <
      0) {
    dataset_free(&train);
    return EX_EXIT_FAILURE;
  }

  net m = {0};
  int status = EX_EXIT_FAILURE;
  tg_optimizer *opt = NULL;
  int64_t *order = malloc((size_t)train.n * sizeof *order);
  history hist = {0};
  if (!order || net_build(&m, o.device) < 0) {
    fprintf(stderr, "error: cannot build the network: %s\n", tg_last_error());
    goto done;
  }
  ex_plan plan;
  if (!(opt = ex_training_setup(m.vs, &o, train.n, &plan)))
    goto done;
  int64_t steps_per_epoch = plan.steps_per_epoch, total = plan.total;
  int epochs = plan.epochs;
  printf("mnist: %lld train and %lld test images from %s; %lld parameters; device %s, "
         "%d threads\n",
         (long long)train.n, (long long)test.n, data_dir, (long long)ex_num_params(m.vs),
         o.device_name, tg_get_num_threads());
  if (total == 0)
    printf("no training steps: evaluating only\n");
  else
    printf("training: %d epoch(s), %lld steps of %d images, SGD lr %g (cosine), "
           "momentum 0.9, seed %lld\n",
           epochs, (long long)total, o.batch, o.lr, (long long)o.seed);
  fflush(stdout);

  ex_progress prog;
  ex_progress_init(&prog, total, steps_per_epoch / 10);
  double t0 = ex_now(), test_acc = -1;
  int64_t step = 0;
  for (int epoch = 1; epoch <= epochs && !ex_interrupted(); epoch++) {
    for (int64_t i = 0; i < train.n; i++)
      order[i] = i;
    ex_rng rng;
    ex_rng_seed(&rng, ex_hash2((uint64_t)o.seed, (uint64_t)epoch));
    ex_rng_shuffle(&rng, order, train.n);
    double loss_sum = 0, smooth = NAN;
    int64_t correct = 0, seen = 0;
    int64_t epoch_steps = total - step < steps_per_epoch ? total - step : steps_per_epoch;
    for (int64_t s = 0; s < epoch_steps && !ex_interrupted(); s++, step++) {
      int64_t start = s * o.batch;
      int64_t n = train.n - start < o.batch ? train.n - start : o.batch;
      const int64_t *idx = order + start;
      tg_optimizer_set_lr(opt, o.lr * 0.5 * (1 + cos(M_PI * (double)step / total)));

      tg_scope_begin();
      tg_tensor *y = batch_labels(&train, idx, n, o.device);
      tg_tensor *logits = net_forward(&m, batch_images(&train, idx, n, o.device), true);
      tg_tensor *loss = tg_cross_entropy(logits, y, TG_REDUCTION_MEAN, -100);
      tg_optimizer_zero_grad(opt);
      bool ok = loss && tg_backward(loss) == 0 && tg_optimizer_step(opt) == 0;
      double loss_v = ok ? tg_item(loss) : NAN;
      int64_t c = ok ? count_correct(logits, &train, idx, n) : -1;
      tg_scope_end();
      if (!ok || c < 0) {
        ex_progress_finish(&prog);
        fprintf(stderr, "error: training step %lld failed: %s\n", (long long)step + 1,
                tg_last_error());
        goto done;
      }

      loss_sum += loss_v * (double)n;
      correct += c;
      seen += n;
      smooth = isnan(smooth) ? loss_v : 0.98 * smooth + 0.02 * loss_v;
      if ((s + 1) % (steps_per_epoch / 50 > 0 ? steps_per_epoch / 50 : 1) == 0)
        history_add(&hist, (double)step + 1, smooth);
      char metrics[96];
      snprintf(metrics, sizeof metrics, "loss %.4f acc %5.2f%%", loss_sum / (double)seen,
               100.0 * (double)correct / (double)seen);
      ex_progress_step(&prog, epoch, epochs, s + 1, steps_per_epoch, n, metrics);
    }
    if (ex_interrupted())
      break;
    test_acc = evaluate(&m, &test, eval_batch, o.device);
    if (test_acc < 0) {
      fprintf(stderr, "error: evaluation failed: %s\n", tg_last_error());
      goto done;
    }
    if (hist.n_eval < 1024) {
      hist.eval_step[hist.n_eval] = (double)step;
      hist.eval_acc[hist.n_eval++] = 100 * test_acc;
    }
    ex_progress_print(
        &prog, "epoch %d/%d: train loss %.4f acc %.2f%% | test acc %.2f%% | %.1f s",
        epoch, epochs, loss_sum / (double)(seen ? seen : 1),
        100.0 * (double)correct / (double)(seen ? seen : 1), 100 * test_acc,
        ex_now() - t0);
  }
  ex_progress_finish(&prog);

  if (ex_interrupted()) {
    char path[4096];
    ex_interrupt_checkpoint(&o, path, sizeof path);
    printf("interrupted after %lld steps\n", (long long)step);
    status = ex_save_checkpoint(m.vs, path) == 0 ? 0 : EX_EXIT_FAILURE;
    goto done;
  }
  if (test_acc < 0 && (test_acc = evaluate(&m, &test, eval_batch, o.device)) < 0) {
    fprintf(stderr, "error: evaluation failed: %s\n", tg_last_error());
    goto done;
  }
  printf("test accuracy: %.2f%% (%lld images) after %lld steps in %.1f s\n",
         100 * test_acc, (long long)test.n, (long long)step, ex_now() - t0);
  write_curves(&hist, o.out);
  status = 0;
  if (o.save && ex_save_checkpoint(m.vs, o.save) < 0)
    status = EX_EXIT_FAILURE;

done:
  if (opt)
    tg_optimizer_free(opt);
  if (m.vs)
    tg_varstore_free(m.vs);
  free(order);
  free(hist.step);
  free(hist.loss);
  dataset_free(&train);
  dataset_free(&test);
  return status;
}
