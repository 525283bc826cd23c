// In-place AES-256-GCM for migration records (src/native/aead.ts is the JS side; the record layout
// and nonce rules are in src/protocol/record.ts).
//
// Why a native addon: node:crypto allocates an output buffer per update and measured 3-10x slower
// than the system libcrypto's EVP AES-GCM on the reference machine. Why dlopen instead of linking
// -lcrypto: the node binary exports its bundled OpenSSL's symbols, so a plain link would bind EVP_*
// to node's copy. RTLD_DEEPBIND makes libcrypto.so.3 resolve its own internal calls to itself, and
// RTLD_LOCAL keeps its symbols out of the process-wide namespace. The prototypes below are declared
// here (OpenSSL 3 ABI) so building needs only a C++ compiler and Node's headers.
//
// Threads: MH vCPUs are worker_threads, so the module is context-aware (NAPI_MODULE_INIT runs once
// per environment). The only process-wide state is the function table, filled once under
// std::call_once, and the fetched EVP_CIPHER (immutable and reference-counted in OpenSSL 3, safe
// to share). Each AesGcm object owns its two EVP_CIPHER_CTX (encrypt, decrypt) and is reachable
// only from the JS thread that created it; a finalizer frees them if dispose() was not called.
//
// JS API (module exports):
//   AesGcm(key: Uint8Array(32))
//     .seal(nonce(12), aad, parts: Uint8Array[], out, tagOut(16)): undefined
//         out receives the ciphertext of the concatenated parts; a part may BE its slot of out
//         (in place) but must not otherwise overlap out.
//     .open(nonce(12), aad, ciphertext, tag(16), dsts: Uint8Array[]): boolean
//         the concatenated dsts receive the plaintext (a dst may be its own slot of ciphertext);
//         false: the tag did not verify (dsts then hold unauthenticated bytes; the caller decides).
//     .matches(key): boolean   constant-time comparison with the key this object was made with
//     .dispose(): undefined     frees the contexts and wipes the key copy now
//   library: string             the OpenSSL version string of the library that was loaded
//   libraryPath: string         the file EVP_CipherUpdate was resolved in (dladdr)
#include <node_api.h>

#include <dlfcn.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

// ---- OpenSSL 3 ABI: opaque types and the few functions used ------------------------------------
struct EvpCipher;
struct EvpCipherCtx;
constexpr int kCtrlGcmGetTag = 0x10;  // EVP_CTRL_AEAD_GET_TAG
constexpr int kCtrlGcmSetTag = 0x11;  // EVP_CTRL_AEAD_SET_TAG
constexpr size_t kKeySize = 32;
constexpr size_t kNonceSize = 12;  // AES-GCM's default IV length: no SET_IVLEN needed
constexpr size_t kTagSize = 16;
// EVP update lengths are int; records are at most 2 MiB, but never pass more than this per call.
constexpr size_t kMaxUpdate = size_t{1} << 30;

struct Crypto {
  EvpCipherCtx* (*ctx_new)();
  void (*ctx_free)(EvpCipherCtx*);
  EvpCipher* (*cipher_fetch)(void*, const char*, const char*);
  int (*cipher_init_ex)(EvpCipherCtx*, const EvpCipher*, void*, const unsigned char*, const unsigned char*, int);
  int (*cipher_update)(EvpCipherCtx*, unsigned char*, int*, const unsigned char*, int);
  int (*cipher_final_ex)(EvpCipherCtx*, unsigned char*, int*);
  int (*ctx_ctrl)(EvpCipherCtx*, int, int, void*);
  void (*cleanse)(void*, size_t);
  const char* (*version)(int);
  EvpCipher* aes256gcm;
  std::string path;   // the file the EVP functions were resolved in (dladdr), for the proof
  std::string error;  // empty when loaded
};

Crypto g_crypto{};
std::once_flag g_once;

template <typename F>
bool Sym(void* lib, const char* name, F* out, std::string* err) {
  void* p = dlsym(lib, name);
  if (p == nullptr) {
    *err = std::string("libcrypto.so.3 has no ") + name;
    return false;
  }
  *out = reinterpret_cast<F>(p);
  return true;
}

