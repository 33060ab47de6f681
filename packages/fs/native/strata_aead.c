/*
 * AES-256-GCM through the system's libcrypto (OpenSSL 3), for the
 * repository's seal/open (packages/repo/src/crypto.ts).
 *
 * Why: the OpenSSL built into the Node.js binary we run on (NodeSource's
 * 20.x) does not use AES-NI here — node's aes-256-gcm runs at ~0.2 GB/s,
 * while the system's libcrypto does ~3.7 GB/s on the same CPU
 * (`openssl speed -evp aes-256-gcm`; with AES-NI masked out it drops to the
 * same 0.2 GB/s). Every blob is sealed and opened, so this was most of the
 * CPU of `check --read-data` and a large part of backup and restore.
 *
 * The library is loaded with dlopen(RTLD_LOCAL | RTLD_DEEPBIND): node's
 * binary exports its own OpenSSL's symbols, and without DEEPBIND the
 * system library's internal calls could bind to them (two OpenSSLs mixed).
 * No OpenSSL headers are needed: the few functions used are declared here
 * with opaque pointers. When the library cannot be loaded, `aeadAvailable`
 * says why and the callers keep using node:crypto (same format).
 *
 * Format (the same as crypto.ts): nonce(12) || ciphertext || tag(16).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <node_api.h>

#define NONCE_LEN 12
#define TAG_LEN 16
#define KEY_LEN 32
/* openssl/evp.h */
#define EVP_CTRL_GCM_GET_TAG 0x10
#define EVP_CTRL_GCM_SET_TAG 0x11

typedef void EVP_CIPHER;
typedef void EVP_CIPHER_CTX;

static struct {
  char error[256];
  EVP_CIPHER *cipher;
  EVP_CIPHER_CTX *(*ctx_new)(void);
  void (*ctx_free)(EVP_CIPHER_CTX *);
  EVP_CIPHER *(*fetch)(void *, const char *, const char *);
  int (*enc_init)(EVP_CIPHER_CTX *, const EVP_CIPHER *, void *, const unsigned char *, const unsigned char *);
  int (*dec_init)(EVP_CIPHER_CTX *, const EVP_CIPHER *, void *, const unsigned char *, const unsigned char *);
  int (*enc_update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int);
  int (*dec_update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int);
  int (*enc_final)(EVP_CIPHER_CTX *, unsigned char *, int *);
  int (*dec_final)(EVP_CIPHER_CTX *, unsigned char *, int *);
  int (*ctrl)(EVP_CIPHER_CTX *, int, int, void *);
} lib;

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

/* Run once per process (worker threads load the addon too), on first use. */
static void load_lib(void) {
  if (getenv("STRATA_NATIVE_AES") != NULL && strcmp(getenv("STRATA_NATIVE_AES"), "0") == 0) {
    snprintf(lib.error, sizeof lib.error, "disabled by STRATA_NATIVE_AES=0");
    return;
  }
  void *h = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (h == NULL) {
    snprintf(lib.error, sizeof lib.error, "cannot load libcrypto.so.3: %s", dlerror());
    return;
  }
#define SYM(field, name)                                                              \
  do {                                                                                \
    *(void **)(&lib.field) = dlsym(h, name);                                          \
    if (lib.field == NULL) {                                                          \
      snprintf(lib.error, sizeof lib.error, "libcrypto.so.3 lacks %s", name);         \
      return;                                                                         \
    }                                                                                 \
  } while (0)
  SYM(ctx_new, "EVP_CIPHER_CTX_new");
  SYM(ctx_free, "EVP_CIPHER_CTX_free");
  SYM(fetch, "EVP_CIPHER_fetch");
  SYM(enc_init, "EVP_EncryptInit_ex");
  SYM(dec_init, "EVP_DecryptInit_ex");
  SYM(enc_update, "EVP_EncryptUpdate");
  SYM(dec_update, "EVP_DecryptUpdate");
  SYM(enc_final, "EVP_EncryptFinal_ex");
  SYM(dec_final, "EVP_DecryptFinal_ex");
  SYM(ctrl, "EVP_CIPHER_CTX_ctrl");
#undef SYM
  EVP_CIPHER *c = lib.fetch(NULL, "AES-256-GCM", NULL);
  if (c == NULL) {
    snprintf(lib.error, sizeof lib.error, "libcrypto.so.3 has no AES-256-GCM");
    return;
  }
  lib.cipher = c;
}

