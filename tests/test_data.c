/* Data loading: IDX files (raw and gzipped, malformed ones refused with the file and
 * the reason named), tg_mnist_load_dir, and the batch iterator's order, shuffling,
 * drop_last, rank shards, prefetching and seeking. */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

static char dir[64];

static int dir_setup(void **state) {
  snprintf(dir, sizeof dir, "/tmp/tg_test_data_XXXXXX");
  return mkdtemp(dir) ? test_setup(state) : -1;
}

static int dir_teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static const char *in_dir(const char *name) {
  static char buf[4][256];
  static int k;
  char *b = buf[k++ % 4];
  snprintf(b, 256, "%s/%s", dir, name);
  return b;
}

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* An IDX file of the given sizes whose bytes are (31 * i + 7) % 256, plus `extra`
 * bytes (negative: cut short); gzipped when the name ends in .gz. */
static void write_idx(const char *path, uint32_t magic, const uint32_t *dims, int ndim,
                      long extra) {
  size_t n = 1;
  for (int i = 0; i < ndim; i++)
    n *= dims[i];
  size_t len = 4 + 4 * (size_t)ndim + n;
  uint8_t *b = malloc(len + (extra > 0 ? (size_t)extra : 0));
  put_be32(b, magic);
  for (int i = 0; i < ndim; i++)
    put_be32(b + 4 + 4 * i, dims[i]);
  for (size_t i = 0; i < n + (extra > 0 ? (size_t)extra : 0); i++)
    b[4 + 4 * ndim + i] = (uint8_t)((31 * i + 7) % 256);
  len = (size_t)((long)len + extra);
  size_t plen = strlen(path);
  if (plen > 3 && !strcmp(path + plen - 3, ".gz")) {
    gzFile f = gzopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(gzwrite(f, b, (unsigned)len), (int)len);
    assert_int_equal(gzclose(f), Z_OK);
  } else {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, len, f), len);
    fclose(f);
  }
  free(b);
}

static void test_idx_load(void **state) {
  (void)state;
  const uint32_t dims[3] = {3, 2, 5};
  for (int gz = 0; gz < 2; gz++) {
    const char *path = in_dir(gz ? "a.idx.gz" : "a.idx");
    write_idx(path, 0x803, dims, 3, 0);
    tg_tensor *t = tg_idx_load(path, TG_F64);
    assert_ok(t);
    assert_int_equal(tg_ndim(t), 3);
    assert_int_equal(tg_size(t, 0), 3);
    assert_int_equal(tg_size(t, 2), 5);
    const double *p = tg_data(t);
    for (int i = 0; i < 30; i++)
      assert_true(p[i] == (double)((31 * i + 7) % 256));
    tg_tensor_free(t);
  }
  const uint32_t one[1] = {4};
  write_idx(in_dir("l.idx"), 0x801, one, 1, 0);
  tg_tensor *l = tg_idx_load(in_dir("l.idx"), TG_I64);
  assert_ok(l);
  assert_int_equal(((int64_t *)tg_data(l))[3], (31 * 3 + 7) % 256);
  tg_tensor_free(l);

  /* Malformed files: each error names the file and the rule. */
  write_idx(in_dir("bad"), 0x0d03, dims, 3, 0); /* float IDX */
  assert_error(!tg_idx_load(in_dir("bad"), TG_F32), in_dir("bad"),
               "bad magic number 0x00000d03", "unsigned bytes");
  write_idx(in_dir("bad"), 0x800, dims, 0, 0);
  assert_error(!tg_idx_load(in_dir("bad"), TG_F32), "bad magic number 0x00000800");
  write_idx(in_dir("bad"), 0x803, dims, 3, -1);
  assert_error(!tg_idx_load(in_dir("bad"), TG_F32), in_dir("bad"),
               "truncated: expected 30 bytes ([3, 2, 5] bytes), found only 29");
  write_idx(in_dir("bad.gz"), 0x803, dims, 3, -7);
  assert_error(!tg_idx_load(in_dir("bad.gz"), TG_F32), "bad.gz", "truncated");
  write_idx(in_dir("bad"), 0x803, dims, 3, 2);
  assert_error(!tg_idx_load(in_dir("bad"), TG_F32),
               "the file holds more data than its header declares ([3, 2, 5] bytes)");
  const uint32_t zero[3] = {3, 0, 5};
  write_idx(in_dir("bad"), 0x803, zero, 3, 0);
  assert_error(!tg_idx_load(in_dir("bad"), TG_F32), "unusable sizes [3, 0, 5]");
  write_idx(in_dir("bad"), 0x803, dims, 3, -40);
  assert_error(!tg_idx_load(in_dir("bad"), TG_F32), "truncated", "the IDX header");
  assert_error(!tg_idx_load(in_dir("missing"), TG_F32), "cannot open", in_dir("missing"),
               "No such file");
  /* A gzip stream whose deflate data is corrupt. */
  FILE *f = fopen(in_dir("junk.gz"), "wb");
  const uint8_t junk[] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff};
  fwrite(junk, 1, sizeof junk, f);
  fclose(f);
  assert_error(!tg_idx_load(in_dir("junk.gz"), TG_F32), "junk.gz", "cannot read");
}