void LoadCrypto() {
  Crypto c{};
  void* lib = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (lib == nullptr) {
    const char* e = dlerror();
    g_crypto.error = std::string("dlopen(libcrypto.so.3) failed: ") + (e != nullptr ? e : "unknown error");
    return;
  }
  std::string err;
  bool ok = Sym(lib, "EVP_CIPHER_CTX_new", &c.ctx_new, &err) && Sym(lib, "EVP_CIPHER_CTX_free", &c.ctx_free, &err) &&
            Sym(lib, "EVP_CIPHER_fetch", &c.cipher_fetch, &err) && Sym(lib, "EVP_CipherInit_ex", &c.cipher_init_ex, &err) &&
            Sym(lib, "EVP_CipherUpdate", &c.cipher_update, &err) && Sym(lib, "EVP_CipherFinal_ex", &c.cipher_final_ex, &err) &&
            Sym(lib, "EVP_CIPHER_CTX_ctrl", &c.ctx_ctrl, &err) && Sym(lib, "OPENSSL_cleanse", &c.cleanse, &err) &&
            Sym(lib, "OpenSSL_version", &c.version, &err);
  if (!ok) {
    g_crypto.error = err;
    return;  // the library stays mapped: harmless, and dlclose of libcrypto is unsafe anyway
  }
  // An explicit fetch once: the implicit fetch inside every EVP_CipherInit_ex costs a lookup.
  c.aes256gcm = c.cipher_fetch(nullptr, "AES-256-GCM", nullptr);
  if (c.aes256gcm == nullptr) {
    g_crypto.error = "libcrypto.so.3 has no AES-256-GCM implementation";
    return;
  }
  // Which file did EVP_CipherUpdate come from? Node's bundled OpenSSL may report the same version
  // string, so the path is the check that the system library (not node's copy) is in use.
  Dl_info where{};
  c.path = dladdr(reinterpret_cast<void*>(c.cipher_update), &where) != 0 && where.dli_fname != nullptr ? where.dli_fname : "unknown";
  g_crypto = c;
}

// ---- argument helpers ----------------------------------------------------------------------------
struct Bytes {
  uint8_t* data;
  size_t len;
};

// Pending JS exception? Then just return to JS.
bool Throw(napi_env env, const char* code, const std::string& msg) {
  napi_throw_type_error(env, code, msg.c_str());
  return false;
}

bool GetBytes(napi_env env, napi_value v, const char* what, Bytes* out) {
  bool is_ta = false;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return Throw(env, "ERR_SEVMIG_AEAD_ARG", std::string(what) + " must be a Uint8Array");
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, nullptr, nullptr) != napi_ok || type != napi_uint8_array)
    return Throw(env, "ERR_SEVMIG_AEAD_ARG", std::string(what) + " must be a Uint8Array");
  out->data = static_cast<uint8_t*>(data);
  out->len = length;
  return true;
}

bool GetBytesList(napi_env env, napi_value v, const char* what, std::vector<Bytes>* out) {
  bool is_array = false;
  if (napi_is_array(env, v, &is_array) != napi_ok || !is_array) return Throw(env, "ERR_SEVMIG_AEAD_ARG", std::string(what) + " must be an array");
  uint32_t n = 0;
  napi_get_array_length(env, v, &n);
  out->resize(n);
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    if (napi_get_element(env, v, i, &e) != napi_ok) return false;
    if (!GetBytes(env, e, what, &(*out)[i])) return false;
  }
  return true;
}

bool Overlaps(const uint8_t* a, size_t alen, const uint8_t* b, size_t blen) {
  auto x = reinterpret_cast<uintptr_t>(a);
  auto y = reinterpret_cast<uintptr_t>(b);
  return alen != 0 && blen != 0 && x < y + blen && y < x + alen;
}

// Each piece maps onto [off, off+len) of `whole`. A piece may be exactly its own slot (in place);
// any other overlap with `whole` would let the cipher overwrite input it has not read yet.
bool CheckMapping(napi_env env, const std::vector<Bytes>& pieces, const Bytes& whole, const char* what) {
  size_t total = 0;
  for (const Bytes& p : pieces) total += p.len;
  if (total != whole.len)
    return Throw(env, "ERR_SEVMIG_AEAD_ARG", std::string(what) + ": lengths add up to " + std::to_string(total) + ", expected " + std::to_string(whole.len));
  size_t off = 0;
  for (const Bytes& p : pieces) {
    if (Overlaps(p.data, p.len, whole.data, whole.len) && p.data != whole.data + off)
      return Throw(env, "ERR_SEVMIG_AEAD_ARG", std::string(what) + ": a buffer partially overlaps the output");
    off += p.len;
  }
  return true;
}

