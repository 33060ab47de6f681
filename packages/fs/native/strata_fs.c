/*
 * strata_fs: the few Linux syscalls that Node's fs module lacks and that a
 * full-fidelity backup needs: xattrs on the link itself, mknod, nanosecond
 * utimensat without following symlinks, SEEK_DATA/SEEK_HOLE, I/O priority
 * and page-cache advice, and a directory listing with every entry's lstat in
 * one call.
 *
 * Every call but createFiles and syncfsAsync is synchronous: each is one short syscall on
 * local metadata, far cheaper than a trip through the libuv thread pool.
 *
 * Paths are Buffers (raw bytes; Linux names need not be UTF-8) or strings.
 * Xattr names travel as latin1 strings so that any byte sequence round-trips
 * and matches how the tree codec stores them. Errors are shaped like Node's
 * errno errors: message "ECODE: description, syscall 'path'", with .code,
 * .errno (negative, like Node), .syscall and .path.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

/* From linux/ioprio.h, which older kernels' headers lack. */
#define STRATA_IOPRIO_CLASS_SHIFT 13
#define STRATA_IOPRIO_CLASS_IDLE 3
#define STRATA_IOPRIO_WHO_PROCESS 1

#define MAX_ARGS 4

#define CHECK(call)                                                                                \
  do {                                                                                             \
    if ((call) != napi_ok) {                                                                       \
      napi_throw_error(env, "ERR_STRATA_FS_NAPI", "N-API call failed: " #call);                    \
      return NULL;                                                                                 \
    }                                                                                              \
  } while (0)

/* Throw an errno error the way Node's fs does, naming the syscall and the path. */
static napi_value throw_errno(napi_env env, int err, const char *syscall_name, const char *path) {
  const char *code = uv_err_name(-err);
  const char *desc = strerror(err);
  size_t len = strlen(code) + strlen(desc) + strlen(syscall_name) + (path ? strlen(path) : 0) + 16;
  char *msg = malloc(len);
  if (msg == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  if (path)
    snprintf(msg, len, "%s: %s, %s '%s'", code, desc, syscall_name, path);
  else
    snprintf(msg, len, "%s: %s, %s", code, desc, syscall_name);

  napi_value js_msg, js_code, error, js_errno, js_syscall, js_path;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &js_msg);
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &js_code);
  napi_create_error(env, js_code, js_msg, &error);
  napi_create_int32(env, -err, &js_errno);
  napi_set_named_property(env, error, "errno", js_errno);
  napi_set_named_property(env, error, "code", js_code);
  napi_create_string_utf8(env, syscall_name, NAPI_AUTO_LENGTH, &js_syscall);
  napi_set_named_property(env, error, "syscall", js_syscall);
  if (path) {
    napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &js_path);
    napi_set_named_property(env, error, "path", js_path);
  }
  free(msg);
  napi_throw(env, error);
  return NULL;
}

static napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

/*
 * Copy a Buffer or string argument into a NUL-terminated heap string. Returns
 * NULL (with a JS exception pending) on a wrong type or an embedded NUL, which
 * would otherwise silently truncate the path.
 */
static char *get_bytes(napi_env env, napi_value v, const char *what, int latin1) {
  bool is_buf = false;
  napi_is_buffer(env, v, &is_buf);
  if (is_buf) {
    void *data;
    size_t len;
    if (napi_get_buffer_info(env, v, &data, &len) != napi_ok) return NULL;
    if (memchr(data, 0, len) != NULL) {
      char m[128];
      snprintf(m, sizeof m, "%s must not contain NUL bytes", what);
      napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", m);
      return NULL;
    }
    char *s = malloc(len + 1);
    if (s == NULL) return NULL;
    memcpy(s, data, len);
    s[len] = 0;
    return s;
  }
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t != napi_string) {
    char m[128];
    snprintf(m, sizeof m, "%s must be a Buffer or a string", what);
    throw_type(env, m);
    return NULL;
  }
  size_t len;
  napi_status st = latin1 ? napi_get_value_string_latin1(env, v, NULL, 0, &len)
                          : napi_get_value_string_utf8(env, v, NULL, 0, &len);
  if (st != napi_ok) return NULL;
  char *s = malloc(len + 1);
  if (s == NULL) return NULL;
  st = latin1 ? napi_get_value_string_latin1(env, v, s, len + 1, &len)
              : napi_get_value_string_utf8(env, v, s, len + 1, &len);
  if (st != napi_ok || strlen(s) != len) {
    free(s);
    char m[128];
    snprintf(m, sizeof m, "%s must not contain NUL characters", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", m);
    return NULL;
  }
  return s;
}

