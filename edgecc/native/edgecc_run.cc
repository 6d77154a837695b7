// edgecc-run: run an edgecc artifact on a device without Python.
//
//   edgecc-run BUNDLE_DIR --input NAME=FILE.npy ... [--output DIR] [--bench N] [--threads N]
//   edgecc-run serve --tracker HOST:PORT --key KEY [--host ADDR] [--port P]
//
// Reads BUNDLE_DIR/model.json (the manifest written by `edgecc compile`, validated here exactly
// as edgecc/manifest.py validates it), loads BUNDLE_DIR/model.so with the TVM runtime, checks
// the inputs against the manifest, runs the Relax VM's `main`, and writes outputs as .npy.
//
// `serve` makes the device a TVM RPC server (TVM's own protocol and tracker): it registers with
// the tracker, accepts sessions, and serves each in a forked child with the runtime's own
// `rpc.ServerLoop`, in a fresh work directory. Hosts then upload, run and time artifacts on it
// (edgecc run/bench --rpc-tracker, edgecc pipeline run) and MetaSchedule measures candidates.
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
#include <iterator>
#include <map>
#include <arpa/inet.h>
#include <csignal>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <random>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
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
    "                  [--warmup N] [--threads N] [--build TARGET]\n"
    "\n"
    "Run an edgecc artifact (model.so + model.json) without Python.\n"
    "  --input NAME=FILE.npy  an input tensor (repeat for each input); zeros when none is given\n"
    "  --output DIR           write each output to DIR/NAME.npy (else print a summary)\n"
    "  --bench N              time N runs after warm-up; print mean/p50/p90 latency\n"
    "  --warmup N             warm-up runs before timing (default 3)\n"
    "  --threads N            worker threads (sets TVM_NUM_THREADS)\n"
    "  --build TARGET         which of the bundle's builds to run (x86_64 bundles carry an\n"
    "                         AVX-512 build too); default: the best this CPU can run\n"
    "\n"
    "usage: edgecc-run serve --tracker HOST:PORT --key KEY [--host ADDR] [--port P]\n"
    "                        [--session-timeout S] [--threads N] [--max-upload-mb M]\n"
    "                        [--token-file F | --no-token]\n"
    "\n"
    "Serve this device over TVM RPC: register with the tracker under KEY and run the sessions\n"
    "hosts open (upload, load, run, time), one at a time, each in a fresh work directory.\n"
    "  --tracker HOST:PORT    the TVM RPC tracker to register with\n"
    "  --key KEY              device key clients ask the tracker for (e.g. rpi4)\n"
    "  --host ADDR            address to listen on (default 0.0.0.0)\n"
    "  --port P               port to listen on (default 9090; 0 picks a free one)\n"
    "  --session-timeout S    end a session after S seconds (default: the client's, else none)\n"
    "  --max-upload-mb M      refuse an upload over M MiB, or one that takes a session's work\n"
    "                         directory over 4 x M MiB (default 256)\n"
    "  --token-file F         the device's shared secret (made on first start and printed once;\n"
    "                         default $XDG_CONFIG_HOME/edgecc/serve-token): a session that does\n"
    "                         not present it is refused (clients: --rpc-token-file F)\n"
    "  --no-token             accept any client (anyone who reaches the port runs code here)\n";

struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------- manifest (edgecc-artifact v1)
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
};

struct Build {  // one compiled library of the model and what it needs of the CPU
  std::string target, library;
  std::vector<std::string> cpu_features;
};

struct Manifest {
  std::string target, arch, device, library;
  std::vector<TensorSpec> inputs, outputs;
  std::vector<Build> builds;  // ISA variants first, the base build (target, library) last
};

