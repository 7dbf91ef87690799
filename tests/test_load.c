/* Flexible checkpoints against files PyTorch wrote (tests/ref/gen_load.py): float32,
 * float64, float16 and bfloat16 state_dicts of an nn.Sequential load into float32 and
 * float64 stores built with sequential naming, with strict / non-strict, strict-dtype,
 * "module." prefixes and metadata; any named tensors round-trip through
 * tg_save_tensors / tg_load_tensors; tg_module_summary's table. */
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[64];

static int dir_setup(void **state) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/tg_test_load_XXXXXX");
  return mkdtemp(tmpdir) ? test_setup(state) : -1;
}

static int dir_teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

static const char *tmp_path(const char *name) {
  static char buf[4][256];
  static int k;
  char *b = buf[k++ % 4];
  snprintf(b, 256, "%s/%s", tmpdir, name);
  return b;
}

static const char *data_path(const char *tag) {
  static char buf[512];
  snprintf(buf, sizeof buf, "%s/load_%s.safetensors", TG_TEST_DATA, tag);
  return buf;
}

/* nn.Sequential(Linear(4, 3), ReLU(), Linear(3, 2)) named as PyTorch names it. */
typedef struct {
  tg_varstore *vs;
  tg_module *seq;
} model;

static model model_new(tg_dtype dtype) {
  model m = {tg_varstore_new(TG_CPU), NULL};
  assert_ok(tg_varstore_set_dtype(m.vs, dtype) == 0);
  m.seq = tg_nn_sequential_path(tg_varstore_root(m.vs));
  tg_linear_config lc = tg_linear_config_default();
  assert_ok(tg_sequential_add(m.seq, tg_nn_linear(tg_sequential_path(m.seq), 4, 3, lc)) ==
            0);
  assert_ok(tg_sequential_add(m.seq, tg_nn_relu(m.vs)) == 0);
  assert_ok(tg_sequential_add(m.seq, tg_nn_linear(tg_sequential_path(m.seq), 3, 2, lc)) ==
            0);
  const char *names[4] = {"0.weight", "0.bias", "2.weight", "2.bias"};
  assert_int_equal(tg_varstore_len(m.vs), 4);
  for (int i = 0; i < 4; i++) {
    const char *name;
    tg_varstore_var(m.vs, i, &name);
    assert_string_equal(name, names[i]);
  }
  return m;
}

/* The variables equal case `tag`'s values (rounded to the store's dtype), and the
 * forward pass gives PyTorch's output. */
static void check_model(const model *m, ref_file *f, const char *tag) {
  const char *labels[4] = {"0_weight", "0_bias", "2_weight", "2_bias"};
  for (int i = 0; i < 4; i++) {
    tg_tensor *v = tg_varstore_var(m->vs, i, NULL);
    tg_tensor *want = ref_get(f, tag, labels[i], tg_dtype_of(v));
    assert_close(v, want, 0, 0);
    tg_tensor_free(want);
  }
  tg_dtype dt = tg_varstore_dtype(m->vs);
  tg_tensor *x = ref_get(f, tag, "x", dt), *out = ref_get(f, tag, "out", dt);
  tg_tensor *y = tg_module_forward(m->seq, x, false);
  assert_ok(y);
  assert_close(y, out, dt == TG_F64 ? 1e-12 : 1e-6, dt == TG_F64 ? 1e-12 : 1e-5);
  tg_tensor_free(y);
  tg_tensor_free(x);
  tg_tensor_free(out);
}

/* The values of the store's variables, to check that a failed load changed none. */
static double checksum(const tg_varstore *vs) {
  double s = 0;
  for (int i = 0; i < tg_varstore_len(vs); i++) {
    tg_tensor *v = tg_varstore_var(vs, i, NULL);
    tg_tensor *t = tg_to_dtype(v, TG_F64);
    const double *p = tg_data(t);
    for (int64_t k = 0; k < tg_numel(t); k++)
      s += p[k] * (double)(k + 1 + 100 * i);
    tg_tensor_free(t);
  }
  return s;
}