static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = MAX_ARGS;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc < want) {
    throw_type(env, "missing arguments");
    return 0;
  }
  return 1;
}

/* A number or a bigint as int64 (offsets, device numbers, nanoseconds). */
static int get_int64(napi_env env, napi_value v, int64_t *out, const char *what) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_bigint) {
    bool lossless;
    return napi_get_value_bigint_int64(env, v, out, &lossless) == napi_ok && lossless;
  }
  if (t == napi_number) {
    double d;
    napi_get_value_double(env, v, &d);
    if (d != d || d > 9007199254740991.0 || d < -9007199254740991.0) return 0;
    *out = (int64_t)d;
    return 1;
  }
  (void)what;
  return 0;
}

static napi_value js_llistxattr(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 1, argv)) return NULL;
  char *path = get_bytes(env, argv[0], "path", 0);
  if (path == NULL) return NULL;

  char *list = NULL;
  ssize_t n;
  /* The list can grow between the size query and the read: retry on ERANGE. */
  for (;;) {
    n = llistxattr(path, NULL, 0);
    if (n < 0) break;
    free(list);
    list = malloc(n > 0 ? (size_t)n : 1);
    if (list == NULL) {
      n = -1;
      errno = ENOMEM;
      break;
    }
    n = llistxattr(path, list, (size_t)n);
    if (n >= 0 || errno != ERANGE) break;
  }
  if (n < 0) {
    int err = errno;
    free(list);
    napi_value r = throw_errno(env, err, "llistxattr", path);
    free(path);
    return r;
  }
  free(path);

  napi_value arr;
  CHECK(napi_create_array(env, &arr));
  uint32_t idx = 0;
  for (ssize_t off = 0; off < n;) {
    size_t len = strnlen(list + off, (size_t)(n - off));
    napi_value name;
    if (napi_create_string_latin1(env, list + off, len, &name) != napi_ok ||
        napi_set_element(env, arr, idx++, name) != napi_ok) {
      free(list);
      napi_throw_error(env, "ERR_STRATA_FS_NAPI", "building the xattr list failed");
      return NULL;
    }
    off += (ssize_t)len + 1;
  }
  free(list);
  return arr;
}

static napi_value js_lgetxattr(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 2, argv)) return NULL;
  char *path = get_bytes(env, argv[0], "path", 0);
  if (path == NULL) return NULL;
  char *name = get_bytes(env, argv[1], "name", 1);
  if (name == NULL) {
    free(path);
    return NULL;
  }
  char *val = NULL;
  ssize_t n;
  for (;;) {
    n = lgetxattr(path, name, NULL, 0);
    if (n < 0) break;
    free(val);
    val = malloc(n > 0 ? (size_t)n : 1);
    if (val == NULL) {
      n = -1;
      errno = ENOMEM;
      break;
    }
    n = lgetxattr(path, name, val, (size_t)n);
    if (n >= 0 || errno != ERANGE) break;
  }
  free(name);
  if (n < 0) {
    int err = errno;
    free(val);
    napi_value r = throw_errno(env, err, "lgetxattr", path);
    free(path);
    return r;
  }
  free(path);
  napi_value buf;
  napi_status st = napi_create_buffer_copy(env, (size_t)n, val, NULL, &buf);
  free(val);
  CHECK(st);
  return buf;
}

/* lsetxattr(path, name, value, flags = 0): flags are XATTR_CREATE / XATTR_REPLACE. */
static napi_value js_lsetxattr(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  size_t argc = MAX_ARGS;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3) return throw_type(env, "lsetxattr(path, name, value[, flags])");
  bool is_buf = false;
  napi_is_buffer(env, argv[2], &is_buf);
  if (!is_buf) return throw_type(env, "value must be a Buffer");
  int32_t flags = 0;
  if (argc > 3) napi_get_value_int32(env, argv[3], &flags);
  void *data;
  size_t len;
  CHECK(napi_get_buffer_info(env, argv[2], &data, &len));
  char *path = get_bytes(env, argv[0], "path", 0);
  if (path == NULL) return NULL;
  char *name = get_bytes(env, argv[1], "name", 1);
  if (name == NULL) {
    free(path);
    return NULL;
  }
  int rc = lsetxattr(path, name, data, len, flags);
  int err = errno;
  free(name);
  napi_value r = NULL;
  if (rc < 0) r = throw_errno(env, err, "lsetxattr", path);
  free(path);
  return r;
}