const std::map<std::string, DLDataType>& Dtypes() {
  static const std::map<std::string, DLDataType> m = {
      {"float32", {kDLFloat, 32, 1}}, {"float16", {kDLFloat, 16, 1}},
      {"int8", {kDLInt, 8, 1}},       {"uint8", {kDLUInt, 8, 1}},
      {"int32", {kDLInt, 32, 1}},     {"int64", {kDLInt, 64, 1}},
      {"bool", {kDLBool, 8, 1}},      {"float64", {kDLFloat, 64, 1}},
      {"int16", {kDLInt, 16, 1}},     {"uint16", {kDLUInt, 16, 1}},
      {"uint32", {kDLUInt, 32, 1}},   {"uint64", {kDLUInt, 64, 1}},
      {"bfloat16", {kDLBfloat, 16, 1}},
      {"float8_e4m3fn", {kDLFloat8_e4m3fn, 8, 1}},
      {"float8_e5m2", {kDLFloat8_e5m2, 8, 1}},
      {"float8_e8m0fnu", {kDLFloat8_e8m0fnu, 8, 1}}};
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
                              const std::string& src, bool dynamic = false) {
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
      // -1: an output dim known only at run time (the output's own shape is what is written)
      if (v < (dynamic ? -1 : 0))
        throw UserError(src + ": tensor '" + s.name + "' has a negative dimension");
      s.shape.push_back(v);
    }
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<std::string> Strings(const ffi::json::Object& obj, const char* key,
                                 const std::string& src) {  // optional: none if absent
  std::vector<std::string> out;
  if (obj.find(ffi::String(key)) == obj.end()) return out;
  for (const ffi::Any& item : Field(obj, key, src).cast<ffi::json::Array>()) {
    auto v = item.try_cast<ffi::String>();
    if (!v.has_value()) throw UserError(src + ": malformed manifest ('" + key + "' holds a non-string)");
    out.emplace_back(*v);
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
  m.outputs = Specs(obj, "outputs", src, /*dynamic=*/true);
  if (obj.find(ffi::String("variants")) != obj.end()) {
    for (const ffi::Any& item : Field(obj, "variants", src).cast<ffi::json::Array>()) {
      auto v = item.cast<ffi::json::Object>();
      m.builds.push_back({StrField(v, "target", src), StrField(v, "library", src),
                          Strings(v, "cpu_features", src)});
    }
  }
  m.builds.push_back({m.target, m.library, Strings(obj, "cpu_features", src)});
  if (m.device != "cpu" && m.device != "cuda")
    throw UserError(src + ": unknown device '" + m.device + "'");
  return m;
}

std::string Describe(const TensorSpec& s) {
  std::string out = s.name + ": " + s.dtype + "[";
  for (size_t i = 0; i < s.shape.size(); ++i)
    out += (i ? "," : "") + (s.shape[i] < 0 ? std::string("?") : std::to_string(s.shape[i]));
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
      {"<f4", "float32"}, {"<f2", "float16"}, {"|i1", "int8"},   {"|u1", "uint8"},
      {"<i4", "int32"},   {"<i8", "int64"},   {"|b1", "bool"},   {"<f8", "float64"},
      {"<i2", "int16"},   {"<u2", "uint16"},  {"<u4", "uint32"}, {"<u8", "uint64"},
      // numpy has no bfloat16/float8: ml_dtypes arrays are saved as raw bytes of their size
      {"<V2", "bfloat16"}, {"|V1", "float8_e4m3fn"}};
  return m;
}

// The dtype an .npy file of numpy type `npy` holds, for a model input declared `declared`:
// raw 1-byte records are any float8 type.
bool NpyHolds(const std::string& npy, const std::string& declared) {
  if (npy == declared) return true;
  return npy == "float8_e4m3fn" && declared.rfind("float8_", 0) == 0;
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
  if (descr == "<V1") descr = "|V1";
  auto it = NpyDescr().find(descr);
  out.dtype = it != NpyDescr().end() ? it->second : "numpy '" + descr + "'";
  out.data = raw.substr(start + hlen);
  return out;
}

void WriteNpy(const std::string& path, const ffi::Tensor& t, const std::string& dtype) {
  std::string descr = dtype.rfind("float8_", 0) == 0 ? "|V1" : "";
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

// ---------------------------------------------------------------- CPU features
std::set<std::string> CpuFlags() {  // /proc/cpuinfo's flags (x86) or Features (ARM); none if unknown
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("flags", 0) == 0 || line.rfind("Features", 0) == 0) {
      std::istringstream words(line.substr(line.find(':') + 1));
      return {std::istream_iterator<std::string>(words), std::istream_iterator<std::string>()};
    }
  }
  return {};
}

