/* libFuzzer harness for the safetensors loader: any byte string given to
 * tg_varstore_load, tg_varstore_load_ex or tg_load_tensors must produce 0 or an error
 * message, never a crash, a leak or a partially updated store. Build: CC=clang meson
 * setup build-fuzz -Dfuzz=true. */
#include "tapegrad.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static tg_varstore *make_store(void) {
  tg_varstore *vs = tg_varstore_new(TG_CPU);
  tg_path *root = tg_varstore_root(vs);
  tg_path *enc = tg_path_sub(root, "enc");
  tg_path_var(enc, "weight", TG_SHAPE(2, 3), tg_init_const(0.5));
  tg_path_var(enc, "bias", TG_SHAPE(2), tg_init_const(0.25));
  tg_path_var_frozen(root, "stat", TG_SHAPE(4), tg_init_const(1.0));
  return vs;
}

static double checksum(const tg_varstore *vs) {
  double s = 0;
  for (int i = 0; i < tg_varstore_len(vs); i++) {
    tg_tensor *t = tg_varstore_var(vs, i, NULL);
    const float *d = tg_data(t);
    for (int64_t k = 0; k < tg_numel(t); k++)
      s += d[k] * (double)(k + 1 + 7 * i);
  }
  return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char path[64];
  if (!path[0])
    snprintf(path, sizeof path, "/tmp/tg_fuzz_%d.safetensors", (int)getpid());
  FILE *f = fopen(path, "wb");
  if (!f)
    return 0;
  fwrite(data, 1, size, f);
  fclose(f);
  tg_varstore *vs = make_store();
  double before = checksum(vs);
  int rc = tg_varstore_load(vs, path);
  if (rc != 0) {
    if (!tg_last_error()[0])
      abort(); /* a failure must say why */
    if (checksum(vs) != before)
      abort(); /* a failed load must leave the store untouched */
  }
  tg_clear_error();
  /* The flexible path too: casts (F16/BF16/F64 into float32), non-strict, a prefix,
   * and the bare dict loader with its metadata. */
  tg_load_options o = tg_load_options_default();
  o.strict = false;
  o.prefix = "enc.";
  before = checksum(vs);
  tg_load_report report;
  if (tg_varstore_load_ex(vs, path, &o, &report) == 0)
    tg_load_report_free(&report);
  else if (!tg_last_error()[0] || checksum(vs) != before)
    abort();
  tg_clear_error();
  tg_tensor_dict *d = tg_load_tensors(path, NULL);
  if (!d && !tg_last_error()[0])
    abort();
  for (int i = 0; i < tg_tensor_dict_metadata_len(d); i++)
    if (!tg_tensor_dict_metadata_at(d, i, NULL))
      abort();
  tg_tensor_dict_free(d);
  tg_clear_error();
  tg_varstore_free(vs);
  return 0;
}