static napi_value js_lremovexattr(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 2, argv)) return NULL;
  char *path = get_bytes(env, argv[0], "path", 0);
  if (path == NULL) return NULL;
  char *name = get_bytes(env, argv[1], "name", 1);
  if (name == NULL) {
    free(path);
    return NULL;
  }
  int rc = lremovexattr(path, name);
  int err = errno;
  free(name);
  napi_value r = NULL;
  if (rc < 0) r = throw_errno(env, err, "lremovexattr", path);
  free(path);
  return r;
}

/* mknod(path, mode, dev): mode includes the file type bits (S_IFIFO, S_IFCHR, ...). */
static napi_value js_mknod(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 3, argv)) return NULL;
  uint32_t mode;
  int64_t dev;
  if (napi_get_value_uint32(env, argv[1], &mode) != napi_ok) return throw_type(env, "mode must be a number");
  if (!get_int64(env, argv[2], &dev, "dev")) return throw_type(env, "dev must be a safe integer or bigint");
  char *path = get_bytes(env, argv[0], "path", 0);
  if (path == NULL) return NULL;
  int rc = mknod(path, (mode_t)mode, (dev_t)dev);
  int err = errno;
  napi_value r = NULL;
  if (rc < 0) r = throw_errno(env, err, "mknod", path);
  free(path);
  return r;
}

static int split_ns(int64_t ns, struct timespec *ts) {
  /* Floor division so times before 1970 get a non-negative tv_nsec. */
  int64_t sec = ns / 1000000000;
  int64_t nsec = ns % 1000000000;
  if (nsec < 0) {
    nsec += 1000000000;
    sec -= 1;
  }
  ts->tv_sec = (time_t)sec;
  ts->tv_nsec = (long)nsec;
  return 1;
}

/* atime and mtime in nanoseconds (bigints or numbers) as timespecs; 0 after throwing. */
static int get_times(napi_env env, napi_value atime, napi_value mtime, struct timespec ts[2]) {
  int64_t a, m;
  if (!get_int64(env, atime, &a, "atimeNs") || !get_int64(env, mtime, &m, "mtimeNs")) {
    throw_type(env, "times must be bigint nanoseconds");
    return 0;
  }
  split_ns(a, &ts[0]);
  split_ns(m, &ts[1]);
  return 1;
}

/* lutimens(path, atimeNs, mtimeNs): utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW). */
static napi_value js_lutimens(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 3, argv)) return NULL;
  struct timespec ts[2];
  if (!get_times(env, argv[1], argv[2], ts)) return NULL;
  char *path = get_bytes(env, argv[0], "path", 0);
  if (path == NULL) return NULL;
  int rc = utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW);
  int err = errno;
  napi_value r = NULL;
  if (rc < 0) r = throw_errno(env, err, "utimensat", path);
  free(path);
  return r;
}

/*
 * futimensClose(fd, atimeNs, mtimeNs): futimens(fd, ts), then close(fd)
 * whatever futimens did. Returns 0, the errno of futimens (the descriptor is
 * closed all the same), or minus the errno of close (EINTR counts as
 * closed: Linux releases the descriptor). A raw close, so a worker thread
 * may close a descriptor the main thread opened without Node's warning.
 */
static napi_value js_futimens_close(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 3, argv)) return NULL;
  int32_t fd;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok) return throw_type(env, "fd must be a number");
  struct timespec ts[2];
  if (!get_times(env, argv[1], argv[2], ts)) return NULL;
  int err = futimens(fd, ts) < 0 ? errno : 0;
  int cerr = close(fd) < 0 ? errno : 0;
  if (cerr == EINTR) cerr = 0;
  napi_value out;
  napi_create_int32(env, cerr ? -cerr : err, &out);
  return out;
}

/*
 * scanDir(path): every entry of a directory with its lstat, in one call, as
 * one buffer (readdir + fstatat(AT_SYMLINK_NOFOLLOW) relative to the open
 * directory, so no path is resolved twice and no Stats object is built per
 * entry). Per entry, in directory order ("." and ".." left out):
 *   u16 name length, name bytes, i32 status (0, or the errno of fstatat),
 *   then with status 0: 10 x 64-bit little-endian values — dev, ino, mode,
 *   nlink, uid, gid, rdev, size, mtime and ctime in nanoseconds (signed).
 */
struct grow {
  char *p;
  size_t len, cap;
};

static int grow_put(struct grow *g, const void *src, size_t n) {
  if (g->len + n > g->cap) {
    size_t cap = g->cap ? g->cap * 2 : 65536;
    while (cap < g->len + n) cap *= 2;
    char *q = realloc(g->p, cap);
    if (q == NULL) return 0;
    g->p = q;
    g->cap = cap;
  }
  memcpy(g->p + g->len, src, n);
  g->len += n;
  return 1;
}