// The build to run: the one named `want`, else the first ISA variant whose features the CPU has,
// else the base build; one needing a feature the CPU lacks is refused (as edgecc/runtime.py does).
const Build& ChooseBuild(const Manifest& m, const std::set<std::string>& flags,
                         const std::string& want, const std::string& dir) {
  std::string names;
  for (const Build& b : m.builds) names += (names.empty() ? "" : ", ") + b.target;
  bool found = false;
  for (const Build& b : m.builds) {
    if (!want.empty() && b.target != want) continue;
    if (flags.empty() && want.empty() && b.target != m.target) continue;  // unknown CPU: base
    found = true;
    std::string missing;
    for (const std::string& f : b.cpu_features)
      if (!flags.empty() && !flags.count(f)) missing += (missing.empty() ? "" : ", ") + f;
    if (missing.empty()) return b;
    if (!want.empty() || b.target == m.target)
      throw UserError("this CPU lacks " + missing + ", which the " + b.target +
                      " build of artifact '" + dir + "' needs");
  }
  if (!found) throw UserError("artifact '" + dir + "' has no '" + want + "' build (it has: " + names + ")");
  throw UserError("artifact '" + dir + "' has no build this CPU can run");
}

// ---------------------------------------------------------------- runner
struct Options {
  std::string dir, output, build;
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
    } else if (a == "--build") {
      o.build = next();
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
      if (!NpyHolds(npy.dtype, s.dtype))
        problems.push_back("input '" + s.name + "' has dtype " + npy.dtype + ", expected " +
                           s.dtype);
      size_t need = ffi::GetDataSize(t);
      if (npy.shape == s.shape && NpyHolds(npy.dtype, s.dtype)) {
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
  const Build& build = ChooseBuild(m, CpuFlags(), o.build, o.dir);
  std::string lib = o.dir + "/" + build.library;
  struct stat st;
  if (stat(lib.c_str(), &st) != 0) throw UserError(o.dir + ": " + build.library + " is missing");
  if (m.builds.size() > 1) std::printf("running the %s build\n", build.target.c_str());
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


// ---------------------------------------------------------------- RPC device server
// TVM's RPC wire constants (python/tvm/rpc/base.py)
constexpr int32_t kRPCMagic = 0xff271;
constexpr int32_t kTrackerMagic = 0x2f271;
constexpr int32_t kCodeSuccess = kRPCMagic, kCodeMismatch = kRPCMagic + 2;
enum TrackerCode { kSuccess = 0, kPut = 3, kUpdateInfo = 5, kGetPendingMatchkeys = 7 };

struct ServeOptions {
  std::string tracker_host, key, host = "0.0.0.0";
  int tracker_port = 0, port = 9090;
  double session_timeout = 0;
  int64_t max_upload_mb = 256;
  std::string token_file;
  bool no_token = false;
};

std::string DefaultTokenPath() {
  const char* xdg = getenv("XDG_CONFIG_HOME");
  const char* home = getenv("HOME");
  std::string base = xdg && *xdg ? xdg : std::string(home ? home : "/tmp") + "/.config";
  return base + "/edgecc/serve-token";
}

// The device's token: read from the token file, or made (128 random bits, hex) and written
// there (mode 0600) on first start, and printed once.
std::string LoadOrCreateToken(const ServeOptions& o) {
  std::string path = o.token_file.empty() ? DefaultTokenPath() : o.token_file;
  std::ifstream in(path);
  if (in) {
    std::string token;
    std::getline(in, token);
    token.erase(token.find_last_not_of(" \t\r\n") + 1);
    if (token.size() < 16 || token.find_first_of(" \t") != std::string::npos)
      throw UserError("token file '" + path + "' does not hold a token (16+ characters, no spaces)");
    return token;
  }
  unsigned char bytes[16];
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  if (!urandom.read(reinterpret_cast<char*>(bytes), sizeof(bytes)))
    throw UserError("cannot read /dev/urandom to make a token");
  static const char* hex = "0123456789abcdef";
  std::string token;
  for (unsigned char b : bytes) token += {hex[b >> 4], hex[b & 15]};
  std::string dir = path.substr(0, path.rfind('/'));
  if (!dir.empty() && std::system(("mkdir -p '" + dir + "'").c_str()) != 0)
    throw UserError("cannot create the directory of token file '" + path + "'");
  mode_t old = umask(077);
  std::ofstream out(path);
  out << token << "\n";
  umask(old);
  if (!out) throw UserError("cannot write token file '" + path + "'");
  std::printf("edgecc-run serve: made this device's token in %s: %s\n"
              "  (clients pass the file with --rpc-token-file; it is not printed again)\n",
              path.c_str(), token.c_str());
  return token;
}

bool SameToken(const std::string& a, const std::string& b) {  // constant time for equal sizes
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string g_workdir;  // the running session's work directory (set in the session's child)
int64_t g_max_upload = int64_t(256) << 20;  // bytes: one upload; the work directory holds 4x

// `name` inside the session's work directory: a client names files relative to it, never an
// absolute path or one that climbs out of it with "..". "" is the directory itself (MetaSchedule's
// runner cleans up with remove("")).
std::string WorkPath(const std::string& name) {
  bool climbs = name == ".." || name.rfind("../", 0) == 0 || name.find("/../") != std::string::npos ||
                (name.size() >= 3 && name.compare(name.size() - 3, 3, "/..") == 0);
  if ((!name.empty() && name[0] == '/') || climbs)
    TVM_FFI_THROW(ValueError) << "edgecc-run serve refuses the file name '" << name
                              << "': names are relative to the session's work directory, "
                              << "without '..'";
  return g_workdir + "/" + name;
}

int64_t DirBytes(const std::string& dir) {
  int64_t total = 0;
  std::string cmd = "du -sb '" + dir + "' 2>/dev/null";
  if (FILE* f = popen(cmd.c_str(), "r")) {
    if (std::fscanf(f, "%ld", &total) != 1) total = 0;
    pclose(f);
  }
  return total;
}

void SendAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0) throw std::runtime_error("connection lost while sending");
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void RecvAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t k = recv(fd, p, n, 0);
    if (k <= 0) throw std::runtime_error("connection lost while receiving");
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void SendInt(int fd, int32_t v) { SendAll(fd, &v, 4); }  // little-endian hosts only
int32_t RecvInt(int fd) {
  int32_t v;
  RecvAll(fd, &v, 4);
  return v;
}

void SendJson(int fd, const std::string& json) {
  SendInt(fd, static_cast<int32_t>(json.size()));
  SendAll(fd, json.data(), json.size());
}

ffi::json::Value RecvJson(int fd) {
  int32_t n = RecvInt(fd);
  if (n < 0 || n > (1 << 24)) throw std::runtime_error("bad message length from tracker");
  std::string buf(static_cast<size_t>(n), '\0');
  RecvAll(fd, buf.data(), buf.size());
  ffi::String err;
  ffi::json::Value v = ffi::json::Parse(buf, &err);
  if (!err.empty()) throw std::runtime_error("tracker sent invalid JSON: " + std::string(err));
  return v;
}

std::string Quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

int ConnectTcp(const std::string& host, int port, int timeout_ms) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res)
    throw UserError("cannot resolve tracker host '" + host + "'");
  int fd = -1;
  std::string why = "no address";
  for (addrinfo* a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    why = std::strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) throw std::runtime_error(why);
  return fd;
}