static void write_mnist(int n_train, int n_test, uint32_t label_magic) {
  const char *names[4] = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte",
                          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte.gz"};
  for (int k = 0; k < 4; k++) {
    int n = k < 2 ? n_train : n_test;
    const uint32_t im[3] = {(uint32_t)n, 4, 3}, lab[1] = {(uint32_t)n};
    bool images = k % 2 == 0;
    write_idx(in_dir(names[k]), images ? 0x803 : label_magic, images ? im : lab,
              images ? 3 : 1, 0);
  }
}

static void test_mnist_load_dir(void **state) {
  (void)state;
  write_mnist(5, 3, 0x801);
  tg_mnist d;
  /* The generated labels exceed 9: (31 * 1 + 7) % 256 = 38 at index 1. */
  assert_error(tg_mnist_load_dir(dir, &d) < 0, "train-labels-idx1-ubyte",
               "label 38 at index 1 is out of range (expected 0..9)");
  assert_null(d.train_images);
  /* Labels files of 0..9. */
  for (int k = 0; k < 2; k++) {
    const char *path =
        in_dir(k ? "t10k-labels-idx1-ubyte.gz" : "train-labels-idx1-ubyte");
    uint8_t b[8 + 5];
    put_be32(b, 0x801);
    put_be32(b + 4, k ? 3 : 5);
    for (int i = 0; i < 5; i++)
      b[8 + i] = (uint8_t)(9 - i);
    gzFile f = gzopen(path, k ? "wb" : "wbT"); /* T: uncompressed */
    gzwrite(f, b, k ? 11 : 13);
    gzclose(f);
  }
  assert_ok(tg_mnist_load_dir(dir, &d) == 0);
  assert_int_equal(d.labels, 10);
  assert_int_equal(tg_size(d.train_images, 0), 5);
  assert_int_equal(tg_size(d.train_images, 1), 1);
  assert_int_equal(tg_size(d.train_images, 2), 4);
  assert_int_equal(tg_size(d.test_images, 3), 3);
  assert_int_equal(tg_dtype_of(d.train_labels), TG_I64);
  const float *px = tg_data(d.test_images);
  for (int i = 0; i < 36; i++)
    assert_true(px[i] == (float)((31 * i + 7) % 256) / 255.0f);
  assert_int_equal(((int64_t *)tg_data(d.test_labels))[2], 7);
  tg_mnist_free(&d);
  tg_mnist_free(&d); /* a second free is a no-op */

  const uint32_t im[3] = {4, 4, 3};
  write_idx(in_dir("t10k-images-idx3-ubyte"), 0x803, im, 3, 0);
  assert_error(tg_mnist_load_dir(dir, &d) < 0, "t10k-images-idx3-ubyte holds 4 images",
               "t10k-labels-idx1-ubyte.gz holds 3 labels");
  write_idx(in_dir("t10k-images-idx3-ubyte"), 0x801, im, 1, 0);
  assert_error(tg_mnist_load_dir(dir, &d) < 0,
               "bad magic number 0x00000801 (expected 0x00000803");
  unlink(in_dir("t10k-images-idx3-ubyte"));
  assert_error(tg_mnist_load_dir(dir, &d) < 0, "neither", "t10k-images-idx3-ubyte.gz",
               "exists");
}

/* Rows [0, n) of x: x[i] = 10 i, 10 i + 1 (float), labels y[i] = i. */
static void dataset(int64_t n, tg_tensor **x, tg_tensor **y) {
  *x = tg_empty(TG_SHAPE(n, 2), TG_F32, TG_CPU);
  *y = tg_arange(0, (double)n, 1, TG_I64, TG_CPU);
  float *p = tg_data(*x);
  for (int64_t i = 0; i < 2 * n; i++)
    p[i] = (float)(10 * (i / 2) + i % 2);
}

