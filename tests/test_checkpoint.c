/* safetensors checkpoints: a PyTorch-written file loads by name and reproduces
 * PyTorch's forward (tests/ref/gen_checkpoint.py), our files are byte-identical to
 * the safetensors package's, round-trip exactly, and every malformed or mismatched
 * file is an error naming the problem that leaves the store unchanged. */
#include "common.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[64];

static int group_setup(void **state) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/tg_checkpoint_XXXXXX");
  if (!mkdtemp(tmpdir))
    return -1;
  return test_setup(state);
}

static int group_teardown(void **state) {
  (void)state;
  DIR *d = opendir(tmpdir);
  struct dirent *e;
  char path[512];
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.')
      continue;
    snprintf(path, sizeof path, "%s/%s", tmpdir, e->d_name);
    unlink(path);
  }
  if (d)
    closedir(d);
  rmdir(tmpdir);
  return 0;
}

static const char *tmp_path(const char *name) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  return path;
}

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  fclose(f);
}

/* All variables' bytes, concatenated: a snapshot to prove a failed load changed
 * nothing. */
static unsigned char *snapshot(tg_varstore *vs, size_t *len) {
  size_t total = 0;
  for (int i = 0; i < tg_varstore_len(vs); i++) {
    tg_tensor *t = tg_varstore_var(vs, i, NULL);
    total += (size_t)tg_numel(t) * tg_dtype_size(tg_dtype_of(t));
  }
  unsigned char *buf = malloc(total ? total : 1), *p = buf;
  for (int i = 0; i < tg_varstore_len(vs); i++) {
    tg_tensor *t = tg_varstore_var(vs, i, NULL);
    size_t n = (size_t)tg_numel(t) * tg_dtype_size(tg_dtype_of(t));
    memcpy(p, tg_data(t), n);
    p += n;
  }
  *len = total;
  return buf;
}

static void assert_unchanged(tg_varstore *vs, const unsigned char *before, size_t len) {
  size_t now_len;
  unsigned char *now = snapshot(vs, &now_len);
  assert_int_equal(now_len, len);
  assert_memory_equal(now, before, len);
  free(now);
}

/* ----------------------------------------------------------- the model -- */

static tg_tensor *flatten_fn(const tg_tensor *x, bool train, void *ctx) {
  (void)train;
  (void)ctx;
  return tg_flatten(x, 1, -1);
}

/* gen_checkpoint.py's Net: conv1, gn, relu, conv2, bn, relu, flatten, head. */
static tg_module *model(tg_varstore *vs) {
  tg_path *root = tg_varstore_root(vs), *enc = tg_path_sub(root, "enc");
  tg_conv2d_config c = tg_conv2d_config_default();
  c.padding = 1;
  tg_module *seq = tg_nn_sequential(vs);
  assert_ok(tg_sequential_add(seq, tg_nn_conv2d(tg_path_sub(enc, "conv1"), 3, 8, 3, c)) ==
            0);
  assert_ok(tg_sequential_add(seq, tg_nn_group_norm(tg_path_sub(enc, "gn"), 2, 8,
                                                    tg_group_norm_config_default())) ==
            0);
  assert_ok(tg_sequential_add(seq, tg_nn_relu(vs)) == 0);
  c.stride = 2;
  assert_ok(tg_sequential_add(seq, tg_nn_conv2d(tg_path_sub(enc, "conv2"), 8, 8, 3, c)) ==
            0);
  assert_ok(tg_sequential_add(seq, tg_nn_batch_norm2d(tg_path_sub(enc, "bn"), 8,
                                                      tg_batch_norm_config_default())) ==
            0);
  assert_ok(tg_sequential_add(seq, tg_nn_relu(vs)) == 0);
  assert_ok(tg_sequential_add(seq, tg_nn_func(vs, flatten_fn, NULL)) == 0);
  assert_ok(tg_sequential_add(seq, tg_nn_linear(tg_path_sub(root, "head"), 128, 5,
                                                tg_linear_config_default())) == 0);
  return seq;
}