// ---- the keyed object ----------------------------------------------------------------------------
struct AesGcm {
  uint8_t key[kKeySize];
  EvpCipherCtx* enc = nullptr;  // created on first seal (key schedule once)
  EvpCipherCtx* dec = nullptr;  // created on first open
  bool disposed = false;

  void Dispose() {
    if (enc != nullptr) g_crypto.ctx_free(enc);  // EVP_CIPHER_CTX_free cleanses the key schedule
    if (dec != nullptr) g_crypto.ctx_free(dec);
    enc = dec = nullptr;
    g_crypto.cleanse(key, sizeof key);
    disposed = true;
  }

  EvpCipherCtx* Ctx(bool encrypt) {
    EvpCipherCtx*& c = encrypt ? enc : dec;
    if (c != nullptr) return c;
    EvpCipherCtx* n = g_crypto.ctx_new();
    if (n == nullptr) return nullptr;
    if (g_crypto.cipher_init_ex(n, g_crypto.aes256gcm, nullptr, key, nullptr, encrypt ? 1 : 0) != 1) {
      g_crypto.ctx_free(n);
      return nullptr;
    }
    c = n;
    return c;
  }
};

void Finalize(napi_env /*env*/, void* data, void* /*hint*/) {
  auto* self = static_cast<AesGcm*>(data);
  if (!self->disposed) self->Dispose();
  delete self;
}

bool Update(EvpCipherCtx* c, uint8_t* out, const uint8_t* in, size_t len) {
  while (len > 0) {
    size_t n = len < kMaxUpdate ? len : kMaxUpdate;
    int outl = 0;
    if (g_crypto.cipher_update(c, out, &outl, in, static_cast<int>(n)) != 1 || static_cast<size_t>(outl) != n) return false;
    if (out != nullptr) out += n;
    in += n;
    len -= n;
  }
  return true;
}

// Unwraps `this` and checks argc; returns nullptr with a pending exception on failure.
AesGcm* Self(napi_env env, napi_callback_info info, size_t want, napi_value* argv) {
  size_t argc = want;
  napi_value self;
  if (napi_get_cb_info(env, info, &argc, argv, &self, nullptr) != napi_ok) return nullptr;
  if (argc < want) {
    Throw(env, "ERR_SEVMIG_AEAD_ARG", "expected " + std::to_string(want) + " arguments");
    return nullptr;
  }
  void* p = nullptr;
  if (napi_unwrap(env, self, &p) != napi_ok || p == nullptr) {
    Throw(env, "ERR_SEVMIG_AEAD_ARG", "not an AesGcm object");
    return nullptr;
  }
  auto* s = static_cast<AesGcm*>(p);
  if (s->disposed) {
    Throw(env, "ERR_SEVMIG_AEAD_DISPOSED", "AesGcm object used after dispose()");
    return nullptr;
  }
  return s;
}