class Tracker {
 public:
  Tracker(const ServeOptions& o, int port) : o_(o), port_(port) {}
  ~Tracker() { Close(); }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  bool connected() const { return fd_ >= 0; }

  // Connect, say hello, report this server; retries for up to `patience_s` seconds.
  void Connect(double patience_s) {
    auto start = std::chrono::steady_clock::now();
    std::string last;
    while (true) {
      try {
        fd_ = ConnectTcp(o_.tracker_host, o_.tracker_port, 5000);
        SendInt(fd_, kTrackerMagic);
        if (RecvInt(fd_) != kTrackerMagic)
          throw UserError(o_.tracker_host + ":" + std::to_string(o_.tracker_port) +
                          " is not a TVM RPC tracker");
        SendJson(fd_, "[" + std::to_string(kUpdateInfo) + ", {\"key\": " + Quote("server:" + o_.key) +
                          ", \"addr\": [null, " + std::to_string(port_) + "]}]");
        Expect(RecvJson(fd_));
        return;
      } catch (const UserError&) {
        throw;
      } catch (const std::exception& e) {
        Close();
        last = e.what();
      }
      double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (waited >= patience_s)
        throw UserError("cannot reach the RPC tracker at " + o_.tracker_host + ":" +
                        std::to_string(o_.tracker_port) + " (" + last + ")");
      sleep(1);
    }
  }