#define MODEL_FILE TG_TEST_DATA "/model.safetensors"

static void test_load_pytorch_file(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_module *net = model(vs);
  assert_int_equal(tg_varstore_len(vs), 13);
  assert_ok(tg_varstore_load(vs, MODEL_FILE) == 0);
  assert_int_equal(tg_item(tg_varstore_get(vs, "enc.bn.num_batches_tracked")), 3);
  assert_true(((float *)tg_data(tg_varstore_get(vs, "enc.bn.running_var")))[0] != 1.0f);
  ref_file *f = ref_open("checkpoint");
  tg_tensor *x = ref_get(f, "model", "x", TG_F32);
  tg_tensor *want = ref_get(f, "model", "out", TG_F32);
  tg_tensor *y = tg_module_forward(net, x, false);
  assert_close(y, want, 1e-5, 1e-4);
  tg_tensor_free(y);
  tg_tensor_free(x);
  tg_tensor_free(want);
  ref_close(f);
  tg_varstore_free(vs);
}

/* Saving what we loaded gives back the PyTorch file byte for byte: the file was
 * checked identical to safetensors.torch.save_file's output. */
static void test_save_matches_package(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  model(vs);
  assert_ok(tg_varstore_load(vs, MODEL_FILE) == 0);
  const char *out = tmp_path("resaved.safetensors");
  assert_ok(tg_varstore_save(vs, out) == 0);
  size_t la, lb;
  unsigned char *a = read_file(MODEL_FILE, &la), *b = read_file(out, &lb);
  assert_int_equal(la, lb);
  assert_memory_equal(a, b, la);
  free(a);
  free(b);
  tg_varstore_free(vs);
}

/* ---------------------------------------------------------- round trips -- */

static tg_varstore *odd_store(tg_dtype dtype, tg_init init) {
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  assert_ok(tg_varstore_set_dtype(vs, dtype) == 0);
  tg_path *root = tg_varstore_root(vs), *a = tg_path_sub(root, "a");
  assert_ok(tg_path_var(tg_path_sub(a, "b"), "w", TG_SHAPE(3, 1, 2), init));
  assert_ok(tg_path_var(root, "scalar", NULL, 0, init));
  assert_ok(tg_path_var(root, "empty", TG_SHAPE(0, 3), init));
  assert_ok(tg_path_var_frozen(a, "Zeta", TG_SHAPE(5), init));
  assert_ok(tg_path_var(root, "q\"uote\\é", TG_SHAPE(2), init)); /* JSON escapes */
  assert_ok(
      tg_nn_batch_norm2d(tg_path_sub(root, "bn"), 2, tg_batch_norm_config_default()));
  return vs;
}