static napi_value js_scandir(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 1, argv)) return NULL;
  char *path = get_bytes(env, argv[0], "path", 0);
  if (path == NULL) return NULL;
  int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    napi_value r = throw_errno(env, errno, "scandir", path);
    free(path);
    return r;
  }
  DIR *d = fdopendir(dfd);
  if (d == NULL) {
    int err = errno;
    close(dfd);
    napi_value r = throw_errno(env, err, "scandir", path);
    free(path);
    return r;
  }
  struct grow g = {NULL, 0, 0};
  int ok = 1;
  for (;;) {
    errno = 0;
    struct dirent *de = readdir(d);
    if (de == NULL) {
      if (errno != 0) {
        int err = errno;
        closedir(d);
        free(g.p);
        napi_value r = throw_errno(env, err, "scandir", path);
        free(path);
        return r;
      }
      break;
    }
    const char *n = de->d_name;
    if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0))) continue;
    uint16_t nl = (uint16_t)strlen(n);
    struct stat st;
    int32_t status = fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : errno;
    ok = ok && grow_put(&g, &nl, 2) && grow_put(&g, n, nl) && grow_put(&g, &status, 4);
    if (ok && status == 0) {
      int64_t v[10] = {
          (int64_t)st.st_dev,
          (int64_t)st.st_ino,
          (int64_t)st.st_mode,
          (int64_t)st.st_nlink,
          (int64_t)st.st_uid,
          (int64_t)st.st_gid,
          (int64_t)st.st_rdev,
          (int64_t)st.st_size,
          (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec,
          (int64_t)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec,
      };
      ok = grow_put(&g, v, sizeof v);
    }
    if (!ok) break;
  }
  closedir(d);
  free(path);
  if (!ok) {
    free(g.p);
    return throw_errno(env, ENOMEM, "scandir", NULL);
  }
  napi_value out;
  void *data;
  napi_status rc = napi_create_buffer_copy(env, g.len, g.len ? g.p : "", &data, &out);
  free(g.p);
  CHECK(rc);
  return out;
}

/*
 * mallocTune(arenaMax, mmapThreshold, trimThreshold): glibc allocator
 * settings (mallopt) for a process with worker threads that pass many
 * short-lived megabyte buffers around: fewer per-thread arenas, and large
 * buffers mmapped and given back when freed instead of kept in the heap
 * (a fixed threshold also turns off glibc's dynamic one, which otherwise
 * rises to the largest buffer freed). A value <= 0 leaves that setting
 * alone. Returns whether every mallopt call succeeded (false elsewhere than
 * glibc, where it does nothing).
 */
static napi_value js_malloc_tune(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 3, argv)) return NULL;
  int32_t v[3];
  for (int i = 0; i < 3; i++)
    if (napi_get_value_int32(env, argv[i], &v[i]) != napi_ok) return throw_type(env, "values must be numbers");
  int ok = 1;
#ifdef __GLIBC__
  if (v[0] > 0) ok = mallopt(M_ARENA_MAX, v[0]) && ok;
  if (v[1] > 0) ok = mallopt(M_MMAP_THRESHOLD, v[1]) && ok;
  if (v[2] > 0) ok = mallopt(M_TRIM_THRESHOLD, v[2]) && ok;
#else
  ok = 0;
#endif
  napi_value out;
  CHECK(napi_get_boolean(env, ok != 0, &out));
  return out;
}

/*
 * glibc malloc_trim(0): give the free pages inside every malloc arena back
 * to the kernel (MADV_DONTNEED), not only the top of the heap. Returns
 * whether anything was released.
 */
static napi_value js_malloc_trim(napi_env env, napi_callback_info info) {
  int r = 0;
#ifdef __GLIBC__
  r = malloc_trim(0);
#endif
  napi_value out;
  CHECK(napi_get_boolean(env, r != 0, &out));
  return out;
}

static napi_value do_seek(napi_env env, napi_callback_info info, int whence, const char *name) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 2, argv)) return NULL;
  int32_t fd;
  int64_t off;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok) return throw_type(env, "fd must be a number");
  if (!get_int64(env, argv[1], &off, "offset")) return throw_type(env, "offset must be a safe integer");
  off_t r = lseek(fd, (off_t)off, whence);
  napi_value out;
  if (r < 0) {
    /* ENXIO: no data (or hole) at or after offset, i.e. past the last extent. */
    if (errno == ENXIO) {
      CHECK(napi_create_int32(env, -1, &out));
      return out;
    }
    return throw_errno(env, errno, name, NULL);
  }
  CHECK(napi_create_double(env, (double)r, &out));
  return out;
}

static napi_value js_seek_data(napi_env env, napi_callback_info info) {
  return do_seek(env, info, SEEK_DATA, "lseek(SEEK_DATA)");
}

