// edgecc-run: run an edgecc artifact on a device without Python.
//
//   edgecc-run BUNDLE_DIR --input NAME=FILE.npy ... [--output DIR] [--bench N] [--threads N]
//
// Reads BUNDLE_DIR/model.json (the manifest written by `edgecc compile`, validated here exactly
// as edgecc/manifest.py validates it), loads BUNDLE_DIR/model.so with the TVM runtime, checks
// the inputs against the manifest, runs the Relax VM's `main`, and writes outputs as .npy.
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sched.h>
#include <set>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

#if defined(__aarch64__)
const char* kArch = "aarch64";
#elif defined(__x86_64__)
const char* kArch = "x86_64";
#else
const char* kArch = "unknown";
#endif

const char* kUsage =
    "usage: edgecc-run BUNDLE_DIR [--input NAME=FILE.npy]... [--output DIR] [--bench N]\n"
    "                  [--warmup N] [--threads N]\n"
    "\n"
    "Run an edgecc artifact (model.so + model.json) without Python.\n"
    "  --input NAME=FILE.npy  an input tensor (repeat for each input); zeros when none is given\n"
    "  --output DIR           write each output to DIR/NAME.npy (else print a summary)\n"
    "  --bench N              time N runs after warm-up; print mean/p50/p90 latency\n"
    "  --warmup N             warm-up runs before timing (default 3)\n"
    "  --threads N            worker threads (sets TVM_NUM_THREADS)\n";

struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------- manifest (edgecc-artifact v1)
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
};

struct Manifest {
  std::string target, arch, device, library;
  std::vector<TensorSpec> inputs, outputs;
};