static void test_round_trip(void **state) {
  (void)state;
  tg_dtype dtypes[2] = {TG_F32, TG_F64};
  for (int k = 0; k < 2; k++) {
    tg_varstore *src = odd_store(dtypes[k], tg_init_randn(0, 1));
    tg_tensor *nbt = tg_varstore_get(src, "bn.num_batches_tracked");
    ((int64_t *)tg_data(nbt))[0] = 1234567890123ll;
    const char *path = tmp_path("round.safetensors");
    assert_ok(tg_varstore_save(src, path) == 0);
    tg_varstore *dst = odd_store(dtypes[k], tg_init_const(0));
    assert_ok(tg_varstore_load(dst, path) == 0);
    size_t la, lb;
    unsigned char *a = snapshot(src, &la), *b = snapshot(dst, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    free(a);
    free(b);
    /* Saving again over the file replaces it atomically: same bytes, no temp left. */
    size_t l1, l2;
    unsigned char *f1 = read_file(path, &l1);
    assert_ok(tg_varstore_save(dst, path) == 0);
    unsigned char *f2 = read_file(path, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(f1, f2, l1);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
      hlen |= (uint64_t)f1[i] << (8 * i);
    assert_int_equal(hlen % 8, 0); /* padded with spaces */
    free(f1);
    free(f2);
    tg_varstore_free(src);
    tg_varstore_free(dst);
  }
  DIR *d = opendir(tmpdir);
  struct dirent *e;
  while ((e = readdir(d)))
    assert_null(strstr(e->d_name, ".tmp."));
  closedir(d);
}

/* ------------------------------------------------------------ mismatches -- */

static void test_mismatch_names(void **state) {
  (void)state;
  tg_varstore *a = tg_varstore_new(TG_CPU);
  tg_path *ra = tg_varstore_root(a);
  tg_path_var(ra, "keep", TG_SHAPE(2), tg_init_const(1));
  tg_path_var(ra, "only_in_file", TG_SHAPE(2), tg_init_const(1));
  tg_path_var(ra, "reshaped", TG_SHAPE(2, 3), tg_init_const(1));
  const char *path = tmp_path("a.safetensors");
  assert_ok(tg_varstore_save(a, path) == 0);

  tg_varstore *b = tg_varstore_new(TG_CPU);
  tg_path *rb = tg_varstore_root(b);
  tg_path_var(rb, "keep", TG_SHAPE(2), tg_init_const(7));
  tg_path_var(rb, "reshaped", TG_SHAPE(3, 2), tg_init_const(7));
  tg_path_var(tg_path_sub(rb, "enc"), "only_in_store", TG_SHAPE(1), tg_init_const(7));
  size_t len;
  unsigned char *before = snapshot(b, &len);
  assert_error(tg_varstore_load(b, path) < 0, "does not match the var store",
               "missing from the file: \"enc.only_in_store\"",
               "not in the var store: \"only_in_file\"",
               "\"reshaped\" (file F32 [2, 3], store F32 [3, 2])");
  assert_unchanged(b, before, len);
  free(before);

  /* float64 file into a float32 store (and back) is a dtype mismatch. */
  tg_varstore *c = tg_varstore_new(TG_CPU);
  tg_path_var(tg_varstore_root(c), "keep", TG_SHAPE(2), tg_init_const(1));
  assert_ok(tg_varstore_set_dtype(c, TG_F64) == 0);
  const char *p64 = tmp_path("f64.safetensors");
  assert_ok(tg_varstore_save(c, p64) == 0);
  tg_varstore *d = tg_varstore_new(TG_CPU);
  tg_path_var(tg_varstore_root(d), "keep", TG_SHAPE(2), tg_init_const(1));
  assert_error(tg_varstore_load(d, p64) < 0, "\"keep\" (file F64 [2], store F32 [2])");
  assert_ok(tg_varstore_set_dtype(d, TG_F64) == 0);
  assert_ok(tg_varstore_load(d, p64) == 0);

  /* Long lists are cut with a count, never overflowing the message. */
  tg_varstore *many = tg_varstore_new(TG_CPU);
  for (int i = 0; i < 400; i++) {
    char name[32];
    snprintf(name, sizeof name, "a_rather_long_variable_name_%03d", i);
    tg_path_var(tg_varstore_root(many), name, TG_SHAPE(1), tg_init_const(0));
  }
  assert_error(tg_varstore_load(many, p64) < 0, "missing from the file: \"a_rather",
               "more)", "not in the var store: \"keep\"");
  tg_varstore_free(many);
  tg_varstore_free(a);
  tg_varstore_free(b);
  tg_varstore_free(c);
  tg_varstore_free(d);
}

/* --------------------------------------------------------- malformed files -- */

/* Writes an 8-byte length (hlen, or the header's length when hlen < 0), the header
 * and data_len bytes of data. */
static void write_st(const char *path, const char *header, long long hlen,
                     size_t data_len) {
  size_t n = strlen(header);
  uint64_t len = hlen < 0 ? (uint64_t)n : (uint64_t)hlen;
  unsigned char *buf = calloc(1, 8 + n + data_len);
  for (int i = 0; i < 8; i++)
    buf[i] = (unsigned char)(len >> (8 * i));
  memcpy(buf + 8, header, n);
  for (size_t i = 0; i < data_len; i++)
    buf[8 + n + i] = (unsigned char)(i * 7);
  write_file(path, buf, 8 + n + data_len);
  free(buf);
}

#define W(offsets)                                                                       \
  "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":" offsets "}}"