static napi_value js_seek_hole(napi_env env, napi_callback_info info) {
  return do_seek(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)");
}

/*
 * Set raw I/O priority `prio` (class << 13 | data) for every thread of this
 * process. ioprio is per thread and only inherited at creation, so setting
 * it for the calling thread alone would miss libuv's pool threads, which do
 * the actual reads. 0, or -1 with errno of the calling thread's failure.
 */
static int ioprio_all(int prio) {
  if (syscall(SYS_ioprio_set, STRATA_IOPRIO_WHO_PROCESS, 0, prio) < 0) return -1;
  DIR *d = opendir("/proc/self/task");
  if (d != NULL) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      int tid = atoi(e->d_name);
      /* A thread may exit while we walk; that is not an error. */
      if (tid > 0) syscall(SYS_ioprio_set, STRATA_IOPRIO_WHO_PROCESS, tid, prio);
    }
    closedir(d);
  }
  return 0;
}

/* Put every thread of this process in the idle I/O class. */
static napi_value js_ioprio_idle(napi_env env, napi_callback_info info) {
  (void)info;
  if (ioprio_all(STRATA_IOPRIO_CLASS_IDLE << STRATA_IOPRIO_CLASS_SHIFT) < 0)
    return throw_errno(env, errno, "ioprio_set", NULL);
  return NULL;
}

/*
 * ioprioSet(prio): every thread of this process to raw I/O priority prio
 * (class << 13 | data; e.g. best-effort level 4: 2 << 13 | 4). Only the
 * real-time class needs privileges.
 */
static napi_value js_ioprio_set(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 1, argv)) return NULL;
  int32_t prio;
  if (napi_get_value_int32(env, argv[0], &prio) != napi_ok) return throw_type(env, "prio must be a number");
  if (ioprio_all(prio) < 0) return throw_errno(env, errno, "ioprio_set", NULL);
  return NULL;
}

/* schedPolicy(tid): the scheduling policy of thread `tid` (0: the caller), as sched_getscheduler(2). */
static napi_value js_sched_policy(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 1, argv)) return NULL;
  int32_t tid;
  if (napi_get_value_int32(env, argv[0], &tid) != napi_ok) return throw_type(env, "tid must be a number");
  int r = sched_getscheduler(tid);
  if (r < 0) return throw_errno(env, errno, "sched_getscheduler", NULL);
  napi_value out;
  CHECK(napi_create_int32(env, r, &out));
  return out;
}

/*
 * schedSetAll(policy): every thread of this process to SCHED_OTHER (0) or
 * SCHED_IDLE (5), static priority 0. systemd's CPUSchedulingPolicy=idle
 * puts the agent in SCHED_IDLE, where nice has no effect. Throws when the
 * calling thread cannot be changed; other threads are best effort.
 */
static napi_value js_sched_set_all(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 1, argv)) return NULL;
  int32_t policy;
  if (napi_get_value_int32(env, argv[0], &policy) != napi_ok) return throw_type(env, "policy must be a number");
  if (policy != SCHED_OTHER && policy != SCHED_IDLE) return throw_type(env, "policy must be SCHED_OTHER or SCHED_IDLE");
  struct sched_param sp = {0};
  if (sched_setscheduler(0, policy, &sp) < 0) return throw_errno(env, errno, "sched_setscheduler", NULL);
  DIR *d = opendir("/proc/self/task");
  if (d != NULL) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      int tid = atoi(e->d_name);
      if (tid > 0) sched_setscheduler(tid, policy, &sp);
    }
    closedir(d);
  }
  return NULL;
}

/*
 * ioprioGet(tid): the raw I/O priority of thread `tid` (0: the calling
 * thread): class << 13 | data, as ioprio_get(2) returns it. Lets the agent
 * (and its tests) check what ioprioIdle did, thread by thread.
 */
static napi_value js_ioprio_get(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 1, argv)) return NULL;
  int32_t tid;
  if (napi_get_value_int32(env, argv[0], &tid) != napi_ok) return throw_type(env, "tid must be a number");
  long r = syscall(SYS_ioprio_get, STRATA_IOPRIO_WHO_PROCESS, tid);
  if (r < 0) return throw_errno(env, errno, "ioprio_get", NULL);
  napi_value out;
  CHECK(napi_create_int32(env, (int32_t)r, &out));
  return out;
}

