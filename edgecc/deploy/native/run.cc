// edgecc-run BUNDLE_DIR: check the artifact, load its library with the TVM runtime, check the
// inputs against the manifest, run the Relax VM's `main`, write the outputs as .npy.
#include "edgecc_run.h"
#include "edgecc_runtime.h"

#include <memory>

namespace edgecc {
namespace {

// ---------------------------------------------------------------- tensors and .npy
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

void WriteNpy(const std::string& path, const void* data, size_t bytes,
              const std::vector<int64_t>& shape, const std::string& dtype) {
  std::string descr = dtype.rfind("float8_", 0) == 0 ? "|V1" : "";
  for (const auto& kv : NpyDescr())
    if (kv.second == dtype) descr = kv.first;
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
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

// ---------------------------------------------------------------- runner
struct Options {
  std::string dir, output, build;
  std::vector<std::pair<std::string, std::string>> inputs;
  int bench = 0, warmup = 3;
  bool verify = false;
};

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() { return NextValue(argc, argv, i); };
    ExitOnHelp(a);
    if (a == "--input" || a == "-i") {
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
    } else if (a == "--verify") {
      o.verify = true;
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

// Throws the C API's last error as the one-line error main() prints.
void Check(edgecc_status status) {
  if (status != EDGECC_OK) throw UserError(edgecc_last_error());
}

int Run(const Options& o) {
  edgecc_options opts{o.build.empty() ? nullptr : o.build.c_str(), o.verify ? 1 : 0, 0};
  edgecc_model* raw = nullptr;
  Check(edgecc_model_open(o.dir.c_str(), &opts, &raw));
  std::unique_ptr<edgecc_model, void (*)(edgecc_model*)> model(raw, edgecc_model_close);
  Manifest m = ReadManifest(o.dir);  // the input specs, for the .npy checks and messages
  if (m.builds.size() > 1) std::printf("running the %s build\n", edgecc_model_build(raw));
  std::vector<ffi::Tensor> inputs = LoadInputs(m, o);  // 64-byte aligned: run in place
  if (o.inputs.empty()) std::printf("no --input given: using zeros\n");
  std::vector<const void*> data;
  for (const ffi::Tensor& t : inputs) data.push_back(t.data_ptr());
  Check(edgecc_model_run(raw, data.data(), nullptr, nullptr));
  if (!o.output.empty()) mkdir(o.output.c_str(), 0755);
  for (int32_t i = 0; i < edgecc_model_num_outputs(raw); ++i) {
    edgecc_tensor_info info;
    Check(edgecc_model_output(raw, i, &info));
    TensorSpec s{info.name, std::vector<int64_t>(info.shape, info.shape + info.ndim), info.dtype};
    if (!o.output.empty()) {
      std::string safe = s.name;
      for (char& c : safe)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') c = '_';
      WriteNpy(o.output + "/" + safe + ".npy", edgecc_model_output_data(raw, i), info.bytes,
               s.shape, s.dtype);
    }
    std::printf("%s\n", Describe(m.outputs[i]).c_str());
  }
  if (!o.output.empty())
    std::printf("wrote %d output(s) to %s\n", edgecc_model_num_outputs(raw), o.output.c_str());
  if (o.bench > 0) {
    for (int i = 0; i < o.warmup; ++i) Check(edgecc_model_run(raw, data.data(), nullptr, nullptr));
    std::vector<double> ms;
    for (int i = 0; i < o.bench; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      Check(edgecc_model_run(raw, data.data(), nullptr, nullptr));
      auto t1 = std::chrono::steady_clock::now();
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / ms.size();
    std::printf("latency: mean %.3f ms  p50 %.3f ms  p90 %.3f ms  (%d runs after %d warm-up)\n",
                mean, Percentile(ms, 50), Percentile(ms, 90), o.bench, o.warmup);
  }
  return 0;
}

}  // namespace

int RunMain(int argc, char** argv) { return Run(ParseArgs(argc, argv)); }

}  // namespace edgecc
