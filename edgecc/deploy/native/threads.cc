// The thread defaults edgecc chooses for the TVM runtime (as edgecc/_threads.py does), and the
// architecture this runtime is built for.
#include "edgecc_run.h"

namespace edgecc {

#if defined(__aarch64__)
const char* kArch = "aarch64";
#elif defined(__x86_64__)
const char* kArch = "x86_64";
#else
const char* kArch = "unknown";
#endif

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

}  // namespace edgecc
