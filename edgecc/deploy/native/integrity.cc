// What the loader checks before it loads an artifact's library (as edgecc/artifact/integrity.py
// does, sharing its stamp files): the library's size on every load (a truncated copy would
// otherwise die of SIGBUS in dlopen), its sha256 on first use and whenever the file changed
// since (the stamp `.<library>.verified` records hash, size, mtime and inode) or with --verify,
// and the TVM runtime series it was built for.
#include "edgecc_run.h"

#include <array>

#ifndef EDGECC_TVM_VERSION
#define EDGECC_TVM_VERSION ""
#endif

namespace edgecc {
namespace {

// SHA-256 as FIPS 180-4 specifies it.
constexpr std::array<uint32_t, 64> kRound = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

class Sha256 {
 public:
  void Update(const unsigned char* p, size_t n) {
    total_ += n;
    while (n > 0) {
      size_t take = std::min(n, sizeof(block_) - used_);
      std::memcpy(block_ + used_, p, take);
      used_ += take;
      p += take;
      n -= take;
      if (used_ == sizeof(block_)) {
        Compress(block_);
        used_ = 0;
      }
    }
  }

  std::string HexDigest() {
    uint64_t bits = total_ * 8;
    unsigned char pad = 0x80;
    Update(&pad, 1);
    unsigned char zero = 0;
    while (used_ != 56) Update(&zero, 1);
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(bits >> (56 - 8 * i));
    Update(len, 8);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (uint32_t w : h_)
      for (int shift = 28; shift >= 0; shift -= 4) out += hex[(w >> shift) & 15];
    return out;
  }

 private:
  static uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void Compress(const unsigned char* b) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = (uint32_t(b[4 * i]) << 24) | (uint32_t(b[4 * i + 1]) << 16) |
             (uint32_t(b[4 * i + 2]) << 8) | uint32_t(b[4 * i + 3]);
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b2 = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6],
             h = h_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = h + (Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25)) + ((e & f) ^ (~e & g)) +
                    kRound[i] + w[i];
      uint32_t t2 = (Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22)) + ((a & b2) ^ (a & c) ^ (b2 & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b2;
      b2 = a;
      a = t1 + t2;
    }
    h_[0] += a; h_[1] += b2; h_[2] += c; h_[3] += d;
    h_[4] += e; h_[5] += f; h_[6] += g; h_[7] += h;
  }

  uint32_t h_[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  unsigned char block_[64];
  size_t used_ = 0;
  uint64_t total_ = 0;
};

std::string Series(const std::string& version) {  // "0.27" of "0.27.0.post1"
  size_t first = version.find('.');
  if (first == std::string::npos) return version;
  size_t second = version.find('.', first + 1);
  return version.substr(0, second);
}

std::string StatKey(const struct stat& st) {
  return std::to_string(static_cast<long long>(st.st_size)) + " " +
         std::to_string(static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL +
                        st.st_mtim.tv_nsec) +
         " " + std::to_string(static_cast<unsigned long long>(st.st_ino));
}

template <typename T>
T Field(const std::string& h, size_t at) {
  T v;
  std::memcpy(&v, h.data() + at, sizeof(T));
  return v;
}

}  // namespace

std::string IncompleteElf(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string h(64, '\0');
  if (!f.read(h.data(), 64) || h.compare(0, 4, "\x7f" "ELF") != 0 || h[4] != 2) return "";
  f.seekg(0, std::ios::end);
  uint64_t size = static_cast<uint64_t>(f.tellg());
  uint64_t phoff = Field<uint64_t>(h, 32), shoff = Field<uint64_t>(h, 40);
  uint16_t phentsize = Field<uint16_t>(h, 54), phnum = Field<uint16_t>(h, 56);
  uint16_t shentsize = Field<uint16_t>(h, 58), shnum = Field<uint16_t>(h, 60);
  uint64_t need = std::max(phoff + uint64_t(phnum) * phentsize, shoff + uint64_t(shnum) * shentsize);
  for (uint16_t i = 0; i < phnum && phoff + uint64_t(i + 1) * phentsize <= size; ++i) {
    std::string ph(56, '\0');
    f.seekg(static_cast<std::streamoff>(phoff + uint64_t(i) * phentsize));
    if (!f.read(ph.data(), 56)) break;
    need = std::max(need, Field<uint64_t>(ph, 8) + Field<uint64_t>(ph, 32));  // p_offset + p_filesz
  }
  if (need <= size) return "";
  return std::to_string(size) + " bytes, its headers say at least " + std::to_string(need) +
         " (a truncated copy?)";
}

std::string Sha256Hex(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UserError("cannot read '" + path + "'");
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), buf.size());
    h.Update(reinterpret_cast<const unsigned char*>(buf.data()), static_cast<size_t>(f.gcount()));
  }
  return h.HexDigest();
}

void CheckRuntime(const Manifest& m, const std::string& dir) {
  std::string here = EDGECC_TVM_VERSION;
  if (m.tvm_version.empty() || here.empty() || Series(m.tvm_version) == Series(here)) return;
  throw UserError("artifact '" + dir + "' was built for TVM runtime " + m.tvm_version +
                  "; this runtime is " + here + ": recompile it with this edgecc");
}

std::string CheckLibrary(const std::string& dir, const Build& b, bool verify) {
  std::string lib = dir + "/" + b.library;
  struct stat st;
  if (stat(lib.c_str(), &st) != 0) throw UserError(dir + ": " + b.library + " is missing");
  if (b.bytes > 0 && static_cast<int64_t>(st.st_size) != b.bytes)
    throw UserError(dir + ": " + b.library + " is " + std::to_string(st.st_size) +
                    " bytes, the manifest says " + std::to_string(b.bytes) +
                    " (a truncated or replaced copy): copy the artifact again");
  if (b.sha256.empty()) return lib;
  std::string stamp = dir + "/." + b.library + ".verified";
  std::string expected = b.sha256 + " " + StatKey(st);
  if (!verify) {
    std::ifstream in(stamp);
    std::string line;
    if (in && std::getline(in, line) && line == expected) return lib;
  }
  if (Sha256Hex(lib) != b.sha256)
    throw UserError(dir + ": " + b.library + " does not match the sha256 in the manifest (a "
                    "corrupted or replaced copy): copy the artifact again");
  std::string tmp = stamp + "." + std::to_string(getpid());
  std::ofstream out(tmp);  // a read-only bundle is hashed on every load instead
  if (out << expected << "\n" && (out.close(), !out.fail())) {
    if (std::rename(tmp.c_str(), stamp.c_str()) != 0) std::remove(tmp.c_str());
  } else {
    std::remove(tmp.c_str());
  }
  return lib;
}

}  // namespace edgecc