napi_value Undefined(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

napi_value Bool(napi_env env, bool b) {
  napi_value v;
  napi_get_boolean(env, b, &v);
  return v;
}

napi_value Construct(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_value self;
  napi_value target;
  if (napi_get_cb_info(env, info, &argc, argv, &self, nullptr) != napi_ok) return nullptr;
  if (napi_get_new_target(env, info, &target) != napi_ok || target == nullptr) {
    Throw(env, "ERR_SEVMIG_AEAD_ARG", "AesGcm must be called with new");
    return nullptr;
  }
  Bytes k;
  if (argc < 1 || !GetBytes(env, argv[0], "key", &k)) return nullptr;
  if (k.len != kKeySize) {
    Throw(env, "ERR_SEVMIG_AEAD_ARG", "key must be 32 bytes");
    return nullptr;
  }
  auto* s = new AesGcm();
  std::memcpy(s->key, k.data, kKeySize);
  if (napi_wrap(env, self, s, Finalize, nullptr, nullptr) != napi_ok) {
    s->Dispose();
    delete s;
    return nullptr;
  }
  return self;
}

napi_value Seal(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  AesGcm* s = Self(env, info, 5, argv);
  if (s == nullptr) return nullptr;
  Bytes nonce, aad, out, tag;
  std::vector<Bytes> parts;
  if (!GetBytes(env, argv[0], "nonce", &nonce) || !GetBytes(env, argv[1], "aad", &aad) || !GetBytesList(env, argv[2], "parts", &parts) ||
      !GetBytes(env, argv[3], "out", &out) || !GetBytes(env, argv[4], "tagOut", &tag))
    return nullptr;
  if (nonce.len != kNonceSize) return Throw(env, "ERR_SEVMIG_AEAD_ARG", "nonce must be 12 bytes"), nullptr;
  if (tag.len != kTagSize) return Throw(env, "ERR_SEVMIG_AEAD_ARG", "tag must be 16 bytes"), nullptr;
  if (aad.len > kMaxUpdate) return Throw(env, "ERR_SEVMIG_AEAD_ARG", "aad too long"), nullptr;
  if (!CheckMapping(env, parts, out, "seal")) return nullptr;
  EvpCipherCtx* c = s->Ctx(true);
  // Re-init with the IV only: the key schedule from Ctx() is kept.
  bool ok = c != nullptr && g_crypto.cipher_init_ex(c, nullptr, nullptr, nullptr, nonce.data, 1) == 1;
  int outl = 0;
  if (ok && aad.len > 0) ok = g_crypto.cipher_update(c, nullptr, &outl, aad.data, static_cast<int>(aad.len)) == 1;
  size_t off = 0;
  for (size_t i = 0; ok && i < parts.size(); i++) {
    ok = Update(c, out.data + off, parts[i].data, parts[i].len);
    off += parts[i].len;
  }
  uint8_t fin[16];
  if (ok) ok = g_crypto.cipher_final_ex(c, fin, &outl) == 1 && outl == 0;
  if (ok) ok = g_crypto.ctx_ctrl(c, kCtrlGcmGetTag, static_cast<int>(kTagSize), tag.data) == 1;
  if (!ok) return Throw(env, "ERR_SEVMIG_AEAD_CRYPTO", "libcrypto AES-256-GCM seal failed"), nullptr;
  return Undefined(env);
}

napi_value Open(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  AesGcm* s = Self(env, info, 5, argv);
  if (s == nullptr) return nullptr;
  Bytes nonce, aad, ct, tag;
  std::vector<Bytes> dsts;
  if (!GetBytes(env, argv[0], "nonce", &nonce) || !GetBytes(env, argv[1], "aad", &aad) || !GetBytes(env, argv[2], "ciphertext", &ct) ||
      !GetBytes(env, argv[3], "tag", &tag) || !GetBytesList(env, argv[4], "dsts", &dsts))
    return nullptr;
  if (nonce.len != kNonceSize) return Throw(env, "ERR_SEVMIG_AEAD_ARG", "nonce must be 12 bytes"), nullptr;
  if (tag.len != kTagSize) return Throw(env, "ERR_SEVMIG_AEAD_ARG", "tag must be 16 bytes"), nullptr;
  if (aad.len > kMaxUpdate) return Throw(env, "ERR_SEVMIG_AEAD_ARG", "aad too long"), nullptr;
  if (!CheckMapping(env, dsts, ct, "open")) return nullptr;
  EvpCipherCtx* c = s->Ctx(false);
  bool ok = c != nullptr && g_crypto.cipher_init_ex(c, nullptr, nullptr, nullptr, nonce.data, 0) == 1;
  // The tag is copied into the context here, before any dst (which may overlap it) is written.
  uint8_t tagCopy[kTagSize];
  std::memcpy(tagCopy, tag.data, kTagSize);
  if (ok) ok = g_crypto.ctx_ctrl(c, kCtrlGcmSetTag, static_cast<int>(kTagSize), tagCopy) == 1;
  int outl = 0;
  if (ok && aad.len > 0) ok = g_crypto.cipher_update(c, nullptr, &outl, aad.data, static_cast<int>(aad.len)) == 1;
  size_t off = 0;
  for (size_t i = 0; ok && i < dsts.size(); i++) {
    ok = Update(c, dsts[i].data, ct.data + off, dsts[i].len);
    off += dsts[i].len;
  }
  if (!ok) return Throw(env, "ERR_SEVMIG_AEAD_CRYPTO", "libcrypto AES-256-GCM open failed"), nullptr;
  // Final is where GCM compares the tag: failure here is authentication, not an error.
  uint8_t fin[16];
  bool verified = g_crypto.cipher_final_ex(c, fin, &outl) == 1;
  return Bool(env, verified);
}

napi_value Matches(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  AesGcm* s = Self(env, info, 1, argv);
  if (s == nullptr) return nullptr;
  Bytes k;
  if (!GetBytes(env, argv[0], "key", &k)) return nullptr;
  if (k.len != kKeySize) return Bool(env, false);
  uint8_t diff = 0;
  for (size_t i = 0; i < kKeySize; i++) diff |= static_cast<uint8_t>(s->key[i] ^ k.data[i]);
  return Bool(env, diff == 0);
}

napi_value DisposeJs(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  napi_value self;
  if (napi_get_cb_info(env, info, &argc, nullptr, &self, nullptr) != napi_ok) return nullptr;
  void* p = nullptr;
  if (napi_unwrap(env, self, &p) == napi_ok && p != nullptr) {
    auto* s = static_cast<AesGcm*>(p);
    if (!s->disposed) s->Dispose();  // idempotent; the finalizer still deletes the struct
  }
  return Undefined(env);
}

// mallocTune(mmapThreshold, trimThreshold) -> boolean. glibc only (false elsewhere). Large
// ArrayBuffers (record frames, page batches) otherwise come from fresh mmap()s or a heap top that
// is trimmed after every GC: each 4 KiB of them then costs a page fault on first write, which
// measured as much as the copy itself on the migration hot path.
napi_value MallocTune(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  bool ok = false;
#if defined(__GLIBC__)
  int64_t mmapThreshold = 0;
  int64_t trimThreshold = 0;
  if (argc == 2 && napi_get_value_int64(env, argv[0], &mmapThreshold) == napi_ok &&
      napi_get_value_int64(env, argv[1], &trimThreshold) == napi_ok && mmapThreshold > 0 &&
      trimThreshold > 0 && mmapThreshold <= INT32_MAX && trimThreshold <= INT32_MAX) {
    ok = mallopt(M_MMAP_THRESHOLD, static_cast<int>(mmapThreshold)) == 1 &&
         mallopt(M_TRIM_THRESHOLD, static_cast<int>(trimThreshold)) == 1;
  }
#endif
  napi_value r;
  napi_get_boolean(env, ok, &r);
  return r;
}

}  // namespace