const std::map<std::string, DLDataType>& Dtypes() {
  static const std::map<std::string, DLDataType> m = {
      {"float32", {kDLFloat, 32, 1}}, {"float16", {kDLFloat, 16, 1}},
      {"int8", {kDLInt, 8, 1}},       {"uint8", {kDLUInt, 8, 1}},
      {"int32", {kDLInt, 32, 1}},     {"int64", {kDLInt, 64, 1}},
      {"bool", {kDLBool, 8, 1}}};
  return m;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UserError("cannot read '" + path + "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

ffi::Any Field(const ffi::json::Object& obj, const char* key, const std::string& src) {
  auto it = obj.find(ffi::String(key));
  if (it == obj.end()) throw UserError(src + ": malformed manifest (missing '" + key + "')");
  return (*it).second;
}

std::string StrField(const ffi::json::Object& obj, const char* key, const std::string& src) {
  auto v = Field(obj, key, src).try_cast<ffi::String>();
  if (!v.has_value()) throw UserError(src + ": malformed manifest ('" + key + "' is not a string)");
  return std::string(*v);
}

std::vector<TensorSpec> Specs(const ffi::json::Object& obj, const char* key,
                              const std::string& src) {
  std::vector<TensorSpec> out;
  auto arr = Field(obj, key, src).cast<ffi::json::Array>();
  for (const ffi::Any& item : arr) {
    auto t = item.cast<ffi::json::Object>();
    TensorSpec s;
    s.name = StrField(t, "name", src);
    s.dtype = StrField(t, "dtype", src);
    if (!Dtypes().count(s.dtype))
      throw UserError(src + ": tensor '" + s.name + "' has unsupported dtype '" + s.dtype + "'");
    for (const ffi::Any& d : Field(t, "shape", src).cast<ffi::json::Array>()) {
      int64_t v = d.cast<int64_t>();
      if (v < 0) throw UserError(src + ": tensor '" + s.name + "' has a negative dimension");
      s.shape.push_back(v);
    }
    out.push_back(std::move(s));
  }
  return out;
}

Manifest ReadManifest(const std::string& dir) {
  std::string src = dir + "/model.json";
  struct stat st;
  if (stat(src.c_str(), &st) != 0)
    throw UserError(dir + ": no model.json (not an edgecc artifact directory)");
  ffi::String err;
  ffi::json::Value v = ffi::json::Parse(ReadFile(src), &err);
  if (!err.empty()) throw UserError(src + ": not valid JSON (" + std::string(err) + ")");
  auto obj = v.cast<ffi::json::Object>();
  auto fmt = Field(obj, "format", src).try_cast<ffi::String>();
  if (!fmt.has_value() || std::string(*fmt) != "edgecc-artifact")
    throw UserError(src + ": not an edgecc manifest");
  int64_t version = Field(obj, "format_version", src).cast<int64_t>();
  if (version != 1)
    throw UserError(src + ": manifest format_version " + std::to_string(version) +
                    " is not supported (this edgecc-run reads 1)");
  Manifest m;
  m.target = StrField(obj, "target", src);
  m.arch = StrField(obj, "arch", src);
  m.device = StrField(obj, "device", src);
  m.library = StrField(obj, "library", src);
  m.inputs = Specs(obj, "inputs", src);
  m.outputs = Specs(obj, "outputs", src);
  if (m.device != "cpu" && m.device != "cuda")
    throw UserError(src + ": unknown device '" + m.device + "'");
  return m;
}

std::string Describe(const TensorSpec& s) {
  std::string out = s.name + ": " + s.dtype + "[";
  for (size_t i = 0; i < s.shape.size(); ++i) out += (i ? "," : "") + std::to_string(s.shape[i]);
  return out + "]";
}

std::string ShapeStr(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i)
    out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

// ---------------------------------------------------------------- tensors and .npy
struct AlignedCPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    size_t rounded = (std::max<size_t>(n, 1) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, rounded);
    if (t->data == nullptr) throw std::bad_alloc();
    std::memset(t->data, 0, rounded);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Tensor NewTensor(const std::vector<int64_t>& shape, const std::string& dtype) {
  return ffi::Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                  Dtypes().at(dtype), DLDevice{kDLCPU, 0});
}

const std::map<std::string, std::string>& NpyDescr() {
  static const std::map<std::string, std::string> m = {
      {"<f4", "float32"}, {"<f2", "float16"}, {"|i1", "int8"}, {"|u1", "uint8"},
      {"<i4", "int32"},   {"<i8", "int64"},   {"|b1", "bool"}};
  return m;
}

struct Npy {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string data;
};

Npy ReadNpy(const std::string& path) {
  std::string raw = ReadFile(path);
  auto bad = [&](const std::string& why) {
    return UserError("input file '" + path + "' is not a valid .npy file (" + why + ")");
  };
  if (raw.size() < 10 || raw.compare(0, 6, "\x93NUMPY") != 0) throw bad("bad magic");
  int major = static_cast<unsigned char>(raw[6]);
  size_t hlen, start;
  if (major == 1) {
    hlen = static_cast<unsigned char>(raw[8]) | (static_cast<unsigned char>(raw[9]) << 8);
    start = 10;
  } else {
    if (raw.size() < 12) throw bad("truncated header");
    hlen = 0;
    for (int i = 0; i < 4; ++i) hlen |= size_t(static_cast<unsigned char>(raw[8 + i])) << (8 * i);
    start = 12;
  }
  if (start + hlen > raw.size()) throw bad("truncated header");
  std::string header = raw.substr(start, hlen);
  auto value_of = [&](const std::string& key) {
    size_t k = header.find("'" + key + "'");
    if (k == std::string::npos) throw bad("header has no '" + key + "'");
    size_t colon = header.find(':', k);
    size_t b = header.find_first_not_of(" ", colon + 1);
    return header.substr(b);
  };
  std::string descr = value_of("descr");
  descr = descr.substr(1, descr.find('\'', 1) - 1);
  if (value_of("fortran_order").rfind("True", 0) == 0) throw bad("Fortran order is not supported");
  std::string shape_txt = value_of("shape");
  shape_txt = shape_txt.substr(1, shape_txt.find(')') - 1);
  Npy out;
  std::stringstream ss(shape_txt);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.find_first_not_of(" ") == std::string::npos) continue;
    out.shape.push_back(std::stoll(item));
  }
  // numpy types no model takes still get their numpy name, for the dtype-mismatch message
  static const std::map<std::string, std::string> others = {
      {"<f8", "float64"}, {"<i2", "int16"}, {"<u2", "uint16"}, {"<u4", "uint32"},
      {"<u8", "uint64"}};
  auto it = NpyDescr().find(descr);
  auto other = others.find(descr);
  out.dtype = it != NpyDescr().end()       ? it->second
              : other != others.end()      ? other->second
                                           : "numpy '" + descr + "'";
  out.data = raw.substr(start + hlen);
  return out;
}

