// The manifest (edgecc-artifact v1), validated exactly as edgecc/artifact/manifest.py validates
// it, and the choice of the build this CPU runs.
#include "edgecc_run.h"

namespace edgecc {

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

std::string OptStr(const ffi::json::Object& obj, const char* key, const std::string& src) {
  return obj.find(ffi::String(key)) == obj.end() ? std::string() : StrField(obj, key, src);
}

int64_t OptInt(const ffi::json::Object& obj, const char* key, const std::string& src) {
  auto it = obj.find(ffi::String(key));
  if (it == obj.end()) return 0;
  auto v = (*it).second.try_cast<int64_t>();
  if (!v.has_value() || *v < 0)
    throw UserError(src + ": malformed manifest ('" + key + "' is not a size)");
  return *v;
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
                          Strings(v, "cpu_features", src), OptStr(v, "library_sha256", src),
                          OptInt(v, "library_bytes", src)});
    }
  }
  m.builds.push_back({m.target, m.library, Strings(obj, "cpu_features", src),
                      OptStr(obj, "library_sha256", src), OptInt(obj, "library_bytes", src)});
  m.tvm_version = OptStr(obj, "tvm_version", src);
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
// else the base build; one needing a feature the CPU lacks is refused (as edgecc/runtime/model.py does).
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

int ParseInt(const std::string& flag, const std::string& v, int min) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < min)
    throw UserError(flag + " expects an integer >= " + std::to_string(min) + ", got '" + v + "'");
  return static_cast<int>(x);
}

}  // namespace edgecc