/* Runs one epoch, writing the example indices it yields into out (returns how many)
 * and checking that x rows match the labels. */
static int64_t epoch(tg_batch_iter *it, int64_t *out, int64_t *batches) {
  int64_t k = 0, nb = 0;
  tg_tensor *x, *y;
  int r;
  while ((r = tg_batch_iter_next(it, &x, &y)) > 0) {
    const float *px = tg_data(x);
    const int64_t *py = tg_data(y);
    assert_int_equal(tg_size(x, 0), tg_size(y, 0));
    for (int64_t i = 0; i < tg_size(y, 0); i++) {
      assert_true(px[2 * i] == (float)(10 * py[i]));
      assert_true(px[2 * i + 1] == (float)(10 * py[i] + 1));
      out[k++] = py[i];
    }
    nb++;
    tg_tensor_free(x);
    tg_tensor_free(y);
  }
  assert_int_equal(r, 0);
  *batches = nb;
  return k;
}

static void test_batch_iter(void **state) {
  (void)state;
  enum { N = 23 };
  tg_tensor *x, *y;
  dataset(N, &x, &y);
  int64_t a[2 * N], b[2 * N], nb;

  /* In order, last partial batch kept or dropped. */
  tg_batch_config c = tg_batch_config_default();
  tg_batch_iter *it = tg_batch_iter_new(x, y, 5, c);
  assert_ok(it);
  assert_int_equal(tg_batch_iter_len(it), 5);
  assert_int_equal(epoch(it, a, &nb), N);
  assert_int_equal(nb, 5);
  for (int i = 0; i < N; i++)
    assert_int_equal(a[i], i);
  tg_batch_iter_free(it);
  c.drop_last = true;
  it = tg_batch_iter_new(x, y, 5, c);
  assert_int_equal(tg_batch_iter_len(it), 4);
  assert_int_equal(epoch(it, a, &nb), 20);
  tg_batch_iter_free(it);

  /* Shuffled: a permutation, a new one each epoch, the same for the same seed, with or
   * without prefetching. */
  c = tg_batch_config_default();
  c.shuffle = true;
  c.seed = 42;
  it = tg_batch_iter_new(x, y, 4, c);
  c.prefetch = true;
  tg_batch_iter *pf = tg_batch_iter_new(x, y, 4, c);
  int64_t first[N];
  for (int e = 0; e < 3; e++) {
    assert_int_equal(epoch(it, a, &nb), N);
    assert_int_equal(epoch(pf, b, &nb), N);
    assert_memory_equal(a, b, sizeof(int64_t) * N);
    int seen[N] = {0}, moved = 0;
    for (int i = 0; i < N; i++) {
      seen[a[i]]++;
      moved += a[i] != i;
    }
    for (int i = 0; i < N; i++)
      assert_int_equal(seen[i], 1);
    assert_true(moved > N / 2);
    if (e == 0)
      memcpy(first, a, sizeof first);
    else
      assert_true(memcmp(first, a, sizeof first) != 0);
  }
  /* Seeking back to epoch 0, batch 2 replays that epoch from its third batch. */
  assert_ok(tg_batch_iter_seek(pf, 0, 2) == 0);
  int64_t e, p;
  tg_batch_iter_position(pf, &e, &p);
  assert_int_equal(e, 0);
  assert_int_equal(p, 2);
  assert_int_equal(epoch(pf, b, &nb), N - 8);
  assert_memory_equal(b, first + 8, sizeof(int64_t) * (N - 8));
  tg_batch_iter_position(pf, &e, &p);
  assert_int_equal(e, 1);
  assert_int_equal(p, 0);
  /* The position goes into a state dict and back (the seed must match). */
  tg_tensor_dict *d = tg_tensor_dict_new();
  assert_ok(tg_batch_iter_seek(pf, 2, 3) == 0);
  assert_ok(tg_batch_iter_state_dict(pf, d, "data.") == 0);
  assert_ok(tg_batch_iter_seek(pf, 0, 0) == 0);
  assert_ok(tg_batch_iter_load_state_dict(pf, d, "data.") == 0);
  tg_batch_iter_position(pf, &e, &p);
  assert_int_equal(e, 2);
  assert_int_equal(p, 3);
  assert_error(tg_batch_iter_load_state_dict(pf, d, NULL) < 0, "lacks 'position'");
  assert_ok(tg_batch_iter_seek(pf, 1, 0) == 0);
  /* Another seed, another order. */
  c.seed = 43;
  tg_batch_iter *other = tg_batch_iter_new(x, y, 4, c);
  epoch(other, b, &nb);
  assert_true(memcmp(first, b, sizeof first) != 0);
  assert_error(tg_batch_iter_load_state_dict(other, d, "data.") < 0,
               "shuffling from seed 42, this one shuffles from 43");
  tg_tensor_dict_free(d);
  tg_batch_iter_free(other);
  tg_batch_iter_free(it);
  /* Freed with a prefetch in flight. */
  tg_tensor *bx, *by;
  assert_int_equal(tg_batch_iter_next(pf, &bx, &by), 1);
  tg_tensor_free(bx);
  tg_tensor_free(by);
  tg_batch_iter_free(pf);

  /* Shards: ceil(N/world) rows per rank, together the shuffled epoch padded by
   * wrapping around, the same number of batches on every rank. */
  for (int world = 1; world <= 4; world++) {
    int count[N] = {0};
    int64_t shuffled[N];
    c = tg_batch_config_default();
    c.shuffle = true;
    c.seed = 7;
    it = tg_batch_iter_new(x, y, N, c); /* one batch: the whole permutation */
    epoch(it, shuffled, &nb);
    tg_batch_iter_free(it);
    int64_t per = (N + world - 1) / world;
    for (int rank = 0; rank < world; rank++) {
      c.rank = rank;
      c.world = world;
      it = tg_batch_iter_new(x, y, 3, c);
      assert_int_equal(tg_batch_iter_len(it), (per + 2) / 3);
      assert_int_equal(epoch(it, a, &nb), per);
      for (int64_t k = 0; k < per; k++) {
        assert_int_equal(a[k], shuffled[(rank + k * world) % N]);
        count[a[k]]++;
      }
      tg_batch_iter_free(it);
    }
    int total = 0;
    for (int i = 0; i < N; i++) {
      assert_true(count[i] >= 1);
      total += count[i];
    }
    assert_int_equal(total, per * world);
  }

  /* Images alone. */
  it = tg_batch_iter_new(x, NULL, 10, tg_batch_config_default());
  assert_int_equal(tg_batch_iter_next(it, &bx, &by), 1);
  assert_null(by);
  assert_int_equal(tg_size(bx, 0), 10);
  tg_tensor_free(bx);
  tg_batch_iter_free(it);

  /* Batches land in the caller's scope. */
  it = tg_batch_iter_new(x, y, 10, tg_batch_config_default());
  tg_scope_begin();
  assert_int_equal(tg_batch_iter_next(it, &bx, &by), 1);
  assert_ok(tg_scope_end() == 0); /* LeakSanitizer checks that bx, by went with it */
  tg_batch_iter_free(it);

  /* Bad arguments. */
  c = tg_batch_config_default();
  assert_error(!tg_batch_iter_new(x, y, 0, c), "batch_size should be a positive integer",
               "batch_size=0");
  c.rank = 2;
  c.world = 2;
  assert_error(!tg_batch_iter_new(x, y, 4, c), "Invalid rank 2",
               "rank should be in the interval [0, 1]");
  c = tg_batch_config_default();
  tg_tensor *y5 = tg_arange(0, 5, 1, TG_I64, TG_CPU);
  assert_error(!tg_batch_iter_new(x, y5, 4, c),
               "labels hold 5 examples but images hold 23");
  tg_tensor *s = tg_scalar(1, TG_F32, TG_CPU);
  assert_error(!tg_batch_iter_new(s, NULL, 4, c), "first (example) dimension");
  it = tg_batch_iter_new(x, y, 4, c);
  assert_error(tg_batch_iter_seek(it, 0, 7) < 0, "out of range", "6 batches");
  assert_error(tg_batch_iter_next(it, NULL, NULL) < 0, "argument 'x' is NULL");
  tg_batch_iter_free(it);
  tg_tensor_free(s);
  tg_tensor_free(y5);
  tg_tensor_free(x);
  tg_tensor_free(y);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_idx_load),
      cmocka_unit_test(test_mnist_load_dir),
      cmocka_unit_test(test_batch_iter),
  };
  return cmocka_run_group_tests(tests, dir_setup, dir_teardown);
}