void WriteNpy(const std::string& path, const ffi::Tensor& t, const std::string& dtype) {
  std::string descr;
  for (const auto& kv : NpyDescr())
    if (kv.second == dtype) descr = kv.first;
  std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " +
                       ShapeStr(shape) + ", }";
  size_t total = 10 + header.size() + 1;
  header += std::string((64 - total % 64) % 64, ' ') + "\n";
  std::ofstream f(path, std::ios::binary);
  if (!f) throw UserError("cannot write '" + path + "'");
  f.write("\x93NUMPY\x01\x00", 8);
  uint16_t hlen = static_cast<uint16_t>(header.size());
  f.put(static_cast<char>(hlen & 0xff));
  f.put(static_cast<char>(hlen >> 8));
  f << header;
  f.write(static_cast<const char*>(t.data_ptr()), ffi::GetDataSize(t));
}

// ---------------------------------------------------------------- runner
struct Options {
  std::string dir, output;
  std::vector<std::pair<std::string, std::string>> inputs;
  int bench = 0, warmup = 3;
};

int ParseInt(const std::string& flag, const std::string& v, int min) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < min)
    throw UserError(flag + " expects an integer >= " + std::to_string(min) + ", got '" + v + "'");
  return static_cast<int>(x);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw UserError(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--input" || a == "-i") {
      std::string v = next();
      size_t eq = v.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == v.size())
        throw UserError("bad --input '" + v + "': expected NAME=FILE.npy");
      o.inputs.emplace_back(v.substr(0, eq), v.substr(eq + 1));
    } else if (a == "--output" || a == "-o") {
      o.output = next();
    } else if (a == "--bench") {
      o.bench = ParseInt(a, next(), 1);
    } else if (a == "--warmup") {
      o.warmup = ParseInt(a, next(), 0);
    } else if (a == "--threads") {
      setenv("TVM_NUM_THREADS", std::to_string(ParseInt(a, next(), 1)).c_str(), 1);
    } else if (!a.empty() && a[0] == '-') {
      throw UserError("unknown option '" + a + "' (see --help)");
    } else if (o.dir.empty()) {
      o.dir = a;
    } else {
      throw UserError("unexpected argument '" + a + "' (see --help)");
    }
  }
  if (o.dir.empty()) throw UserError("missing BUNDLE_DIR (see --help)");
  return o;
}

