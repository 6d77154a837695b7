/* edgecc_runtime.h: run an edgecc artifact from C or C++ (libedgecc_runtime.so).
 *
 *   edgecc_model* m;
 *   if (edgecc_model_open("bundle", NULL, &m) != EDGECC_OK) {
 *     fprintf(stderr, "error: %s\n", edgecc_last_error());
 *     return 1;
 *   }
 *   edgecc_tensor_info in, out;
 *   edgecc_model_input(m, 0, &in);    // name, dtype, shape, bytes
 *   edgecc_model_output(m, 0, &out);
 *   const void* inputs[] = {x};       // caller-owned, in the manifest's shapes and dtypes
 *   void* outputs[] = {y};
 *   size_t capacity[] = {out.bytes};
 *   edgecc_model_run(m, inputs, outputs, capacity);  // or outputs = NULL, then
 *   const void* y2 = edgecc_model_output_data(m, 0);  // valid until the next run
 *   edgecc_model_close(m);
 *
 * Opening checks the artifact as edgecc-run does (manifest format, architecture, the TVM
 * runtime series, the library's size every time and its sha256 on first use) and picks the
 * build this CPU runs. Inputs whose buffers are 64-byte aligned are used in place; others are
 * copied once per run. Functions return a status and never throw or abort; the message of the
 * calling thread's last failure is edgecc_last_error(). One model handle may be used from
 * several threads: runs on it are serialized. Different handles run concurrently.
 */
#ifndef EDGECC_RUNTIME_H_
#define EDGECC_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGECC_RUNTIME_API_VERSION 1

typedef enum {
  EDGECC_OK = 0,
  EDGECC_ERR_ARGUMENT = 1, /* a NULL pointer, an index out of range, a buffer too small */
  EDGECC_ERR_ARTIFACT = 2, /* missing, truncated, corrupted or foreign artifact */
  EDGECC_ERR_RUNTIME = 3,  /* the TVM runtime failed while loading or running */
} edgecc_status;

typedef struct edgecc_model edgecc_model;

typedef struct {
  const char* build;   /* which of the artifact's builds to run (NULL: the best this CPU can) */
  int verify;          /* nonzero: hash the library even if it was checked before */
  int num_threads;     /* worker threads (0: the physical cores this process may use) */
} edgecc_options;

typedef struct {
  const char* name;
  const char* dtype;     /* "float32", "int8", ... as in the manifest */
  int32_t ndim;
  const int64_t* shape;  /* ndim dims; an output's dim is -1 until a run fixes it */
  size_t bytes;          /* the tensor's size (outputs: of the last run; 0 while unknown) */
} edgecc_tensor_info;

/* The message of this thread's last failure ("" if none). Valid until its next call. */
const char* edgecc_last_error(void);

edgecc_status edgecc_model_open(const char* artifact_dir, const edgecc_options* options,
                                edgecc_model** model);
void edgecc_model_close(edgecc_model* model); /* NULL is fine */

/* The build that runs (a target name: "x86_64", "x86_64-avx512", "rpi4", ...). */
const char* edgecc_model_build(const edgecc_model* model);
int32_t edgecc_model_num_inputs(const edgecc_model* model);
int32_t edgecc_model_num_outputs(const edgecc_model* model);
edgecc_status edgecc_model_input(const edgecc_model* model, int32_t index,
                                 edgecc_tensor_info* info);
edgecc_status edgecc_model_output(const edgecc_model* model, int32_t index,
                                  edgecc_tensor_info* info);

/* One inference: inputs[i] holds input i (edgecc_model_input's bytes). outputs[i] receives
 * output i and has capacity[i] bytes (EDGECC_ERR_ARGUMENT if one does not fit); with
 * outputs == NULL the outputs stay in the model, for edgecc_model_output_data. */
edgecc_status edgecc_model_run(edgecc_model* model, const void* const* inputs,
                               void* const* outputs, const size_t* capacity);

/* Output `index` of the last run with outputs == NULL (NULL before one); valid until the next
 * run or close. edgecc_model_output then gives its shape and bytes. */
const void* edgecc_model_output_data(const edgecc_model* model, int32_t index);

/* Time `runs` inferences of `inputs` (NULL: zeros) after `warmup`: mean and median in ms. */
edgecc_status edgecc_model_time(edgecc_model* model, const void* const* inputs, int32_t warmup,
                                int32_t runs, double* mean_ms, double* median_ms);

#ifdef __cplusplus
}
#endif

#endif /* EDGECC_RUNTIME_H_ */
