// edgecc-run serve: the device as a TVM RPC server (TVM's own protocol and tracker). It
// registers with the tracker, accepts sessions that present the device's token, and serves each
// in a forked child with the runtime's own `rpc.ServerLoop`, in a fresh work directory.
#include "edgecc_run.h"

#include <sys/time.h>

namespace edgecc {
namespace {

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
volatile std::sig_atomic_t g_stop = 0;  // SIGTERM/SIGINT: end the session, clean up, exit

extern "C" void OnStopSignal(int) { g_stop = 1; }
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
        std::string path = WorkPath(std::string(name));
        std::string why = IncompleteElf(path);  // dlopen of a truncated library can crash
        if (!why.empty())
          TVM_FFI_THROW(ValueError) << "edgecc-run serve refuses to load '" << name << "': "
                                    << why;
        return ffi::Module::LoadFromFile(ffi::String(path));
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
    std::signal(SIGTERM, SIG_DFL);
    std::signal(SIGINT, SIG_DFL);
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
    if (g_stop) {  // the server is being stopped: so is its session, and its directory goes
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
  struct sigaction stop {};
  stop.sa_handler = OnStopSignal;  // no SA_RESTART: poll() returns, the loops see g_stop
  sigaction(SIGTERM, &stop, nullptr);
  sigaction(SIGINT, &stop, nullptr);
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
  while (!g_stop) {
    try {
      if (!tracker.connected()) tracker.Connect(1e9);  // the tracker restarted: keep trying
      tracker.Put();
      int unmatched = 0;
      int conn = -1;
      double timeout = o.session_timeout;
      while (conn < 0 && !g_stop) {
        pollfd p{lfd, POLLIN, 0};
        int ready = poll(&p, 1, 2000);
        if (ready < 0) continue;  // a signal: g_stop says whether to go on
        if (ready == 0) {  // idle: is our key still offered?
          unmatched = tracker.Pending() ? 0 : unmatched + 1;
          if (unmatched * 2 > 6) {  // handed to a client that never came: offer a new key
            tracker.Put();
            unmatched = 0;
          }
          continue;
        }
        int c = accept(lfd, nullptr, nullptr);
        if (c < 0) continue;
        // a client has 10 s to say who it is: a silent or half-sent handshake must not block
        // the server (it serves one session at a time)
        timeval handshake{10, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &handshake, sizeof(handshake));
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
          timeval none{0, 0};  // the session itself may be quiet for as long as it likes
          setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
          conn = c;
        } catch (const std::exception&) {
          close(c);
        }
      }
      if (conn < 0) break;  // stopped while waiting
      ServeSession(conn, timeout);
    } catch (const UserError&) {
      throw;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "[edgecc-run serve] tracker connection lost (%s): reconnecting\n", e.what());
      tracker.Close();
      sleep(1);
    }
  }
  close(lfd);
  return 0;
}

ServeOptions ParseServeArgs(int argc, char** argv) {
  ServeOptions o;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() { return NextValue(argc, argv, i); };
    ExitOnHelp(a);
    if (a == "--tracker") {
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

}  // namespace

int ServeMain(int argc, char** argv) { return Serve(ParseServeArgs(argc, argv)); }

}  // namespace edgecc
