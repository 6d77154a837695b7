// The C API (edgecc_runtime.h) over the TVM runtime: open an artifact (checked as edgecc-run
// checks it), describe its tensors, run it on caller-owned buffers. No exception crosses the
// C boundary: every entry point catches and returns a status, the message in a thread-local.
#include "edgecc_runtime.h"

#include <deque>
#include <memory>
#include <mutex>
#include <optional>

#include "edgecc_run.h"

namespace {

thread_local std::string g_error;

struct ViewAlloc {  // a tensor over memory the caller owns: nothing allocated, nothing freed
  void* data;
  void AllocData(DLTensor* t) { t->data = data; }
  void FreeData(DLTensor*) {}
};

size_t Bytes(const std::vector<int64_t>& shape, const std::string& dtype) {
  DLDataType dt = edgecc::Dtypes().at(dtype);
  size_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return 0;
    n *= static_cast<size_t>(d);
  }
  return n * ((dt.bits * dt.lanes + 7) / 8);
}

edgecc_status Fail(edgecc_status code, const std::string& message) {
  g_error = message;
  return code;
}

template <typename F>
edgecc_status Guard(F&& body) {
  try {
    g_error.clear();
    return body();
  } catch (const edgecc::UserError& e) {
    return Fail(EDGECC_ERR_ARTIFACT, e.what());
  } catch (const ffi::Error& e) {
    return Fail(EDGECC_ERR_RUNTIME, "TVM runtime: " + std::string(e.kind()) + ": " +
                                        std::string(e.message()));
  } catch (const std::exception& e) {
    return Fail(EDGECC_ERR_RUNTIME, e.what());
  } catch (...) {
    return Fail(EDGECC_ERR_RUNTIME, "unknown failure");
  }
}

// The thread count that is faster now, from the run times seen (edgecc/runtime/loadguard.py,
// same algorithm and constants; docs/runtime.md): on a busy CPU one thread, idle all of them.
// Disabled by EDGECC_ADAPTIVE_THREADS=0.
class ThreadGuard {
 public:
  static constexpr double kSwitch = 0.95, kStall = 4.0, kMaxGapS = 2.0, kMaxProbeShare = 0.05;

  explicit ThreadGuard(int full) : full_(std::max(1, full)), current_(full_) {}

  int Threads(double now) {
    ++count_;
    if (full_ == 1) return 1;
    if (probe_step_) return Other();
    double since = now - last_probe_;
    bool due = (count_ >= next_ && since >= spacing_) || since >= std::max(kMaxGapS, spacing_);
    if (due && Recent(current_).size() >= 4) {
      probe_step_ = 1;
      probe_start_ = now;
      return Other();
    }
    return current_;
  }

  void Record(int threads, double seconds, double now) {
    if (full_ == 1) return;
    std::deque<double>& recent = Recent(current_);
    if (probe_step_ == 1) {  // the waking run: not judged
      probe_step_ = 2;
      return;
    }
    if (probe_step_ == 2) {
      probe_step_ = 0;
      last_probe_ = now;
      spacing_ = (now - probe_start_) / kMaxProbeShare;
      if (seconds < kSwitch * Median(recent)) {
        current_ = threads;
        Recent(threads).clear();
        interval_ = kFirst;
      } else {
        interval_ = std::min(2 * interval_, kMaxInterval);
      }
      Push(Recent(threads), seconds);
      next_ = count_ + interval_;
      return;
    }
    if (threads == full_ && recent.size() >= 4 &&
        seconds > kStall * *std::min_element(recent.begin(), recent.end()))
      next_ = std::min(next_, count_ + 1);  // a stall: try one thread soon
    Push(recent, seconds);
  }

 private:
  static constexpr long kFirst = 16, kMaxInterval = 2048;
  static constexpr size_t kWindow = 8;

  int Other() const { return current_ == full_ ? 1 : full_; }
  std::deque<double>& Recent(int threads) { return threads == full_ ? full_times_ : one_times_; }
  static void Push(std::deque<double>& d, double v) {
    d.push_back(v);
    if (d.size() > kWindow) d.pop_front();
  }
  static double Median(std::deque<double> d) {
    std::sort(d.begin(), d.end());
    size_t k = d.size() / 2;
    return d.size() % 2 ? d[k] : (d[k - 1] + d[k]) / 2;
  }

  int full_, current_;
  std::deque<double> full_times_, one_times_;
  long count_ = 0, next_ = kFirst, interval_ = kFirst;
  int probe_step_ = 0;  // 0: no probe; 1: the waking run; 2: the judged run
  double probe_start_ = 0, last_probe_ = 0, spacing_ = 0;
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

struct edgecc_model {
  std::string dir;
  edgecc::Manifest manifest;
  edgecc::Build build;
  std::optional<ffi::Module> lib, vm;  // set by edgecc_model_open
  ffi::Function main;
  std::mutex mu;
  std::vector<ffi::Tensor> outputs;                   // of the last run without buffers
  std::vector<std::vector<int64_t>> output_shapes;    // of the last run (else the manifest's)
  std::unique_ptr<ThreadGuard> guard;                 // none: a fixed thread count
  int threads = 0;                                    // the pool's current thread count
  std::optional<ffi::Function> config_threads;        // runtime.config_threadpool