static void test_pytorch_files(void **state) {
  (void)state;
  ref_file *f = ref_open("load");
  const char *tags[4] = {"f32", "f64", "f16", "bf16"};
  const char *file_dtype[4] = {"F32", "F64", "F16", "BF16"};
  for (int k = 0; k < 4; k++)
    for (int d = 0; d < 2; d++) {
      tg_dtype dt = d ? TG_F64 : TG_F32;
      model m = model_new(dt);
      tg_load_options o = tg_load_options_default();
      if (k == 2)
        o.prefix = "module.";
      if (k == 0) { /* "extra" is no variable: strict refuses, non-strict reports */
        double before = checksum(m.vs);
        assert_error(tg_varstore_load_ex(m.vs, data_path(tags[k]), &o, NULL) < 0,
                     "does not match the var store", "not in the var store: \"extra\"");
        assert_true(checksum(m.vs) == before);
        o.strict = false;
      }
      tg_load_report r;
      assert_ok(tg_varstore_load_ex(m.vs, data_path(tags[k]), &o, &r) == 0);
      assert_int_equal(r.n_missing, 0);
      assert_int_equal(r.n_unexpected, k == 0);
      if (k == 0)
        assert_string_equal(r.unexpected[0], "extra");
      tg_load_report_free(&r);
      check_model(&m, f, tags[k]);

      /* strict_dtype: only a file of the store's own dtype loads. */
      model m2 = model_new(dt);
      o.strict_dtype = true;
      int rc = tg_varstore_load_ex(m2.vs, data_path(tags[k]), &o, NULL);
      if (!strcmp(file_dtype[k], dt == TG_F64 ? "F64" : "F32")) {
        assert_ok(rc == 0);
      } else {
        char frag[64];
        snprintf(frag, sizeof frag, "\"0.bias\" (file %s [3], store %s [3])",
                 file_dtype[k], dt == TG_F64 ? "F64" : "F32");
        assert_error(rc < 0, "dtype or shape mismatch", frag);
      }
      tg_varstore_free(m2.vs);
      tg_varstore_free(m.vs);
    }

  /* tg_varstore_load keeps refusing casts; without the prefix, nothing matches. */
  model m = model_new(TG_F32);
  assert_error(tg_varstore_load(m.vs, data_path("f64")) < 0,
               "\"2.weight\" (file F64 [2, 3], store F32 [2, 3])");
  assert_error(tg_varstore_load_ex(m.vs, data_path("f16"), NULL, NULL) < 0,
               "missing from the file: \"0.weight\", \"0.bias\", \"2.weight\", "
               "\"2.bias\"",
               "not in the var store: \"module.0.bias\"");
  tg_load_options o = tg_load_options_default();
  o.strict = false;
  tg_load_report r;
  double before = checksum(m.vs);
  assert_ok(tg_varstore_load_ex(m.vs, data_path("f16"), &o, &r) == 0);
  assert_true(checksum(m.vs) == before);
  assert_int_equal(r.n_missing, 4);
  assert_int_equal(r.n_unexpected, 4);
  assert_string_equal(r.missing[0], "0.weight");
  assert_string_equal(r.unexpected[0], "module.0.bias");
  tg_load_report_free(&r);
  /* Non-strict still refuses a shape mismatch. */
  tg_varstore *other = tg_varstore_new(TG_CPU);
  tg_path_var(tg_path_sub(tg_varstore_root(other), "0"), "bias", TG_SHAPE(4),
              tg_init_const(1));
  assert_error(tg_varstore_load_ex(other, data_path("f32"), &o, NULL) < 0,
               "\"0.bias\" (file F32 [3], store F32 [4])");
  tg_varstore_free(other);

  /* The metadata PyTorch's side wrote; F16 widened exactly; exclude_prefix. */
  tg_tensor_dict *d = tg_load_tensors(data_path("f16"), NULL);
  assert_ok(d);
  assert_int_equal(tg_tensor_dict_len(d), 4);
  assert_string_equal(tg_tensor_dict_metadata(d, "epoch"), "3");
  assert_string_equal(tg_tensor_dict_metadata(d, "note"), "DDP run");
  assert_null(tg_tensor_dict_metadata(d, "absent"));
  assert_int_equal(tg_dtype_of(tg_tensor_dict_get(d, "module.0.bias")), TG_F32);
  tg_tensor *want = ref_get(f, "f16", "0_bias", TG_F32);
  assert_close(tg_tensor_dict_get(d, "module.0.bias"), want, 0, 0);
  tg_tensor_free(want);
  tg_tensor_dict_free(d);
  o = tg_load_options_default();
  o.exclude_prefix = "module.2.";
  d = tg_load_tensors(data_path("f16"), &o);
  assert_int_equal(tg_tensor_dict_len(d), 2);
  assert_non_null(tg_tensor_dict_get(d, "module.0.weight"));
  tg_tensor_dict_free(d);
  tg_varstore_free(m.vs);
  ref_close(f);
}