  // Offer this server under a fresh match key; clients receive the key from the tracker.
  std::string Put() {
    static std::mt19937_64 rng(std::random_device{}());
    matchkey_ = o_.key + ":" + std::to_string(rng() % 1000000000000ULL);
    SendJson(fd_, "[" + std::to_string(kPut) + ", " + Quote(o_.key) + ", [" + std::to_string(port_) +
                      ", " + Quote(matchkey_) + "], null]");
    Expect(RecvJson(fd_));
    return matchkey_;
  }

  // Is our match key still waiting for a client (i.e. not handed out and left unused)?
  bool Pending() {
    SendJson(fd_, "[" + std::to_string(kGetPendingMatchkeys) + "]");
    for (const ffi::Any& k : RecvJson(fd_).cast<ffi::json::Array>())
      if (std::string(k.cast<ffi::String>()) == matchkey_) return true;
    return false;
  }

  const std::string& matchkey() const { return matchkey_; }

 private:
  static void Expect(const ffi::json::Value& v) {
    auto code = v.try_cast<int64_t>();
    if (!code.has_value() || *code != kSuccess) throw std::runtime_error("tracker refused");
  }
  const ServeOptions& o_;
  int port_;
  int fd_ = -1;
  std::string matchkey_;
};

// Under user-mode emulation (qemu-aarch64 on an x86 host) /proc/cpuinfo still describes the host.
bool Emulated() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  bool x86_host = false;
  while (std::getline(f, line)) x86_host |= line.rfind("vendor_id", 0) == 0 || line.rfind("flags", 0) == 0;
  return std::string(kArch) != "x86_64" && x86_host;
}

void RegisterServerFunctions() {
  ffi::Function::SetGlobal(
      "tvm.rpc.server.workpath",
      ffi::Function::FromTyped([](ffi::String name) -> ffi::String {
        return ffi::String(WorkPath(std::string(name)));
      }),
      true);
  ffi::Function::SetGlobal(
      "tvm.rpc.server.load_module",
      ffi::Function::FromTyped([](ffi::String name) -> ffi::Module {
        return ffi::Module::LoadFromFile(ffi::String(WorkPath(std::string(name))));
      }),
      true);
  // the runtime's own upload writes wherever workpath says, any size: checked here instead
  ffi::Function::SetGlobal(
      "tvm.rpc.server.upload",
      ffi::Function::FromTyped([](ffi::String name, ffi::Bytes data) {
        if (std::string(name).empty())
          TVM_FFI_THROW(ValueError) << "edgecc-run serve refuses an upload without a file name";
        std::string path = WorkPath(std::string(name));
        const int64_t mib = 1 << 20, size = static_cast<int64_t>(data.size());
        if (size > g_max_upload)
          TVM_FFI_THROW(ValueError) << "edgecc-run serve refuses the upload '" << name << "': "
                                    << size / mib << " MiB, over its --max-upload-mb "
                                    << g_max_upload / mib;
        if (DirBytes(g_workdir) + size > 4 * g_max_upload)
          TVM_FFI_THROW(ValueError) << "edgecc-run serve refuses the upload '" << name
                                    << "': the session's work directory would exceed "
                                    << 4 * g_max_upload / mib << " MiB (4 x --max-upload-mb)";
        std::string part = path + ".part";
        {
          std::ofstream f(part, std::ios::binary);
          f.write(data.data(), static_cast<std::streamsize>(data.size()));
          if (!f) TVM_FFI_THROW(IOError) << "edgecc-run serve could not write '" << name << "'";
        }
        if (std::rename(part.c_str(), path.c_str()) != 0)
          TVM_FFI_THROW(IOError) << "edgecc-run serve could not write '" << name << "'";
      }),
      true);
  // MetaSchedule's runner fills candidate inputs with this (libtvm_runtime_extra has it; a device
  // bundle ships only libtvm_runtime, so edgecc-run provides it)
  ffi::Function::SetGlobal(
      "tvm.contrib.random.random_fill_for_measure",
      ffi::Function::FromTyped([](DLTensor* t) {
        static std::mt19937 rng(42);
        size_t n = ffi::GetDataSize(*t) / std::max(1, (t->dtype.bits * t->dtype.lanes + 7) / 8);
        char* base = static_cast<char*>(t->data) + t->byte_offset;
        if (t->dtype.code == kDLFloat && t->dtype.bits == 32) {
          std::uniform_real_distribution<float> d(-1.f, 1.f);
          for (size_t i = 0; i < n; ++i) reinterpret_cast<float*>(base)[i] = d(rng);
        } else {
          std::uniform_int_distribution<int> d(0, 7);  // small values: safe for any int/half type
          for (size_t i = 0; i < ffi::GetDataSize(*t); ++i) base[i] = static_cast<char>(d(rng));
        }
      }),
      true);
  ffi::Function::SetGlobal(
      "edgecc.device_info", ffi::Function::FromTyped([]() -> ffi::String {
        const char* threads = getenv("TVM_NUM_THREADS");
        return ffi::String(std::string("{\"arch\": \"") + kArch + "\", \"server\": \"edgecc-run\", " +
                           "\"threads\": " + (threads ? threads : "0") + ", \"emulated\": " +
                           (Emulated() ? "true" : "false") + "}");
      }),
      true);
}