std::vector<ffi::Tensor> LoadInputs(const Manifest& m, const Options& o) {
  std::map<std::string, std::string> given(o.inputs.begin(), o.inputs.end());
  std::vector<std::string> problems;
  std::vector<std::string> missing, unknown;
  for (const auto& s : m.inputs)
    if (!o.inputs.empty() && !given.count(s.name)) missing.push_back(s.name);
  for (const auto& kv : given) {
    bool known = false;
    for (const auto& s : m.inputs) known |= s.name == kv.first;
    if (!known) unknown.push_back(kv.first);
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string out;
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
    return out;
  };
  if (!missing.empty()) problems.push_back("missing input(s) " + join(missing));
  if (!unknown.empty()) problems.push_back("unknown input(s) " + join(unknown));
  std::vector<ffi::Tensor> tensors;
  for (const auto& s : m.inputs) {
    ffi::Tensor t = NewTensor(s.shape, s.dtype);
    auto it = given.find(s.name);
    if (it != given.end()) {
      Npy npy = ReadNpy(it->second);
      if (npy.shape != s.shape)
        problems.push_back("input '" + s.name + "' has shape " + ShapeStr(npy.shape) +
                           ", expected " + ShapeStr(s.shape));
      if (npy.dtype != s.dtype)
        problems.push_back("input '" + s.name + "' has dtype " + npy.dtype + ", expected " +
                           s.dtype);
      size_t need = ffi::GetDataSize(t);
      if (npy.shape == s.shape && npy.dtype == s.dtype) {
        if (npy.data.size() < need)
          throw UserError("input file '" + it->second + "' is truncated");
        std::memcpy(t.data_ptr(), npy.data.data(), need);
      }
    }
    tensors.push_back(t);
  }
  if (!problems.empty()) {
    std::vector<std::string> specs;
    for (const auto& s : m.inputs) specs.push_back(Describe(s));
    std::string all;
    for (size_t i = 0; i < problems.size(); ++i) all += (i ? "; " : "") + problems[i];
    throw UserError(all + " (the model takes: " + join(specs) + ")");
  }
  return tensors;
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  double pos = p / 100.0 * (v.size() - 1);
  size_t lo = static_cast<size_t>(pos);
  size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

int Run(const Options& o) {
  Manifest m = ReadManifest(o.dir);
  if (m.arch != kArch)
    throw UserError("artifact '" + o.dir + "' was compiled for " + m.arch + " (target " +
                    m.target + "); this edgecc-run is built for " + kArch);
  if (m.device != "cpu")
    throw UserError("artifact '" + o.dir + "' targets " + m.device +
                    "; this edgecc-run runs CPU artifacts only");
  std::string lib = o.dir + "/" + m.library;
  struct stat st;
  if (stat(lib.c_str(), &st) != 0) throw UserError(o.dir + ": " + m.library + " is missing");
  std::vector<ffi::Tensor> inputs = LoadInputs(m, o);
  if (o.inputs.empty()) std::printf("no --input given: using zeros\n");

  ffi::Module mod = ffi::Module::LoadFromFile(lib);
  ffi::Module vm = mod->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2,
                                               static_cast<int>(kDLCPU), 0, 2);
  ffi::Function main_fn = vm->GetFunction("main").value();
  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  auto call = [&]() {
    ffi::Any ret;
    main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
    return ret;
  };
  ffi::Any ret = call();
  std::vector<ffi::Tensor> outs;
  if (auto t = ret.try_cast<ffi::Tensor>()) {
    outs.push_back(*t);
  } else {
    for (const ffi::Any& item : ret.cast<ffi::Array<ffi::Any>>()) outs.push_back(item.cast<ffi::Tensor>());
  }
  if (outs.size() != m.outputs.size())
    throw UserError("the library returned " + std::to_string(outs.size()) +
                    " outputs, the manifest lists " + std::to_string(m.outputs.size()));
  if (!o.output.empty()) mkdir(o.output.c_str(), 0755);
  for (size_t i = 0; i < outs.size(); ++i) {
    const TensorSpec& s = m.outputs[i];
    if (!o.output.empty()) {
      std::string safe = s.name;
      for (char& c : safe)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') c = '_';
      WriteNpy(o.output + "/" + safe + ".npy", outs[i], s.dtype);
    }
    std::printf("%s\n", Describe(s).c_str());
  }
  if (!o.output.empty()) std::printf("wrote %zu output(s) to %s\n", outs.size(), o.output.c_str());
  if (o.bench > 0) {
    for (int i = 0; i < o.warmup; ++i) call();
    std::vector<double> ms;
    for (int i = 0; i < o.bench; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      call();
      auto t1 = std::chrono::steady_clock::now();
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / ms.size();
    std::printf("latency: mean %.3f ms  p50 %.3f ms  p90 %.3f ms  (%d runs after %d warm-up)\n",
                mean, Percentile(ms, 50), Percentile(ms, 90), o.bench, o.warmup);
  }
  return 0;
}

// Without TVM_NUM_THREADS the TVM runtime uses half the logical CPUs on x86 (it assumes
// hyper-threading). Use the physical cores this process may run on, unless the user chose.
void SetDefaultThreads() {
  if (getenv("TVM_NUM_THREADS") != nullptr || getenv("OMP_NUM_THREADS") != nullptr) return;
  cpu_set_t set;
  std::set<std::string> cores;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &set)) continue;
      std::ifstream f("/sys/devices/system/cpu/cpu" + std::to_string(cpu) +
                      "/topology/thread_siblings_list");
      std::string siblings;
      if (!(f && std::getline(f, siblings))) siblings = std::to_string(cpu);
      cores.insert(siblings);
    }
  }
  long n = cores.empty() ? sysconf(_SC_NPROCESSORS_ONLN) : static_cast<long>(cores.size());
  setenv("TVM_NUM_THREADS", std::to_string(std::max(1L, n)).c_str(), 1);
}

}  // namespace

int main(int argc, char** argv) {
  SetDefaultThreads();
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const UserError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const ffi::Error& e) {
    std::fprintf(stderr, "error: TVM runtime: %s: %s\n", e.kind().c_str(), e.message().c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