static void test_save_load_tensors(void **state) {
  (void)state;
  tg_tensor_dict *d = tg_tensor_dict_new();
  tg_tensor *a = tg_randn(TG_SHAPE(2, 3), TG_F64, TG_CPU);
  tg_tensor *b = tg_arange(0, 5, 1, TG_I64, TG_CPU);
  tg_tensor *c = tg_scalar(0.25, TG_F32, TG_CPU);
  assert_ok(tg_tensor_dict_set(d, "opt.a", a) == 0);
  assert_ok(tg_tensor_dict_set(d, "opt.b", b) == 0);
  assert_ok(tg_tensor_dict_set(d, "c", c) == 0);
  assert_ok(tg_tensor_dict_set(d, "c", c) == 0); /* replaces */
  assert_ok(tg_tensor_dict_set_metadata(d, "step", "10") == 0);
  assert_ok(tg_tensor_dict_set_metadata(d, "note", "tab\there \"quoted\" \xc3\xa9") == 0);
  assert_ok(tg_tensor_dict_set_metadata(d, "step", "11") == 0);
  assert_int_equal(tg_tensor_dict_len(d), 3);
  assert_int_equal(tg_tensor_dict_metadata_len(d), 2);
  const char *path = tmp_path("t.safetensors");
  assert_ok(tg_save_tensors(d, path) == 0);

  tg_tensor_dict *back = tg_load_tensors(path, NULL);
  assert_ok(back);
  assert_int_equal(tg_tensor_dict_len(back), 3);
  assert_close(tg_tensor_dict_get(back, "opt.a"), a, 0, 0);
  assert_int_equal(tg_dtype_of(tg_tensor_dict_get(back, "opt.b")), TG_I64);
  assert_memory_equal(tg_data(tg_tensor_dict_get(back, "opt.b")), tg_data(b),
                      5 * sizeof(int64_t));
  assert_int_equal(tg_ndim(tg_tensor_dict_get(back, "c")), 0);
  assert_true(tg_item(tg_tensor_dict_get(back, "c")) == 0.25);
  assert_string_equal(tg_tensor_dict_metadata(back, "step"), "11");
  const char *value, *key = tg_tensor_dict_metadata_at(back, 1, &value);
  assert_string_equal(key, "note");
  assert_string_equal(value, "tab\there \"quoted\" \xc3\xa9");
  tg_tensor_dict_free(back);

  /* prefix selects and strips. */
  tg_load_options o = tg_load_options_default();
  o.prefix = "opt.";
  back = tg_load_tensors(path, &o);
  const char *name;
  assert_int_equal(tg_tensor_dict_len(back), 2);
  tg_tensor_dict_at(back, 0, &name);
  assert_string_equal(name, "a");
  assert_error(!tg_tensor_dict_at(back, 2, &name), "index 2 is out of range");
  tg_tensor_dict_free(back);

  /* A var store's state dict, under a prefix, loads into another store. */
  tg_varstore *vs = tg_varstore_new(TG_CPU), *vs2 = tg_varstore_new(TG_CPU);
  tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(2, 3), tg_init_randn(0, 1));
  tg_path_var(tg_varstore_root(vs2), "w", TG_SHAPE(2, 3), tg_init_const(0));
  assert_ok(tg_varstore_state_dict(vs, d, "model.") == 0);
  o = tg_load_options_default();
  o.prefix = "model.";
  assert_ok(tg_varstore_load_dict(vs2, d, &o, NULL) == 0);
  assert_close(tg_varstore_get(vs2, "w"), tg_varstore_get(vs, "w"), 0, 0);
  assert_error(tg_varstore_load_dict(vs2, d, NULL, NULL) < 0, "the tensor dict",
               "not in the var store: \"opt.a\"");
  /* The dict shares the variables: a save writes their current values. */
  assert_ok(tg_fill_(tg_varstore_get(vs, "w"), 3) == 0);
  assert_ok(tg_save_tensors(d, path) == 0);
  o.exclude_prefix = NULL;
  assert_ok(tg_varstore_load_ex(vs2, path, &o, NULL) == 0);
  assert_true(((float *)tg_data(tg_varstore_get(vs2, "w")))[5] == 3);
  tg_varstore_free(vs);
  tg_varstore_free(vs2);

  /* Dtypes tapegrad cannot hold are an error unless left out. */
  const char head[] = "{\"i\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"f\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
  size_t hl = (sizeof head - 1 + 7) / 8 * 8;
  uint8_t file[256] = {0};
  file[0] = (uint8_t)hl;
  memset(file + 8, ' ', hl);
  memcpy(file + 8, head, sizeof head - 1);
  FILE *fp = fopen(tmp_path("i32.safetensors"), "wb");
  fwrite(file, 1, 8 + hl + 8, fp);
  fclose(fp);
  assert_error(!tg_load_tensors(tmp_path("i32.safetensors"), NULL),
               "tensor 'i' has dtype I32, which tapegrad does not hold");
  o = tg_load_options_default();
  o.exclude_prefix = "i";
  back = tg_load_tensors(tmp_path("i32.safetensors"), &o);
  assert_ok(back);
  assert_int_equal(tg_tensor_dict_len(back), 1);
  tg_tensor_dict_free(back);
  /* More dimensions than a tensor holds: an error naming the tensor. */
  const char deep[] = "{\"d\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                      "\"data_offsets\":[0,4]}}";
  hl = (sizeof deep - 1 + 7) / 8 * 8;
  memset(file, 0, sizeof file);
  file[0] = (uint8_t)hl;
  memset(file + 8, ' ', hl);
  memcpy(file + 8, deep, sizeof deep - 1);
  fp = fopen(tmp_path("deep.safetensors"), "wb");
  fwrite(file, 1, 8 + hl + 4, fp);
  fclose(fp);
  assert_error(!tg_load_tensors(tmp_path("deep.safetensors"), NULL),
               "tensor 'd' has 9 dimensions, more than the 8 tapegrad holds");
  /* int64 tensors load into int64 variables only, casts or not. */
  tg_varstore *ints = tg_varstore_new(TG_CPU);
  tg_path_var(tg_varstore_root(ints), "opt", TG_SHAPE(2, 3), tg_init_const(0));
  o = tg_load_options_default();
  o.strict = false;
  tg_tensor_dict *just_b = tg_tensor_dict_new();
  tg_tensor *b23 = tg_zeros(TG_SHAPE(2, 3), TG_I64, TG_CPU);
  assert_ok(tg_tensor_dict_set(just_b, "opt", b23) == 0);
  assert_error(tg_varstore_load_dict(ints, just_b, &o, NULL) < 0,
               "\"opt\" (file I64 [2, 3], store F32 [2, 3])");
  tg_tensor_free(b23);
  tg_tensor_dict_free(just_b);
  tg_varstore_free(ints);

  assert_error(tg_save_tensors(NULL, path) < 0, "'d' is NULL");
  assert_error(tg_tensor_dict_set(d, "x", NULL) < 0, "'t' is NULL");
  assert_error(tg_tensor_dict_set_metadata(d, "bad", "\xff") == 0 &&
                   tg_save_tensors(d, path) < 0,
               "metadata string", "not valid UTF-8");
  assert_error(!tg_load_tensors(tmp_path("absent"), NULL), "cannot open");
  /* A tensor set from a scope: the dict holds a reference of its own, alive after the
   * scope and freed with the dict (it once took the scope's: LSan saw a leak). */
  tg_tensor_dict *sd = tg_tensor_dict_new();
  tg_scope_begin();
  assert_ok(tg_tensor_dict_set(sd, "s", tg_ones(TG_SHAPE(3), TG_F32, TG_CPU)) == 0);
  assert_int_equal(tg_scope_end(), 0);
  assert_true(((const float *)tg_data(tg_tensor_dict_get(sd, "s")))[2] == 1);
  tg_tensor_dict_free(sd);
  tg_tensor_dict_free(d);
  tg_tensor_free(a);
  tg_tensor_free(b);
  tg_tensor_free(c);
}