/* One cipher context per thread (napi env), freed with it. */
typedef struct {
  EVP_CIPHER_CTX *ctx;
} aead_env;

static void free_env(napi_env env, void *data, void *hint) {
  aead_env *e = data;
  if (e->ctx != NULL) lib.ctx_free(e->ctx);
  free(e);
}

static EVP_CIPHER_CTX *env_ctx(napi_env env) {
  aead_env *e = NULL;
  if (napi_get_instance_data(env, (void **)&e) != napi_ok || e == NULL) return NULL;
  if (e->ctx == NULL) e->ctx = lib.ctx_new();
  return e->ctx;
}

static napi_value throw_msg(napi_env env, const char *msg) {
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

/* A Buffer or any TypedArray/DataView view: its bytes. */
static int bytes_of(napi_env env, napi_value v, unsigned char **data, size_t *len) {
  bool is;
  if (napi_is_buffer(env, v, &is) == napi_ok && is) {
    void *d;
    if (napi_get_buffer_info(env, v, &d, len) != napi_ok) return 0;
    *data = d;
    return 1;
  }
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type t;
    size_t n, off;
    void *d;
    napi_value ab;
    if (napi_get_typedarray_info(env, v, &t, &n, &d, &ab, &off) != napi_ok) return 0;
    if (t != napi_uint8_array && t != napi_int8_array && t != napi_uint8_clamped_array) return 0;
    *data = d;
    *len = n;
    return 1;
  }
  return 0;
}

static int get_index(napi_env env, napi_value v, size_t *out) {
  int64_t i;
  if (napi_get_value_int64(env, v, &i) != napi_ok || i < 0) return 0;
  *out = (size_t)i;
  return 1;
}

static napi_value js_available(napi_env env, napi_callback_info info) {
  pthread_once(&lib_once, load_lib);
  napi_value r;
  if (lib.cipher != NULL) {
    napi_get_boolean(env, true, &r);
  } else {
    napi_create_string_utf8(env, lib.error, NAPI_AUTO_LENGTH, &r);
  }
  return r;
}

/*
 * gcmSeal(key, nonce, plain, aad | null, out, offset): writes
 * nonce || ciphertext || tag into out at offset; returns the bytes written.
 */
static napi_value js_seal(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 6)
    return throw_msg(env, "gcmSeal(key, nonce, plain, aad, out, offset)");
  pthread_once(&lib_once, load_lib);
  if (lib.cipher == NULL) return throw_msg(env, lib.error);
  unsigned char *key, *nonce, *plain, *aad = NULL, *out;
  size_t klen, nlen, plen, alen = 0, olen, off;
  napi_valuetype at;
  napi_typeof(env, argv[3], &at);
  if (!bytes_of(env, argv[0], &key, &klen) || klen != KEY_LEN) return throw_msg(env, "key must be 32 bytes");
  if (!bytes_of(env, argv[1], &nonce, &nlen) || nlen != NONCE_LEN) return throw_msg(env, "nonce must be 12 bytes");
  if (!bytes_of(env, argv[2], &plain, &plen)) return throw_msg(env, "plain must be bytes");
  if (at != napi_null && at != napi_undefined && !bytes_of(env, argv[3], &aad, &alen))
    return throw_msg(env, "aad must be bytes or null");
  if (!bytes_of(env, argv[4], &out, &olen)) return throw_msg(env, "out must be bytes");
  if (!get_index(env, argv[5], &off)) return throw_msg(env, "offset must be a non-negative integer");
  if (plen > INT32_MAX || alen > INT32_MAX || off > olen || olen - off < plen + NONCE_LEN + TAG_LEN)
    return throw_msg(env, "out has no room for the sealed value");
  EVP_CIPHER_CTX *ctx = env_ctx(env);
  if (ctx == NULL) return throw_msg(env, "no cipher context");
  unsigned char *o = out + off;
  memmove(o, nonce, NONCE_LEN);
  int n = 0, m = 0;
  if (lib.enc_init(ctx, lib.cipher, NULL, key, o) != 1 ||
      (alen > 0 && lib.enc_update(ctx, NULL, &n, aad, (int)alen) != 1) ||
      lib.enc_update(ctx, o + NONCE_LEN, &n, plain, (int)plen) != 1 ||
      lib.enc_final(ctx, o + NONCE_LEN + n, &m) != 1 ||
      lib.ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, o + NONCE_LEN + plen) != 1)
    return throw_msg(env, "AES-256-GCM encryption failed");
  napi_value r;
  napi_create_int64(env, (int64_t)(plen + NONCE_LEN + TAG_LEN), &r);
  return r;
}

