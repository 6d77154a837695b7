/* run_model: embed an edgecc model in a C program through edgecc_runtime.h.
 *
 *   run_model BUNDLE_DIR [INPUT.bin ...] [--out PREFIX] [--bench N]
 *
 * Opens the artifact (checked and the build this CPU runs picked by the library), lists its
 * tensors, reads each input from a raw little-endian file in the manifest's dtype and shape
 * (zeros when none is given), runs once into buffers this program owns, writes each output to
 * PREFIX<i>.bin and prints its first values, then times N runs with --bench.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgecc_runtime.h"

static void* aligned_buffer(size_t bytes) {
  void* p = NULL;
  size_t rounded = (bytes + 63) / 64 * 64;
  if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0) return NULL;
  memset(p, 0, rounded ? rounded : 64);
  return p;
}

static int read_file(const char* path, void* into, size_t bytes) {
  FILE* f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "error: cannot read '%s'\n", path);
    return 0;
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  int ok = size == (long)bytes && fread(into, 1, bytes, f) == bytes;
  fclose(f);
  if (!ok) fprintf(stderr, "error: '%s' holds %ld bytes, the input takes %zu\n", path, size, bytes);
  return ok;
}

static void describe(const char* what, const edgecc_tensor_info* t) {
  printf("%s %s: %s[", what, t->name, t->dtype);
  for (int32_t d = 0; d < t->ndim; ++d) printf(d ? ",%lld" : "%lld", (long long)t->shape[d]);
  printf("]\n");
}

int main(int argc, char** argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0) {
    printf("usage: run_model BUNDLE_DIR [INPUT.bin ...] [--out PREFIX] [--bench N]\n");
    return argc < 2 ? 2 : 0;
  }
  const char* files[64];
  int nfiles = 0, bench = 0;
  const char* prefix = NULL;
  for (int i = 2; i < argc; ++i) {
    if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
      prefix = argv[++i];
    } else if (strcmp(argv[i], "--bench") == 0 && i + 1 < argc) {
      bench = atoi(argv[++i]);
    } else if (nfiles < 64) {
      files[nfiles++] = argv[i];
    }
  }
  edgecc_model* model = NULL;
  if (edgecc_model_open(argv[1], NULL, &model) != EDGECC_OK) {
    fprintf(stderr, "error: %s\n", edgecc_last_error());
    return 1;
  }
  printf("build: %s\n", edgecc_model_build(model));
  int32_t n_in = edgecc_model_num_inputs(model), n_out = edgecc_model_num_outputs(model);
  if (nfiles != 0 && nfiles != n_in) {
    fprintf(stderr, "error: the model takes %d input(s), %d file(s) given\n", n_in, nfiles);
    edgecc_model_close(model);
    return 1;
  }
  const void** inputs = calloc((size_t)n_in + 1, sizeof(void*));
  void** outputs = calloc((size_t)n_out + 1, sizeof(void*));
  size_t* capacity = calloc((size_t)n_out + 1, sizeof(size_t));
  int status = 0;
  for (int32_t i = 0; i < n_in; ++i) {
    edgecc_tensor_info t;
    edgecc_model_input(model, i, &t);
    describe("input", &t);
    void* buf = aligned_buffer(t.bytes);
    inputs[i] = buf;
    if (nfiles && !read_file(files[i], buf, t.bytes)) status = 1;
  }
  for (int32_t i = 0; i < n_out && status == 0; ++i) {
    edgecc_tensor_info t;
    edgecc_model_output(model, i, &t);
    describe("output", &t);
    capacity[i] = t.bytes;
    outputs[i] = aligned_buffer(t.bytes);
    if (t.bytes == 0) {
      fprintf(stderr, "error: output '%s' has a size known only at run time\n", t.name);
      status = 1;
    }
  }
  if (status == 0 && edgecc_model_run(model, inputs, outputs, capacity) != EDGECC_OK) {
    fprintf(stderr, "error: %s\n", edgecc_last_error());
    status = 1;
  }
  for (int32_t i = 0; i < n_out && status == 0; ++i) {
    edgecc_tensor_info t;
    edgecc_model_output(model, i, &t);
    if (strcmp(t.dtype, "float32") == 0) {
      const float* y = outputs[i];
      printf("%s[0..]:", t.name);
      for (size_t k = 0; k < t.bytes / 4 && k < 4; ++k) printf(" %g", y[k]);
      printf("\n");
    }
    if (prefix) {
      char path[4096];
      snprintf(path, sizeof path, "%s%d.bin", prefix, (int)i);
      FILE* f = fopen(path, "wb");
      if (!f || fwrite(outputs[i], 1, t.bytes, f) != t.bytes) {
        fprintf(stderr, "error: cannot write '%s'\n", path);
        status = 1;
      }
      if (f) fclose(f);
    }
  }
  if (status == 0 && bench > 0) {
    double mean = 0, median = 0;
    if (edgecc_model_time(model, inputs, 3, bench, &mean, &median) != EDGECC_OK) {
      fprintf(stderr, "error: %s\n", edgecc_last_error());
      status = 1;
    } else {
      printf("latency: mean %.3f ms  median %.3f ms  (%d runs)\n", mean, median, bench);
    }
  }
  for (int32_t i = 0; i < n_in; ++i) free((void*)inputs[i]);
  for (int32_t i = 0; i < n_out; ++i) free(outputs[i]);
  free(inputs);
  free(outputs);
  free(capacity);
  edgecc_model_close(model);
  return status;
}