/* Load errors list names in double quotes, as PyTorch's load_state_dict does, so a
 * name holding ", " reads as one name; control characters show escaped. */
static void test_load_error_names_quoted(void **state) {
  (void)state;
  tg_tensor_dict *d = tg_tensor_dict_new();
  tg_tensor *t = tg_zeros(TG_SHAPE(2), TG_F32, TG_CPU);
  assert_ok(tg_tensor_dict_set(d, "a, b", t) == 0);
  assert_ok(tg_tensor_dict_set(d, "line\nbreak", t) == 0);
  const char *path = tmp_path("names.safetensors");
  assert_ok(tg_save_tensors(d, path) == 0);
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path_var(tg_varstore_root(vs), "w", TG_SHAPE(2), tg_init_const(0));
  tg_path_var(tg_varstore_root(vs), "a", TG_SHAPE(3), tg_init_const(0));
  assert_error(tg_varstore_load(vs, path) < 0, "missing from the file: \"w\", \"a\";",
               "not in the var store: \"a, b\", \"line\\nbreak\"");
  tg_tensor_dict_free(d);
  tg_tensor_free(t);
  tg_varstore_free(vs);
}

static void test_sequential_naming_and_summary(void **state) {
  (void)state;
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  tg_module *outer = tg_nn_sequential_path(tg_path_sub(root, "features"));
  tg_module *inner = tg_nn_sequential_path(tg_sequential_path(outer));
  tg_conv2d_config cc = tg_conv2d_config_default();
  assert_ok(tg_sequential_add(inner,
                              tg_nn_conv2d(tg_sequential_path(inner), 1, 2, 3, cc)) == 0);
  assert_ok(tg_sequential_add(outer, inner) == 0);
  assert_ok(tg_sequential_add(outer, tg_nn_relu(vs)) == 0);
  assert_ok(
      tg_sequential_add(outer, tg_nn_batch_norm2d(tg_sequential_path(outer), 2,
                                                  tg_batch_norm_config_default())) == 0);
  assert_non_null(tg_varstore_get(vs, "features.0.0.weight"));
  assert_non_null(tg_varstore_get(vs, "features.2.running_var"));
  tg_module *plain = tg_nn_sequential(vs);
  assert_error(!tg_sequential_path(plain),
               "not a sequential made by tg_nn_sequential_path");
  assert_error(!tg_nn_sequential_path(NULL), "'path' is NULL");

  char *text = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&text, &len);
  assert_ok(tg_module_summary(vs, out) == 0);
  fclose(out);
  assert_non_null(strstr(text, "features.0.0.weight"));
  assert_non_null(strstr(text, "[2, 1, 3, 3]"));
  assert_non_null(strstr(text, "float32"));
  assert_non_null(strstr(text, "int64")); /* num_batches_tracked */
  assert_non_null(strstr(text, "cpu"));
  /* conv 2*9 + 2, batch norm weight 2 + bias 2; running stats 2 + 2 + 1. */
  assert_non_null(strstr(text, "7 variables; parameters: 24 trainable, 5 in frozen"));
  assert_non_null(strstr(text, "29 in all"));
  const char *line = strstr(text, "features.2.running_mean");
  assert_non_null(line);
  assert_true(strstr(line, " no\n") == strchr(line, '\n') - 3);
  free(text);
  assert_error(tg_module_summary(NULL, stdout) < 0, "'vs' is NULL");
  tg_varstore_free(vs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pytorch_files),
      cmocka_unit_test(test_save_load_tensors),
      cmocka_unit_test(test_load_error_names_quoted),
      cmocka_unit_test(test_sequential_naming_and_summary),
  };
  return cmocka_run_group_tests(tests, dir_setup, dir_teardown);
}
