/* mnist: a small GroupNorm conv net (ex_convnet of nets.h) on MNIST-format images
 * (Fashion-MNIST by default): cross-entropy, SGD with momentum 0.9 and a cosine
 * schedule.
 *
 * The variables are named as the state_dict of the equivalent PyTorch module
 * (conv1.weight, gn1.weight, conv2.bias, fc.weight, ...), so --load takes weights
 * exported from PyTorch. Inputs are pixel/255 normalised to [-1, 1], i.e.
 * transforms.Normalize((0.5,), (0.5,)). */
#include "common.h"
#include "nets.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SIDE = EX_CONVNET_SIDE, NUM_CLASSES = EX_CONVNET_CLASSES };

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
  return ex_to_device(x, device);
}

static tg_tensor *batch_labels(const dataset *d, const int64_t *idx, int64_t n,
                               tg_device device) {
  tg_tensor *y = tg_empty(TG_SHAPE(n), TG_I64, TG_CPU);
  if (!y)
    return NULL;
  int64_t *p = tg_data(y);
  for (int64_t i = 0; i < n; i++)
    p[i] = d->labels[idx[i]];
  return ex_to_device(y, device);
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
static double evaluate(const ex_convnet *m, const dataset *d, int64_t batch,
                       tg_device device) {
  int64_t *idx = malloc((size_t)batch * sizeof *idx), correct = 0;
  if (!idx)
    return -1;
  tg_no_grad_begin();
  for (int64_t start = 0; start < d->n && correct >= 0; start += batch) {
    int64_t n = d->n - start < batch ? d->n - start : batch;
    for (int64_t i = 0; i < n; i++)
      idx[i] = start + i;
    tg_scope_begin();
    tg_tensor *logits = ex_convnet_forward(m, batch_images(d, idx, n, device), false);
    int64_t c = logits ? count_correct(logits, d, idx, n) : -1;
    correct = c < 0 ? -1 : correct + c;
    tg_scope_end();
  }
  tg_no_grad_end();
  free(idx);
  return correct < 0 ? -1 : (double)correct / (double)d->n;
}

/* Training curves: the smoothed train loss per logged step and the test accuracy per
 * epoch. Returns 0, or -1 after printing the error. */
static int write_curves(const ex_curve *loss_c, const ex_curve *acc_c,
                        const char *out_dir) {
  if (loss_c->n == 0)
    return 0;
  if (ex_mkdir_p(out_dir) < 0)
    return -1;
  ex_canvas c;
  if (ex_canvas_init(&c, 960, 360, (ex_color){255, 255, 255}) < 0) {
    fprintf(stderr, "error: out of memory for the training curves\n");
    return -1;
  }
  ex_series loss = {"train loss", loss_c->x, loss_c->y, loss_c->n, {200, 60, 40}, false};
  ex_series acc = {"test accuracy", acc_c->x, acc_c->y, acc_c->n, {40, 90, 200}, true};
  ex_plot(&c, 0, 0, 480, 360, "TRAIN LOSS", "step", &loss, 1, 0, 0);
  ex_plot(&c, 480, 0, 480, 360, "TEST ACCURACY %", "step", &acc, 1, 0, 0);
  char path[4096];
  snprintf(path, sizeof path, "%s/mnist_curves.png", out_dir);
  int rc = ex_png_write(path, &c);
  if (rc == 0)
    printf("wrote %s\n", path);
  ex_canvas_free(&c);
  return rc;
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
    return rc > 0 ? ex_exit(0) : EX_EXIT_USAGE;
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

  ex_convnet m = {0};
  int status = EX_EXIT_FAILURE;
  tg_optimizer *opt = NULL;
  int64_t *order = malloc((size_t)train.n * sizeof *order);
  ex_curve loss_curve = {0}, acc_curve = {0};
  if (!order) {
    fprintf(stderr, "error: out of memory for %lld training indices\n",
            (long long)train.n);
    goto done;
  }
  if (ex_convnet_build(&m, o.device) < 0) {
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
  ex_print_plan(&plan, &o, "images");

  ex_progress prog;
  ex_progress_init(&prog, total, steps_per_epoch / 10);
  double t0 = ex_now(), test_acc = -1;
  int64_t step = 0;
  for (int epoch = 1; epoch <= epochs && !ex_interrupted(); epoch++) {
    ex_epoch_order(order, train.n, ex_hash2((uint64_t)o.seed, (uint64_t)epoch));
    double loss_sum = 0, smooth = NAN;
    int64_t correct = 0, seen = 0;
    int64_t epoch_steps = total - step < steps_per_epoch ? total - step : steps_per_epoch;
    for (int64_t s = 0; s < epoch_steps && !ex_interrupted(); s++, step++) {
      int64_t start = s * o.batch;
      int64_t n = train.n - start < o.batch ? train.n - start : o.batch;
      const int64_t *idx = order + start;
      tg_optimizer_set_lr(opt, ex_cosine_lr(&o, step, total));

      tg_scope_begin();
      tg_tensor *y = batch_labels(&train, idx, n, o.device);
      tg_tensor *logits =
          ex_convnet_forward(&m, batch_images(&train, idx, n, o.device), true);
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
        ex_curve_add(&loss_curve, (double)step + 1, smooth);
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
    ex_curve_add(&acc_curve, (double)step, 100 * test_acc);
    ex_progress_print(
        &prog, "epoch %d/%d: train loss %.4f acc %.2f%% | test acc %.2f%% | %.1f s",
        epoch, epochs, loss_sum / (double)(seen ? seen : 1),
        100.0 * (double)correct / (double)(seen ? seen : 1), 100 * test_acc,
        ex_now() - t0);
  }
  ex_progress_finish(&prog);

  if (ex_interrupted()) {
    status = ex_save_interrupted(m.vs, &o, step);
    goto done;
  }
  if (test_acc < 0 && (test_acc = evaluate(&m, &test, eval_batch, o.device)) < 0) {
    fprintf(stderr, "error: evaluation failed: %s\n", tg_last_error());
    goto done;
  }
  printf("test accuracy: %.2f%% (%lld images) after %lld steps in %.1f s\n",
         100 * test_acc, (long long)test.n, (long long)step, ex_now() - t0);
  if (write_curves(&loss_curve, &acc_curve, o.out) < 0)
    goto done;
  status = o.save && ex_save_checkpoint(m.vs, o.save) < 0 ? EX_EXIT_FAILURE : 0;

done:
  tg_optimizer_free(opt);
  tg_varstore_free(m.vs);
  free(order);
  ex_curve_free(&loss_curve);
  ex_curve_free(&acc_curve);
  dataset_free(&train);
  dataset_free(&test);
  return ex_exit(status);
}