/* posix_fadvise(fd, offset, len, advice) for fadviseDontneed / fadviseWillneed; `usage` names the call. */
static napi_value fadvise_with(napi_env env, napi_callback_info info, int advice, const char *usage) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 3, argv)) return NULL;
  int32_t fd;
  int64_t off, len;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || !get_int64(env, argv[1], &off, "offset") ||
      !get_int64(env, argv[2], &len, "len"))
    return throw_type(env, usage);
  int rc = posix_fadvise(fd, (off_t)off, (off_t)len, advice);
  if (rc != 0) return throw_errno(env, rc, "posix_fadvise", NULL);
  return NULL;
}

/* fadviseDontneed(fd, offset, len): drop pages we read once so a backup does not evict the user's cache. */
static napi_value js_fadvise_dontneed(napi_env env, napi_callback_info info) {
  return fadvise_with(env, info, POSIX_FADV_DONTNEED, "fadviseDontneed(fd, offset, len)");
}

/*
 * fadviseWillneed(fd, offset, len): ask the kernel to start reading the
 * range into the page cache now (asynchronously), so a read that comes a
 * little later finds it there instead of waiting on the disk.
 */
static napi_value js_fadvise_willneed(napi_env env, napi_callback_info info) {
  return fadvise_with(env, info, POSIX_FADV_WILLNEED, "fadviseWillneed(fd, offset, len)");
}

/*
 * peerCred(fd): the credentials of the process at the other end of a
 * connected Unix socket (SO_PEERCRED), as the kernel recorded them at
 * connect time: { pid, uid, gid }. The agent's user socket uses it to know
 * which user asks, without trusting anything the client says.
 */
static napi_value js_peer_cred(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 1, argv)) return NULL;
  int32_t fd;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok) return throw_type(env, "fd must be a number");
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
    return throw_errno(env, errno, "getsockopt(SO_PEERCRED)", NULL);
  napi_value out, v;
  CHECK(napi_create_object(env, &out));
  CHECK(napi_create_int64(env, (int64_t)cred.pid, &v));
  CHECK(napi_set_named_property(env, out, "pid", v));
  CHECK(napi_create_int64(env, (int64_t)cred.uid, &v));
  CHECK(napi_set_named_property(env, out, "uid", v));
  CHECK(napi_create_int64(env, (int64_t)cred.gid, &v));
  CHECK(napi_set_named_property(env, out, "gid", v));
  return out;
}

/*
 * syncfs(path): flush every dirty page and inode of the filesystem holding
 * `path` (a directory), syncfs(2). A restore stages thousands of files; one
 * syncfs before its commit costs what the dirty data costs, where an fsync
 * per file pays a journal commit each.
 */
static napi_value js_syncfs(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 1, argv)) return NULL;
  char *path = get_bytes(env, argv[0], "path", 0);
  if (path == NULL) return NULL;
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    napi_value r = throw_errno(env, errno, "open", path);
    free(path);
    return r;
  }
  int rc = syncfs(fd);
  int err = errno;
  close(fd);
  if (rc < 0) {
    napi_value r = throw_errno(env, err, "syncfs", path);
    free(path);
    return r;
  }
  free(path);
  return NULL;
}

/*
 * Work on libuv's pool with a JS callback (createFiles, syncfsAsync):
 * queue_work keeps `cb` referenced and queues `execute` then `complete`;
 * 0, with a JS exception pending, when it could not (the caller frees its
 * data). finish_work, from `complete`, calls cb(arg) unless arg is NULL and
 * releases the callback and the work.
 */
static int queue_work(napi_env env, const char *name, napi_value cb, napi_ref *ref, napi_async_work *work,
                      napi_async_execute_callback execute, napi_async_complete_callback complete, void *data) {
  napi_value js_name;
  if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &js_name) == napi_ok &&
      napi_create_reference(env, cb, 1, ref) == napi_ok) {
    if (napi_create_async_work(env, NULL, js_name, execute, complete, data, work) == napi_ok) {
      if (napi_queue_async_work(env, *work) == napi_ok) return 1;
      napi_delete_async_work(env, *work);
    }
    napi_delete_reference(env, *ref);
  }
  napi_throw_error(env, "ERR_STRATA_FS_NAPI", "N-API call failed: work could not be queued");
  return 0;
}

static void finish_work(napi_env env, napi_ref ref, napi_async_work work, napi_value arg) {
  napi_value cb, global;
  if (arg != NULL && napi_get_reference_value(env, ref, &cb) == napi_ok && napi_get_global(env, &global) == napi_ok)
    napi_call_function(env, global, cb, 1, &arg, NULL);
  napi_delete_reference(env, ref);
  napi_delete_async_work(env, work);
}