// Serve one session in a forked child (own work dir; a crash or hang cannot take the server down).
void ServeSession(int conn, double timeout_s) {
  char tmpl[] = "/tmp/edgecc-rpc-XXXXXX";
  if (!mkdtemp(tmpl)) throw std::runtime_error("cannot create a session work directory");
  std::string dir = tmpl;
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    g_workdir = dir;
    if (chdir(dir.c_str()) != 0) _exit(3);
    int code = 0;
    try {
      ffi::Function::GetGlobal("rpc.ServerLoop").value()(static_cast<int64_t>(conn));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "[edgecc-run serve] session ended: %s\n", e.what());
      code = 1;
    }
    _exit(code);
  }
  close(conn);
  auto start = std::chrono::steady_clock::now();
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (timeout_s > 0 && t > timeout_s) {
      std::fprintf(stderr, "[edgecc-run serve] session timed out after %.0f s: stopped\n", t);
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    usleep(20000);
  }
  std::string rm = "rm -rf '" + dir + "'";
  if (std::system(rm.c_str()) != 0) std::fprintf(stderr, "[edgecc-run serve] cannot remove %s\n", dir.c_str());
}

int Serve(const ServeOptions& o) {
  std::signal(SIGPIPE, SIG_IGN);
  g_max_upload = o.max_upload_mb << 20;
  if (o.no_token && !o.token_file.empty())
    throw UserError("--no-token and --token-file exclude each other");
  std::string token = o.no_token ? "" : LoadOrCreateToken(o);
  if (o.no_token && o.host.rfind("127.", 0) != 0)
    std::fprintf(stderr, "[edgecc-run serve] warning: --no-token on %s: anyone who can reach "
                 "this port can run code on this device\n", o.host.c_str());
  RegisterServerFunctions();
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  if (inet_pton(AF_INET, o.host.c_str(), &addr.sin_addr) != 1)
    throw UserError("--host must be an IPv4 address, got '" + o.host + "'");
  int port = o.port;
  for (;; ++port) {
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) break;
    if (o.port == 0 || port >= o.port + 100)
      throw UserError("cannot listen on " + o.host + ":" + std::to_string(o.port) + " (" +
                      std::strerror(errno) + ")");
  }
  if (listen(lfd, 8) != 0) throw UserError(std::string("listen failed: ") + std::strerror(errno));
  socklen_t len = sizeof(addr);
  getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len);
  port = ntohs(addr.sin_port);

  Tracker tracker(o, port);
  tracker.Connect(5);
  const char* threads = getenv("TVM_NUM_THREADS");
  std::printf("edgecc-run serve: %s device%s, %s threads, listening on %s:%d, registered as '%s' "
              "at tracker %s:%d\n",
              kArch, Emulated() ? " (emulated: timings only prove the path works)" : "",
              threads ? threads : "?", o.host.c_str(), port, o.key.c_str(),
              o.tracker_host.c_str(), o.tracker_port);
  std::fflush(stdout);
  while (true) {
    try {
      if (!tracker.connected()) tracker.Connect(1e9);  // the tracker restarted: keep trying
      tracker.Put();
      int unmatched = 0;
      int conn = -1;
      double timeout = o.session_timeout;
      while (conn < 0) {
        pollfd p{lfd, POLLIN, 0};
        if (poll(&p, 1, 2000) == 0) {  // idle: is our key still offered?
          unmatched = tracker.Pending() ? 0 : unmatched + 1;
          if (unmatched * 2 > 6) {  // handed to a client that never came: offer a new key
            tracker.Put();
            unmatched = 0;
          }
          continue;
        }
        int c = accept(lfd, nullptr, nullptr);
        if (c < 0) continue;
        try {
          if (RecvInt(c) != kRPCMagic) throw std::runtime_error("not an RPC client");
          int32_t n = RecvInt(c);
          if (n < 0 || n > 4096) throw std::runtime_error("bad key length");
          std::string key(static_cast<size_t>(n), '\0');
          RecvAll(c, key.data(), key.size());
          std::istringstream words(key);
          std::string head, opt;
          words >> head;
          if (head != "client:" + tracker.matchkey()) {
            SendInt(c, kCodeMismatch);
            close(c);
            continue;
          }
          std::string presented;
          while (words >> opt) {
            if (opt.rfind("-timeout=", 0) == 0 && o.session_timeout <= 0)
              timeout = std::atof(opt.c_str() + 9);
            if (opt.rfind("-token=", 0) == 0) presented = opt.substr(7);
          }
          if (!o.no_token && !SameToken(presented, token)) {
            std::fprintf(stderr, "[edgecc-run serve] refused a session: %s token\n",
                         presented.empty() ? "no" : "wrong");
            SendInt(c, kCodeMismatch);
            close(c);
            tracker.Put();  // the tracker handed our key to that client: offer it again
            continue;
          }
          std::string server_key = "server:" + o.key;
          SendInt(c, kCodeSuccess);
          SendInt(c, static_cast<int32_t>(server_key.size()));
          SendAll(c, server_key.data(), server_key.size());
          int nodelay = 1;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof(nodelay));
          conn = c;
        } catch (const std::exception&) {
          close(c);
        }
      }
      ServeSession(conn, timeout);
    } catch (const UserError&) {
      throw;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "[edgecc-run serve] tracker connection lost (%s): reconnecting\n", e.what());
      tracker.Close();
      sleep(1);
    }
  }
}