static void test_malformed(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_tensor *w = tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(2), tg_init_const(0));
  ((float *)tg_data(w))[0] = 1;
  ((float *)tg_data(w))[1] = 2;
  size_t len;
  unsigned char *before = snapshot(vs, &len);
  const char *path = tmp_path("bad.safetensors");
  struct {
    const char *header;
    long long hlen;
    size_t data;
    const char *fragment;
  } cases[] = {
      {"", 0, 0, "header is"}, /* replaced by the short-file cases below */
      {W("[0,8]"), 200ll << 20, 8, "exceeds the limit"},
      {W("[0,8]"), 4096, 8, "runs past the end of the file"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", -1, 8,
       "invalid JSON"},
      {"{\"w\":{\"dtype\":\"F17\",\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8,
       "unknown dtype 'F17'"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", -1, 8,
       "needs 12 bytes but data_offsets [0, 8] span 8"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       -1, 12, "overlap"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
       -1, 20, "leave a gap"},
      {W("[8,16]"), -1, 8, "run past the end of the 8-byte data buffer"},
      {W("[8,0]"), -1, 8, "end before they begin"},
      {W("[0,8]") " ", -1, 16, "the tensors cover 8 bytes but the data buffer holds 16"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
       -1, 16, "duplicate tensor name 'w'"},
      {W("[0,8]") "x", -1, 8, "trailing characters"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", -1, 8,
       "floating point"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", -1, 8,
       "expected a non-negative integer"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}}", -1, 8,
       "leading zero"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", -1, 8,
       "unknown key 'x'"},
      {"{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", -1, 8, "lacks one of"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"shape\":[2],\"data_offsets\":[0,8]}}",
       -1, 8, "repeated key 'shape'"},
      {"{\"__metadata__\":{\"k\":1},"
       "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
       -1, 8, "values must be strings"},
      {"{\"w\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8,
       "not valid UTF-8"},
      {"{\"w\\ud800\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8,
       "lone surrogate"},
      {"{\"w\\u0000\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8,
       "NUL"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} \"", -1, 8,
       "trailing"},
      {"{\"w", -1, 8, "unterminated string"},
      {"{\"w\\", -1, 8, "unterminated string"},
      {"[]", -1, 0, "expected '{'"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
       "\"data_offsets\":[0,8]}}",
       -1, 8, "more than 2^64"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],"
       "\"data_offsets\":[0,8]}}",
       -1, 8, "integer too large"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}\n", -1, 8,
       "unexpected end of the header"},
  };
  for (size_t i = 1; i < sizeof cases / sizeof cases[0]; i++) {
    write_st(path, cases[i].header, cases[i].hlen, cases[i].data);
    int rc = tg_varstore_load(vs, path);
    if (rc == 0 || !strstr(tg_last_error(), cases[i].fragment))
      fail_msg("case %zu (%s): rc %d, error \"%s\" lacks \"%s\"", i, cases[i].header, rc,
               tg_last_error(), cases[i].fragment);
    assert_error(rc < 0, "not a valid safetensors file");
    assert_unchanged(vs, before, len);
  }
  /* Too short to hold the length. */
  write_file(path, "", 0);
  assert_error(tg_varstore_load(vs, path) < 0, "fewer than the 8");
  write_file(path, "\x10\0\0", 3);
  assert_error(tg_varstore_load(vs, path) < 0, "fewer than the 8");
  assert_error(tg_varstore_load(vs, tmp_path("does_not_exist")) < 0, "cannot open");
  assert_error(tg_varstore_load(vs, tmpdir) < 0, "not a regular file");
  assert_error(tg_varstore_load(NULL, path) < 0, "'vs' is NULL");
  assert_unchanged(vs, before, len);

  /* Valid files with metadata, whitespace and escapes load. */
  write_st(
      path,
      "{ \"__metadata__\" : {\"format\":\"pt\", \"k\\n\":\"\\u00e9\\ud83d\\ude00\"},\n"
      "  \"\\u0077\" : {\"shape\":[ 2 ], \"dtype\":\"F32\", \"data_offsets\":[0, 8]} "
      "}   ",
      -1, 8);
  assert_ok(tg_varstore_load(vs, path) == 0);
  float want[2];
  memcpy(want, (unsigned char[]){0, 7, 14, 21, 28, 35, 42, 49}, 8);
  assert_memory_equal(tg_data(w), want, 8);
  free(before);
  tg_varstore_free(vs);
}