/*
 * createFiles(paths, modes, cb[, targets]): create each path, in order, on a
 * thread of libuv's pool; then cb(results) on the event loop, an Int32Array
 * per path. By the type bits of its mode: a regular file (S_IFREG or none)
 * is open(path, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, mode) and
 * answers the descriptor; a directory (S_IFDIR) is mkdir(path, mode), a
 * symlink (S_IFLNK) symlink(targets[i], path), each answering 0; a failure
 * answers minus the errno. One job for many entries: a restore creates tens
 * of thousands of staged files, and an `fs.open` each cost its thread about
 * half of what the open itself costs (a request, a promise, a wake-up per
 * file). The paths and targets are copied before the call returns. cb must
 * not throw.
 */
typedef struct {
  napi_async_work work;
  napi_ref cb;
  uint32_t n;
  char **paths;
  /* Symlink targets (NULL for other entries). */
  char **targets;
  uint32_t *modes;
  int32_t *results;
} create_job;

static void create_job_free(create_job *j) {
  if (j == NULL) return;
  if (j->paths != NULL)
    for (uint32_t i = 0; i < j->n; i++) free(j->paths[i]);
  if (j->targets != NULL)
    for (uint32_t i = 0; i < j->n; i++) free(j->targets[i]);
  free(j->paths);
  free(j->targets);
  free(j->modes);
  free(j->results);
  free(j);
}

static void create_execute(napi_env env, void *data) {
  (void)env;
  create_job *j = data;
  for (uint32_t i = 0; i < j->n; i++) {
    mode_t mode = (mode_t)j->modes[i];
    int r;
    if (S_ISDIR(mode))
      r = mkdir(j->paths[i], mode & 07777);
    else if (S_ISLNK(mode))
      r = symlink(j->targets[i], j->paths[i]);
    else
      r = open(j->paths[i], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode & 07777);
    j->results[i] = r >= 0 ? r : -errno;
  }
}

static void create_complete(napi_env env, napi_status status, void *data) {
  create_job *j = data;
  napi_value ab, arr = NULL;
  void *mem;
  if (status != napi_ok || napi_create_arraybuffer(env, (size_t)j->n * 4, &mem, &ab) != napi_ok ||
      napi_create_typedarray(env, napi_int32_array, j->n, ab, 0, &arr) != napi_ok)
    arr = NULL;
  else
    memcpy(mem, j->results, (size_t)j->n * 4);
  finish_work(env, j->cb, j->work, arr);
  create_job_free(j);
}

static napi_value js_create_files(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 3, argv)) return NULL;
  bool is_arr = false;
  uint32_t n = 0, nm = 0, nt = 0;
  if (napi_is_array(env, argv[0], &is_arr) != napi_ok || !is_arr) return throw_type(env, "paths must be an array");
  napi_get_array_length(env, argv[0], &n);
  if (napi_is_array(env, argv[1], &is_arr) != napi_ok || !is_arr) return throw_type(env, "modes must be an array");
  napi_get_array_length(env, argv[1], &nm);
  if (nm != n) return throw_type(env, "modes must have one number per path");
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_function) return throw_type(env, "cb must be a function");
  napi_typeof(env, argv[3], &t);
  bool has_targets = t != napi_undefined;
  if (has_targets) {
    if (napi_is_array(env, argv[3], &is_arr) != napi_ok || !is_arr) return throw_type(env, "targets must be an array");
    napi_get_array_length(env, argv[3], &nt);
    if (nt != n) return throw_type(env, "targets must have one entry per path");
  }
  create_job *j = calloc(1, sizeof *j);
  if (j == NULL) return throw_errno(env, ENOMEM, "createFiles", NULL);
  j->paths = calloc(n ? n : 1, sizeof *j->paths);
  j->targets = calloc(n ? n : 1, sizeof *j->targets);
  j->modes = calloc(n ? n : 1, sizeof *j->modes);
  j->results = calloc(n ? n : 1, sizeof *j->results);
  if (j->paths == NULL || j->targets == NULL || j->modes == NULL || j->results == NULL) {
    create_job_free(j);
    return throw_errno(env, ENOMEM, "createFiles", NULL);
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    if (napi_get_element(env, argv[0], i, &v) != napi_ok) {
      create_job_free(j);
      return throw_type(env, "paths must be Buffers or strings");
    }
    j->paths[i] = get_bytes(env, v, "path", 0);
    j->n = i + 1;
    if (j->paths[i] == NULL) {
      create_job_free(j);
      return NULL;
    }
    if (napi_get_element(env, argv[1], i, &v) != napi_ok ||
        napi_get_value_uint32(env, v, &j->modes[i]) != napi_ok) {
      create_job_free(j);
      return throw_type(env, "modes must be numbers");
    }
    mode_t type = (mode_t)j->modes[i] & S_IFMT;
    if (type != 0 && type != S_IFREG && type != S_IFDIR && type != S_IFLNK) {
      create_job_free(j);
      return throw_type(env, "modes must name a file, a directory or a symlink");
    }
    if (type == S_IFLNK) {
      if (!has_targets || napi_get_element(env, argv[3], i, &v) != napi_ok) {
        create_job_free(j);
        return throw_type(env, "a symlink needs its target in targets");
      }
      j->targets[i] = get_bytes(env, v, "target", 0);
      if (j->targets[i] == NULL) {
        create_job_free(j);
        return NULL;
      }
    }
  }
  j->n = n;
  if (!queue_work(env, "strata.createFiles", argv[2], &j->cb, &j->work, create_execute, create_complete, j))
    create_job_free(j);
  return NULL;
}

