// Shared declarations of edgecc-run's parts: the manifest and CPU features (manifest.cc), the
// checks of an artifact's library before it is loaded (integrity.cc), the runner (run.cc) and
// the RPC device server (serve.cc); main.cc dispatches between the last two.
#pragma once

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

namespace edgecc {

extern const char* kArch;  // the architecture this binary is built for
extern const char* kUsage;

struct UserError : std::runtime_error {  // reported as one "error: ..." line, exit 1
  using std::runtime_error::runtime_error;
};

// Zeroed, 64-byte aligned CPU memory for a tensor (the kernels assume that alignment).
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

// ---------------------------------------------------------------- manifest (manifest.cc)
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
};

struct Build {  // one compiled library of the model and what it needs of the CPU
  std::string target, library;
  std::vector<std::string> cpu_features;
  std::string sha256;  // of the library ("" when the manifest has none)
  int64_t bytes = 0;   // the library's size (0 when the manifest has none)
};

struct Manifest {
  std::string target, arch, device, library, tvm_version;
  std::vector<TensorSpec> inputs, outputs;
  std::vector<Build> builds;  // ISA variants first, the base build (target, library) last
};

const std::map<std::string, DLDataType>& Dtypes();
std::string ReadFile(const std::string& path);
Manifest ReadManifest(const std::string& dir);
std::string Describe(const TensorSpec& s);
std::string ShapeStr(const std::vector<int64_t>& shape);
std::set<std::string> CpuFlags();
const Build& ChooseBuild(const Manifest& m, const std::set<std::string>& flags,
                         const std::string& want, const std::string& dir);
int ParseInt(const std::string& flag, const std::string& v, int min);
// Command-line helpers of both verbs (main.cc, edgecc-run only): the value after option argv[i] (advancing i; "--x needs a
// value" when there is none), and -h/--help printing the usage and exiting 0.
std::string NextValue(int argc, char** argv, int& i);
void ExitOnHelp(const std::string& arg);

// ---------------------------------------------------------------- checks (integrity.cc)
std::string Sha256Hex(const std::string& path);
// Why the 64-bit ELF file at `path` is incomplete ("" if it is whole, or not such an ELF file).
std::string IncompleteElf(const std::string& path);
void CheckRuntime(const Manifest& m, const std::string& dir);
std::string CheckLibrary(const std::string& dir, const Build& b, bool verify);

// ---------------------------------------------------------------- verbs
int RunMain(int argc, char** argv);    // run.cc
int ServeMain(int argc, char** argv);  // serve.cc
void SetDefaultThreads();              // threads.cc

}  // namespace edgecc
