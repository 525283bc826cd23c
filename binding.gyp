# The optional native AES-256-GCM backend (native/aes_gcm.cc), built at install by
# scripts/build-native.js. Only a C++ compiler and Node's headers are needed: libcrypto.so.3 is
# dlopen'd at load time, not linked (see the file header of native/aes_gcm.cc).
{
  "targets": [
    {
      "target_name": "sevmig_aead",
      "sources": ["native/aes_gcm.cc"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"],
      "libraries": ["-ldl"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