/*
 * syncfsAsync(path, cb): syncfs(2) on the filesystem holding directory
 * `path`, on a thread of libuv's pool; then cb(errno) on the event loop (0
 * when it worked). A restore starts one while it still writes, so the
 * flush before its commit finds less to write. cb must not throw.
 */
typedef struct {
  napi_async_work work;
  napi_ref cb;
  char *path;
  int err;
} syncfs_job;

static void syncfs_execute(napi_env env, void *data) {
  (void)env;
  syncfs_job *j = data;
  int fd = open(j->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    j->err = errno;
    return;
  }
  j->err = syncfs(fd) < 0 ? errno : 0;
  close(fd);
}

static void syncfs_complete(napi_env env, napi_status status, void *data) {
  syncfs_job *j = data;
  napi_value arg;
  if (status != napi_ok || napi_create_int32(env, j->err, &arg) != napi_ok) arg = NULL;
  finish_work(env, j->cb, j->work, arg);
  free(j->path);
  free(j);
}

static napi_value js_syncfs_async(napi_env env, napi_callback_info info) {
  napi_value argv[MAX_ARGS];
  if (!get_args(env, info, 2, argv)) return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[1], &t);
  if (t != napi_function) return throw_type(env, "cb must be a function");
  syncfs_job *j = calloc(1, sizeof *j);
  if (j == NULL) return throw_errno(env, ENOMEM, "syncfsAsync", NULL);
  j->path = get_bytes(env, argv[0], "path", 0);
  if (j->path == NULL) {
    free(j);
    return NULL;
  }
  if (!queue_work(env, "strata.syncfsAsync", argv[1], &j->cb, &j->work, syncfs_execute, syncfs_complete, j)) {
    free(j->path);
    free(j);
  }
  return NULL;
}

napi_value aead_register(napi_env env, napi_value exports); /* strata_aead.c */
napi_value watch_register(napi_env env, napi_value exports); /* strata_watch.c */

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"llistxattr", NULL, js_llistxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lgetxattr", NULL, js_lgetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lsetxattr", NULL, js_lsetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lremovexattr", NULL, js_lremovexattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mknod", NULL, js_mknod, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lutimens", NULL, js_lutimens, NULL, NULL, NULL, napi_enumerable, NULL},
      {"futimensClose", NULL, js_futimens_close, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekData", NULL, js_seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekHole", NULL, js_seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
      {"ioprioIdle", NULL, js_ioprio_idle, NULL, NULL, NULL, napi_enumerable, NULL},
      {"ioprioGet", NULL, js_ioprio_get, NULL, NULL, NULL, napi_enumerable, NULL},
      {"ioprioSet", NULL, js_ioprio_set, NULL, NULL, NULL, napi_enumerable, NULL},
      {"schedPolicy", NULL, js_sched_policy, NULL, NULL, NULL, napi_enumerable, NULL},
      {"schedSetAll", NULL, js_sched_set_all, NULL, NULL, NULL, napi_enumerable, NULL},
      {"fadviseDontneed", NULL, js_fadvise_dontneed, NULL, NULL, NULL, napi_enumerable, NULL},
      {"fadviseWillneed", NULL, js_fadvise_willneed, NULL, NULL, NULL, napi_enumerable, NULL},
      {"peerCred", NULL, js_peer_cred, NULL, NULL, NULL, napi_enumerable, NULL},
      {"syncfs", NULL, js_syncfs, NULL, NULL, NULL, napi_enumerable, NULL},
      {"createFiles", NULL, js_create_files, NULL, NULL, NULL, napi_enumerable, NULL},
      {"syncfsAsync", NULL, js_syncfs_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"scanDir", NULL, js_scandir, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mallocTune", NULL, js_malloc_tune, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mallocTrim", NULL, js_malloc_trim, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  if (watch_register(env, exports) == NULL) return NULL;
  return aead_register(env, exports);
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