  std::vector<ffi::Tensor> Inputs(const void* const* data) {
    std::vector<ffi::Tensor> out;
    for (size_t i = 0; i < manifest.inputs.size(); ++i) {
      const edgecc::TensorSpec& s = manifest.inputs[i];
      ffi::ShapeView shape(s.shape.data(), s.shape.size());
      DLDataType dt = edgecc::Dtypes().at(s.dtype);
      DLDevice cpu{kDLCPU, 0};
      void* p = const_cast<void*>(data[i]);
      if (reinterpret_cast<uintptr_t>(p) % 64 == 0) {
        out.push_back(ffi::Tensor::FromNDAlloc(ViewAlloc{p}, shape, dt, cpu));
      } else {  // the kernels assume 64-byte aligned buffers: copy
        ffi::Tensor t = ffi::Tensor::FromNDAlloc(edgecc::AlignedCPUAlloc(), shape, dt, cpu);
        std::memcpy(t.data_ptr(), p, Bytes(s.shape, s.dtype));
        out.push_back(t);
      }
    }
    return out;
  }

  std::vector<ffi::Tensor> Call(const std::vector<ffi::Tensor>& inputs) {
    std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
    ffi::Any ret;
    if (!guard) {
      main.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
    } else {
      double start = Now();
      int want = guard->Threads(start);
      if (want != threads) {
        (*config_threads)(1, want);
        threads = want;
      }
      main.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
      double end = Now();
      guard->Record(want, end - start, end);
    }
    std::vector<ffi::Tensor> outs;
    if (auto t = ret.try_cast<ffi::Tensor>()) {
      outs.push_back(*t);
    } else {
      for (const ffi::Any& item : ret.cast<ffi::Array<ffi::Any>>())
        outs.push_back(item.cast<ffi::Tensor>());
    }
    if (outs.size() != manifest.outputs.size())
      throw edgecc::UserError("the library returned " + std::to_string(outs.size()) +
                              " outputs, the manifest lists " +
                              std::to_string(manifest.outputs.size()));
    return outs;
  }
};

extern "C" {

const char* edgecc_last_error(void) { return g_error.c_str(); }

edgecc_status edgecc_model_open(const char* artifact_dir, const edgecc_options* options,
                                edgecc_model** model) {
  if (artifact_dir == nullptr || model == nullptr)
    return Fail(EDGECC_ERR_ARGUMENT, "edgecc_model_open: artifact_dir and model must be set");
  *model = nullptr;
  return Guard([&] {
    edgecc_options opts = options ? *options : edgecc_options{nullptr, 0, 0};
    if (opts.num_threads > 0) setenv("TVM_NUM_THREADS", std::to_string(opts.num_threads).c_str(), 1);
    edgecc::SetDefaultThreads();
    auto m = std::make_unique<edgecc_model>();
    m->dir = artifact_dir;
    m->manifest = edgecc::ReadManifest(m->dir);
    const edgecc::Manifest& man = m->manifest;
    if (man.arch != edgecc::kArch)
      throw edgecc::UserError("artifact '" + m->dir + "' was compiled for " + man.arch +
                              " (target " + man.target + "); this edgecc runtime is built for " +
                              edgecc::kArch);
    if (man.device != "cpu")
      throw edgecc::UserError("artifact '" + m->dir + "' targets " + man.device +
                              "; this edgecc runtime runs CPU artifacts only");
    edgecc::CheckRuntime(man, m->dir);
    m->build = edgecc::ChooseBuild(man, edgecc::CpuFlags(), opts.build ? opts.build : "", m->dir);
    std::string lib = edgecc::CheckLibrary(m->dir, m->build, opts.verify != 0);
    m->lib = ffi::Module::LoadFromFile(lib);
    m->vm = (*m->lib)->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    (*m->vm)->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2,
                                                       static_cast<int>(kDLCPU), 0, 2);
    m->main = (*m->vm)->GetFunction("main").value();
    for (const auto& s : man.outputs) m->output_shapes.push_back(s.shape);
    const char* adaptive = getenv("EDGECC_ADAPTIVE_THREADS");
    int full = std::atoi(getenv("TVM_NUM_THREADS") ? getenv("TVM_NUM_THREADS") : "1");
    auto config = ffi::Function::GetGlobal("runtime.config_threadpool");
    if (full > 1 && config.has_value() && !(adaptive && std::string(adaptive) == "0")) {
      m->guard = std::make_unique<ThreadGuard>(full);
      m->threads = full;
      m->config_threads = *config;
    }
    *model = m.release();
    return EDGECC_OK;
  });
}

void edgecc_model_close(edgecc_model* model) { delete model; }

const char* edgecc_model_build(const edgecc_model* model) {
  return model ? model->build.target.c_str() : "";
}

int32_t edgecc_model_num_inputs(const edgecc_model* model) {
  return model ? static_cast<int32_t>(model->manifest.inputs.size()) : 0;
}

int32_t edgecc_model_num_outputs(const edgecc_model* model) {
  return model ? static_cast<int32_t>(model->manifest.outputs.size()) : 0;
}

static edgecc_status Info(const edgecc::TensorSpec& s, const std::vector<int64_t>& shape,
                          edgecc_tensor_info* info) {
  info->name = s.name.c_str();
  info->dtype = s.dtype.c_str();
  info->ndim = static_cast<int32_t>(shape.size());
  info->shape = shape.data();
  info->bytes = Bytes(shape, s.dtype);
  return EDGECC_OK;
}

edgecc_status edgecc_model_input(const edgecc_model* model, int32_t index,
                                 edgecc_tensor_info* info) {
  if (!model || !info || index < 0 || index >= edgecc_model_num_inputs(model))
    return Fail(EDGECC_ERR_ARGUMENT, "edgecc_model_input: no input #" + std::to_string(index));
  const auto& s = model->manifest.inputs[index];
  return Info(s, s.shape, info);
}

edgecc_status edgecc_model_output(const edgecc_model* model, int32_t index,
                                  edgecc_tensor_info* info) {
  if (!model || !info || index < 0 || index >= edgecc_model_num_outputs(model))
    return Fail(EDGECC_ERR_ARGUMENT, "edgecc_model_output: no output #" + std::to_string(index));
  return Info(model->manifest.outputs[index], model->output_shapes[index], info);
}

edgecc_status edgecc_model_run(edgecc_model* model, const void* const* inputs,
                               void* const* outputs, const size_t* capacity) {
  if (!model || (!inputs && !model->manifest.inputs.empty()) || (outputs && !capacity))
    return Fail(EDGECC_ERR_ARGUMENT, "edgecc_model_run: model, inputs (and capacity with "
                                     "outputs) must be set");
  for (size_t i = 0; i < model->manifest.inputs.size(); ++i)
    if (inputs[i] == nullptr)
      return Fail(EDGECC_ERR_ARGUMENT, "edgecc_model_run: input #" + std::to_string(i) +
                                           " ('" + model->manifest.inputs[i].name + "') is NULL");
  std::lock_guard<std::mutex> lock(model->mu);
  return Guard([&] {
    std::vector<ffi::Tensor> outs = model->Call(model->Inputs(inputs));
    model->outputs.clear();
    for (size_t i = 0; i < outs.size(); ++i) {
      model->output_shapes[i].assign(outs[i].shape().begin(), outs[i].shape().end());
      size_t n = ffi::GetDataSize(outs[i]);
      if (outputs == nullptr) continue;
      if (outputs[i] == nullptr || capacity[i] < n)
        return Fail(EDGECC_ERR_ARGUMENT, "edgecc_model_run: output #" + std::to_string(i) +
                                             " ('" + model->manifest.outputs[i].name +
                                             "') needs " + std::to_string(n) + " bytes, got " +
                                             std::to_string(outputs[i] ? capacity[i] : 0));
      std::memcpy(outputs[i], outs[i].data_ptr(), n);
    }
    if (outputs == nullptr) model->outputs = std::move(outs);
    return EDGECC_OK;
  });
}

const void* edgecc_model_output_data(const edgecc_model* model, int32_t index) {
  if (!model || index < 0 || static_cast<size_t>(index) >= model->outputs.size()) return nullptr;
  return model->outputs[index].data_ptr();
}

edgecc_status edgecc_model_time(edgecc_model* model, const void* const* inputs, int32_t warmup,
                                int32_t runs, double* mean_ms, double* median_ms) {
  if (!model || runs < 1 || warmup < 0 || !mean_ms || !median_ms)
    return Fail(EDGECC_ERR_ARGUMENT, "edgecc_model_time: model, runs >= 1, warmup >= 0, "
                                     "mean_ms and median_ms must be set");
  std::lock_guard<std::mutex> lock(model->mu);
  return Guard([&] {
    std::vector<ffi::Tensor> in;
    if (inputs != nullptr) {
      in = model->Inputs(inputs);
    } else {
      for (const auto& s : model->manifest.inputs)
        in.push_back(ffi::Tensor::FromNDAlloc(edgecc::AlignedCPUAlloc(),
                                              ffi::ShapeView(s.shape.data(), s.shape.size()),
                                              edgecc::Dtypes().at(s.dtype), DLDevice{kDLCPU, 0}));
    }
    for (int i = 0; i < warmup; ++i) model->Call(in);
    std::vector<double> ms;
    for (int i = 0; i < runs; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      model->Call(in);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                             t0).count());
    }
    *mean_ms = std::accumulate(ms.begin(), ms.end(), 0.0) / ms.size();
    std::sort(ms.begin(), ms.end());
    size_t k = ms.size() / 2;
    *median_ms = ms.size() % 2 ? ms[k] : (ms[k - 1] + ms[k]) / 2;
    return EDGECC_OK;
  });
}

}  // extern "C"