/*
 * gcmOpen(key, sealed, aad | null, out, offset): the plaintext into out at
 * offset; returns its length, or -1 when authentication fails. out must not
 * overlap sealed.
 */
static napi_value js_open(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 5)
    return throw_msg(env, "gcmOpen(key, sealed, aad, out, offset)");
  pthread_once(&lib_once, load_lib);
  if (lib.cipher == NULL) return throw_msg(env, lib.error);
  unsigned char *key, *sealed, *aad = NULL, *out;
  size_t klen, slen, alen = 0, olen, off;
  napi_valuetype at;
  napi_typeof(env, argv[2], &at);
  if (!bytes_of(env, argv[0], &key, &klen) || klen != KEY_LEN) return throw_msg(env, "key must be 32 bytes");
  if (!bytes_of(env, argv[1], &sealed, &slen)) return throw_msg(env, "sealed must be bytes");
  if (at != napi_null && at != napi_undefined && !bytes_of(env, argv[2], &aad, &alen))
    return throw_msg(env, "aad must be bytes or null");
  if (!bytes_of(env, argv[3], &out, &olen)) return throw_msg(env, "out must be bytes");
  if (!get_index(env, argv[4], &off)) return throw_msg(env, "offset must be a non-negative integer");
  napi_value r;
  if (slen < NONCE_LEN + TAG_LEN) {
    napi_create_int32(env, -1, &r);
    return r;
  }
  size_t clen = slen - NONCE_LEN - TAG_LEN;
  if (clen > INT32_MAX || alen > INT32_MAX || off > olen || olen - off < clen)
    return throw_msg(env, "out has no room for the plaintext");
  EVP_CIPHER_CTX *ctx = env_ctx(env);
  if (ctx == NULL) return throw_msg(env, "no cipher context");
  unsigned char tag[TAG_LEN];
  memcpy(tag, sealed + NONCE_LEN + clen, TAG_LEN); /* out may overlap sealed */
  int n = 0, m = 0;
  int ok = lib.dec_init(ctx, lib.cipher, NULL, key, sealed) == 1 &&
           (alen == 0 || lib.dec_update(ctx, NULL, &n, aad, (int)alen) == 1) &&
           lib.dec_update(ctx, out + off, &n, sealed + NONCE_LEN, (int)clen) == 1 &&
           lib.ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) == 1 && lib.dec_final(ctx, out + off + n, &m) == 1;
  napi_create_int64(env, ok ? (int64_t)clen : -1, &r);
  return r;
}

/*
 * The library is loaded on the first aeadAvailable() (the callers ask it
 * before any seal or open), not when the addon loads: dlopen costs 5-10 ms
 * that a process which never encrypts (most CLI commands) should not pay.
 */
napi_value aead_register(napi_env env, napi_value exports) {
  aead_env *e = calloc(1, sizeof *e);
  if (e == NULL || napi_set_instance_data(env, e, free_env, NULL) != napi_ok) {
    free(e);
    return NULL;
  }
  napi_property_descriptor props[] = {
      {"aeadAvailable", NULL, js_available, NULL, NULL, NULL, napi_enumerable, NULL},
      {"gcmSeal", NULL, js_seal, NULL, NULL, NULL, napi_enumerable, NULL},
      {"gcmOpen", NULL, js_open, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
