// edgecc-run: run an edgecc artifact on a device without Python.
//
//   edgecc-run BUNDLE_DIR --input NAME=FILE.npy ... [--output DIR] [--bench N] [--threads N]
//   edgecc-run serve --tracker HOST:PORT --key KEY [--host ADDR] [--port P]
//
// Reads BUNDLE_DIR/model.json (the manifest written by `edgecc compile`, validated here exactly
// as edgecc/artifact/manifest.py validates it), loads BUNDLE_DIR/model.so with the TVM runtime, checks
// the inputs against the manifest, runs the Relax VM's `main`, and writes outputs as .npy.
//
// `serve` makes the device a TVM RPC server (TVM's own protocol and tracker): it registers with
// the tracker, accepts sessions, and serves each in a forked child with the runtime's own
// `rpc.ServerLoop`, in a fresh work directory. Hosts then upload, run and time artifacts on it
// (edgecc run/bench --rpc-tracker, edgecc pipeline run) and MetaSchedule measures candidates.
//
// Parts: manifest.cc (the manifest, CPU features), integrity.cc (the library's size, sha256 and
// runtime checked before it is loaded), run.cc (the runner), serve.cc (the RPC server).
#include "edgecc_run.h"

namespace edgecc {

const char* kUsage =
    "usage: edgecc-run BUNDLE_DIR [--input NAME=FILE.npy]... [--output DIR] [--bench N]\n"
    "                  [--warmup N] [--threads N] [--build TARGET] [--verify]\n"
    "\n"
    "Run an edgecc artifact (model.so + model.json) without Python.\n"
    "  --input NAME=FILE.npy  an input tensor (repeat for each input); zeros when none is given\n"
    "  --output DIR           write each output to DIR/NAME.npy (else print a summary)\n"
    "  --bench N              time N runs after warm-up; print mean/p50/p90 latency\n"
    "  --warmup N             warm-up runs before timing (default 3)\n"
    "  --threads N            worker threads (sets TVM_NUM_THREADS)\n"
    "  --build TARGET         which of the bundle's builds to run (x86_64 bundles carry an\n"
    "                         AVX-512 build too); default: the best this CPU can run\n"
    "  --verify               hash the library against the manifest's sha256 even if it was\n"
    "                         checked before (it is on first use; its size on every run)\n"
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


std::string NextValue(int argc, char** argv, int& i) {
  if (i + 1 >= argc) throw UserError(std::string(argv[i]) + " needs a value");
  return argv[++i];
}

void ExitOnHelp(const std::string& arg) {
  if (arg != "-h" && arg != "--help") return;
  std::fputs(kUsage, stdout);
  std::exit(0);
}

}  // namespace edgecc

int main(int argc, char** argv) {
  edgecc::SetDefaultThreads();
  try {
    if (argc > 1 && std::string(argv[1]) == "serve") return edgecc::ServeMain(argc, argv);
    return edgecc::RunMain(argc, argv);
  } catch (const edgecc::UserError& e) {
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