ServeOptions ParseServeArgs(int argc, char** argv) {
  ServeOptions o;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw UserError(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--tracker") {
      std::string v = next();
      size_t colon = v.rfind(':');
      if (colon == std::string::npos || colon == 0)
        throw UserError("bad --tracker '" + v + "': expected HOST:PORT");
      o.tracker_host = v.substr(0, colon);
      o.tracker_port = ParseInt("--tracker port", v.substr(colon + 1), 1);
    } else if (a == "--key") {
      o.key = next();
    } else if (a == "--host") {
      o.host = next();
    } else if (a == "--port") {
      o.port = ParseInt(a, next(), 0);
    } else if (a == "--session-timeout") {
      o.session_timeout = ParseInt(a, next(), 1);
    } else if (a == "--threads") {
      setenv("TVM_NUM_THREADS", std::to_string(ParseInt(a, next(), 1)).c_str(), 1);
    } else if (a == "--max-upload-mb") {
      o.max_upload_mb = ParseInt(a, next(), 1);
    } else if (a == "--token-file") {
      o.token_file = next();
    } else if (a == "--no-token") {
      o.no_token = true;
    } else {
      throw UserError("unknown option '" + a + "' for serve (see --help)");
    }
  }
  if (o.tracker_host.empty()) throw UserError("serve needs --tracker HOST:PORT");
  if (o.key.empty() || o.key.find_first_of(" :\"") != std::string::npos)
    throw UserError("serve needs --key KEY (no spaces, colons or quotes)");
  return o;
}

// Without TVM_NUM_THREADS the TVM runtime uses half the logical CPUs on x86 (it assumes
// hyper-threading). Use the physical cores this process may run on, unless the user chose.
// Workers are not pinned to cores unless EDGECC_BIND_THREADS=1 (or TVM_BIND_THREADS) says so:
// on a busy CPU a pinned worker waits for its one core (edgecc/_threads.py, docs/runtime.md).
void SetDefaultThreads() {
  if (getenv("TVM_BIND_THREADS") == nullptr) {
    const char* bind = getenv("EDGECC_BIND_THREADS");
    setenv("TVM_BIND_THREADS", bind != nullptr ? bind : "0", 1);
  }
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
    if (argc > 1 && std::string(argv[1]) == "serve") return Serve(ParseServeArgs(argc, argv));
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