NAPI_MODULE_INIT() {
  std::call_once(g_once, LoadCrypto);
  if (!g_crypto.error.empty()) {
    napi_throw_error(env, "ERR_SEVMIG_AEAD_LOAD", g_crypto.error.c_str());
    return nullptr;
  }
  napi_property_descriptor methods[] = {
      {"seal", nullptr, Seal, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"open", nullptr, Open, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"matches", nullptr, Matches, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"dispose", nullptr, DisposeJs, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_value cls;
  if (napi_define_class(env, "AesGcm", NAPI_AUTO_LENGTH, Construct, nullptr, sizeof methods / sizeof methods[0], methods, &cls) != napi_ok) return nullptr;
  napi_set_named_property(env, exports, "AesGcm", cls);
  napi_value lib;
  napi_create_string_utf8(env, g_crypto.version(0), NAPI_AUTO_LENGTH, &lib);  // OPENSSL_VERSION
  napi_set_named_property(env, exports, "library", lib);
  napi_value path;
  napi_create_string_utf8(env, g_crypto.path.c_str(), NAPI_AUTO_LENGTH, &path);
  napi_set_named_property(env, exports, "libraryPath", path);
  napi_value tune;
  napi_create_function(env, "mallocTune", NAPI_AUTO_LENGTH, MallocTune, nullptr, &tune);
  napi_set_named_property(env, exports, "mallocTune", tune);
  return exports;
}