/* Random corruptions of a real file: each load either succeeds or fails leaving the
 * store as it was; nothing crashes (run under ASan in CI). */
static void test_fuzz(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  model(vs);
  size_t flen;
  unsigned char *orig = read_file(MODEL_FILE, &flen);
  unsigned char *buf = malloc(flen);
  const char *path = tmp_path("fuzz.safetensors");
  uint64_t rng = 0x9e3779b97f4a7c15ull;
  int failures = 0;
  for (int it = 0; it < 1500; it++) {
    memcpy(buf, orig, flen);
    size_t n = flen;
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    int kind = (int)(rng >> 60) % 4;
    for (int k = 0; k < 1 + (int)((rng >> 40) % 4); k++) {
      rng = rng * 6364136223846793005ull + 1442695040888963407ull;
      size_t pos = (size_t)(rng >> 33) % (kind == 3 ? flen : 1024);
      buf[pos] = kind == 1 ? (unsigned char)(rng >> 20) : buf[pos] ^ (1u << (rng >> 61));
    }
    if (kind == 2)
      n = (size_t)(rng >> 33) % flen;
    write_file(path, buf, n);
    size_t slen;
    unsigned char *before = snapshot(vs, &slen);
    if (tg_varstore_load(vs, path) < 0) {
      failures++;
      assert_unchanged(vs, before, slen);
    }
    tg_clear_error();
    free(before);
  }
  assert_true(failures > 500);
  free(buf);
  free(orig);
  tg_varstore_free(vs);
}

static void test_save_errors(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(2), tg_init_const(1));
  assert_error(tg_varstore_save(vs, "/nonexistent_dir_tg/x.safetensors") < 0,
               "cannot create", "'/nonexistent_dir_tg/x.safetensors'");
  assert_error(tg_varstore_save(NULL, "x") < 0, "'vs' is NULL");
  assert_error(tg_varstore_save(vs, NULL) < 0, "'filename' is NULL");
  /* An empty store saves as {} padded, and loads into an empty store. */
  tg_varstore *empty = tg_varstore_new(TG_CPU);
  const char *path = tmp_path("empty.safetensors");
  assert_ok(tg_varstore_save(empty, path) == 0);
  size_t len;
  unsigned char *b = read_file(path, &len);
  assert_int_equal(len, 16);
  assert_memory_equal(b, "\x08\0\0\0\0\0\0\0{}      ", 16);
  free(b);
  assert_ok(tg_varstore_load(empty, path) == 0);
  assert_error(tg_varstore_load(vs, path) < 0, "missing from the file: \"w\"");
  tg_varstore_free(empty);
  tg_varstore_free(vs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_load_pytorch_file),
      cmocka_unit_test(test_save_matches_package),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_mismatch_names),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_fuzz),
      cmocka_unit_test(test_save_errors),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
