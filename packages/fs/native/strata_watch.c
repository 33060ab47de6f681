/*
 * A directory watcher on inotify whose memory grows with the number of
 * watched directories, not files (the agent's change watcher,
 * packages/agent/src/watcher.ts, decides what to watch; this file does the
 * kernel side and keeps the tree).
 *
 * One inotify instance per watcher and one watch per directory. The tree of
 * watched directories is kept compactly: per directory one node (its watch
 * descriptor, parent, first child and siblings, generation, dirty flag) and
 * its name's bytes (any bytes but '/' and NUL; a root's name is its full
 * path). Full paths are built only when asked for (a dirty directory, a new
 * directory to decide about). Nodes live in one array indexed through an
 * open-addressing hash table keyed by watch descriptor.
 *
 * Events are read without blocking the event loop: the inotify descriptor is
 * non-blocking and polled by libuv (uv_poll_t, no thread); each wake-up reads
 * at most READS_PER_WAKE x READ_BUF bytes. The reading handles what needs no
 * decision: the directory an event names is marked dirty, a removed watch's
 * node is dropped, a directory moved within the watched area is re-parented
 * (its watches follow it), one moved away has its subtree's watches removed.
 * What needs a decision goes to JavaScript in one callback per wake-up:
 * directories created or moved in (parent wd + name, packed, at most
 * NEWDIR_MAX_BYTES; past that a flag says some were dropped), a queue
 * overflow (IN_Q_OVERFLOW), an unmount, a root's own change or removal.
 *
 * Functions (the first argument is the handle watchOpen returned):
 *   watchOpen(cb, maxDirs, maxWatches) -> handle. cb(flags, newDirs|null).
 *     maxWatches > 0 is a test hook: more watches fail with ENOSPC, as the
 *     kernel's fs.inotify.max_user_watches would.
 *   watchAdd(h, parentWd, name, dirty) -> { wd, subdirs } (parentWd 0: name
 *     is a root's full path). Adds the watch (marking the directory dirty
 *     when `dirty` and it was not watched there before), then lists it:
 *     subdirs packs its subdirectories' names (u16 length, bytes). Throws
 *     errno errors (ENOENT, ENOTDIR, ENOSPC...).
 *   watchRemove(h, parentWd, name) -> nodes removed (their subtrees' watches).
 *   watchPath(h, wd) -> Buffer | null.
 *   watchTake(h, reset) -> Buffer[] of dirty directories' paths, or null when
 *     more than maxDirs were dirty.
 *   watchSweep(h, begin): begin: start a generation; else remove every node
 *     not added or confirmed (watchAdd) since the generation began.
 *   watchStats(h) -> { watches, bytes }.
 *   watchClose(h).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#define WATCH_MASK                                                                                 \
  (IN_CREATE | IN_DELETE | IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF |  \
   IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
#define READ_BUF (64 * 1024)
#define READS_PER_WAKE 16
#define NEWDIR_MAX_BYTES (4 << 20)

/* Flags given to the callback. */
#define F_OVERFLOW 1     /* the kernel's queue overflowed: events were lost */
#define F_NEWDIRS_LOST 2 /* more new directories than NEWDIR_MAX_BYTES at once */
#define F_ROOT_CHANGED 4 /* a root's own metadata changed, or it went away */
#define F_ROOT_GONE 8    /* a root's watch was removed (deleted, unmounted) */
#define F_UNMOUNTED 16   /* a filesystem under a watched directory was unmounted */

typedef struct {
  int32_t wd; /* 0: a free slot (then `next` links the free list) */
  int32_t parent, child, next, prev;
  uint32_t gen;
  uint16_t len;
  uint8_t dirty, root;
  char *name;
} node_t;

struct buf {
  char *p;
  size_t len, cap;
};

typedef struct {
  int fd;
  int closed;
  int in_cb; /* inside napi_make_callback: the async context must outlive it */
  int refs;  /* the JS external and the uv handle */
  napi_env env;
  napi_ref cb;
  napi_async_context actx;
  uv_poll_t poll;
  node_t *nodes;
  int32_t n_nodes, cap_nodes, free_head, live;
  int32_t *table; /* node indices, -1 empty */
  uint32_t tcap;
  int32_t *dirty;
  int32_t n_dirty, cap_dirty, max_dirs;
  int too_many;
  int64_t max_watches;
  uint32_t gen;
  size_t name_bytes;
  int32_t pending; /* a directory moved from a watched directory, waiting for its IN_MOVED_TO */
  uint32_t pending_cookie;
  uint32_t flags;
  struct buf newdirs;
  char *rbuf;
} watcher_t;

static int buf_put(struct buf *b, const void *src, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + n) cap *= 2;
    char *q = realloc(b->p, cap);
    if (q == NULL) return 0;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, src, n);
  b->len += n;
  return 1;
}

/* ---- the wd -> node table ------------------------------------------------ */

static uint32_t hash_wd(int32_t wd) { return (uint32_t)wd * 2654435761u; }

static int32_t lookup(watcher_t *w, int32_t wd) {
  if (w->tcap == 0 || wd <= 0) return -1;
  uint32_t mask = w->tcap - 1;
  for (uint32_t i = hash_wd(wd) & mask;; i = (i + 1) & mask) {
    int32_t n = w->table[i];
    if (n < 0) return -1;
    if (w->nodes[n].wd == wd) return n;
  }
}

static void table_insert(watcher_t *w, int32_t idx) {
  uint32_t mask = w->tcap - 1;
  uint32_t i = hash_wd(w->nodes[idx].wd) & mask;
  while (w->table[i] >= 0) i = (i + 1) & mask;
  w->table[i] = idx;
}

static int table_grow(watcher_t *w) {
  if ((uint64_t)(w->live + 1) * 2 <= w->tcap) return 1;
  uint32_t cap = w->tcap ? w->tcap * 2 : 1024;
  int32_t *t = malloc(sizeof(int32_t) * cap);
  if (t == NULL) return 0;
  for (uint32_t i = 0; i < cap; i++) t[i] = -1;
  int32_t *old = w->table;
  uint32_t oldcap = w->tcap;
  w->table = t;
  w->tcap = cap;
  for (uint32_t i = 0; i < oldcap; i++)
    if (old[i] >= 0) table_insert(w, old[i]);
  free(old);
  return 1;
}

/* Linear probing's deletion: shift back the entries that probed past the hole. */
static void table_delete(watcher_t *w, int32_t wd) {
  uint32_t mask = w->tcap - 1;
  uint32_t i = hash_wd(wd) & mask;
  while (w->table[i] >= 0 && w->nodes[w->table[i]].wd != wd) i = (i + 1) & mask;
  if (w->table[i] < 0) return;
  uint32_t hole = i;
  for (uint32_t j = (i + 1) & mask; w->table[j] >= 0; j = (j + 1) & mask) {
    uint32_t home = hash_wd(w->nodes[w->table[j]].wd) & mask;
    /* Move j into the hole unless its home lies cyclically in (hole, j]. */
    int in_range = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (!in_range) {
      w->table[hole] = w->table[j];
      hole = j;
    }
  }
  w->table[hole] = -1;
}

/* ---- nodes ---------------------------------------------------------------- */

static void unlink_node(watcher_t *w, int32_t idx) {
  node_t *n = &w->nodes[idx];
  if (n->prev >= 0)
    w->nodes[n->prev].next = n->next;
  else if (n->parent >= 0)
    w->nodes[n->parent].child = n->next;
  if (n->next >= 0) w->nodes[n->next].prev = n->prev;
  n->parent = n->next = n->prev = -1;
}

static void link_node(watcher_t *w, int32_t idx, int32_t parent) {
  node_t *n = &w->nodes[idx];
  n->parent = parent;
  n->prev = -1;
  n->next = parent >= 0 ? w->nodes[parent].child : -1;
  if (n->next >= 0) w->nodes[n->next].prev = idx;
  if (parent >= 0) w->nodes[parent].child = idx;
}

static int set_name(watcher_t *w, int32_t idx, const char *name, size_t len) {
  char *s = malloc(len ? len : 1);
  if (s == NULL) return 0;
  memcpy(s, name, len);
  node_t *n = &w->nodes[idx];
  w->name_bytes -= n->len;
  free(n->name);
  n->name = s;
  n->len = (uint16_t)len;
  w->name_bytes += len;
  return 1;
}

static int32_t new_node(watcher_t *w, int32_t wd) {
  if (!table_grow(w)) return -1;
  int32_t idx;
  if (w->free_head >= 0) {
    idx = w->free_head;
    w->free_head = w->nodes[idx].next;
  } else {
    if (w->n_nodes == w->cap_nodes) {
      int32_t cap = w->cap_nodes ? w->cap_nodes * 2 : 256;
      node_t *q = realloc(w->nodes, sizeof(node_t) * (size_t)cap);
      if (q == NULL) return -1;
      w->nodes = q;
      w->cap_nodes = cap;
    }
    idx = w->n_nodes++;
  }
  node_t *n = &w->nodes[idx];
  memset(n, 0, sizeof *n);
  n->wd = wd;
  n->parent = n->child = n->next = n->prev = -1;
  n->gen = w->gen;
  w->live++;
  table_insert(w, idx);
  return idx;
}

static void free_node(watcher_t *w, int32_t idx, int rm_watch) {
  node_t *n = &w->nodes[idx];
  if (rm_watch) inotify_rm_watch(w->fd, n->wd); /* its IN_IGNORED then names no node */
  if (w->pending == idx) w->pending = -1;
  unlink_node(w, idx);
  table_delete(w, n->wd);
  w->name_bytes -= n->len;
  free(n->name);
  memset(n, 0, sizeof *n);
  n->next = w->free_head;
  w->free_head = idx;
  w->live--;
}

/* Drop a node and everything below it, leaves first. */
static int32_t remove_subtree(watcher_t *w, int32_t idx, int rm_watch) {
  int32_t removed = 0, cur = idx;
  for (;;) {
    while (w->nodes[cur].child >= 0) cur = w->nodes[cur].child;
    int32_t parent = w->nodes[cur].parent;
    int last = cur == idx;
    free_node(w, cur, rm_watch);
    removed++;
    if (last) break;
    cur = parent;
  }
  return removed;
}

static int32_t find_child(watcher_t *w, int32_t parent, const char *name, size_t len) {
  for (int32_t c = w->nodes[parent].child; c >= 0; c = w->nodes[c].next)
    if (w->nodes[c].len == len && memcmp(w->nodes[c].name, name, len) == 0) return c;
  return -1;
}

/* A node's full path into b (not NUL-terminated). */
static int node_path(watcher_t *w, int32_t idx, struct buf *b) {
  int32_t depth = 0;
  for (int32_t c = idx; c >= 0; c = w->nodes[c].parent) depth++;
  int32_t stack_small[64];
  int32_t *stack = depth <= 64 ? stack_small : malloc(sizeof(int32_t) * (size_t)depth);
  if (stack == NULL) return 0;
  int32_t k = 0;
  for (int32_t c = idx; c >= 0; c = w->nodes[c].parent) stack[k++] = c;
  int ok = 1;
  while (ok && k > 0) {
    node_t *n = &w->nodes[stack[--k]];
    if (b->len > 0 && b->p[b->len - 1] != '/') ok = buf_put(b, "/", 1);
    ok = ok && buf_put(b, n->name, n->len);
  }
  if (stack != stack_small) free(stack);
  return ok;
}

static void mark_dirty(watcher_t *w, int32_t idx) {
  node_t *n = &w->nodes[idx];
  if (n->dirty || w->too_many) return;
  if (w->n_dirty >= w->max_dirs) {
    w->too_many = 1;
    return;
  }
  if (w->n_dirty == w->cap_dirty) {
    int32_t cap = w->cap_dirty ? w->cap_dirty * 2 : 64;
    int32_t *q = realloc(w->dirty, sizeof(int32_t) * (size_t)cap);
    if (q == NULL) {
      w->too_many = 1; /* conservative: the set becomes "everything" */
      return;
    }
    w->dirty = q;
    w->cap_dirty = cap;
  }
  n->dirty = 1;
  w->dirty[w->n_dirty++] = n->wd;
}

/* ---- events --------------------------------------------------------------- */

static void queue_newdir(watcher_t *w, int32_t parent_wd, const char *name, size_t len) {
  uint16_t l = (uint16_t)len;
  if (w->newdirs.len + 6 + len > NEWDIR_MAX_BYTES || !buf_put(&w->newdirs, &parent_wd, 4) ||
      !buf_put(&w->newdirs, &l, 2) || !buf_put(&w->newdirs, name, len))
    w->flags |= F_NEWDIRS_LOST;
}

/* A directory moved from a watched one whose IN_MOVED_TO did not follow: it left the area. */
static void resolve_pending(watcher_t *w) {
  if (w->pending < 0) return;
  int32_t p = w->pending;
  w->pending = -1;
  remove_subtree(w, p, 1);
}

static void handle_event(watcher_t *w, const struct inotify_event *ev) {
  uint32_t m = ev->mask;
  if (w->pending >= 0 && !((m & IN_MOVED_TO) && ev->cookie == w->pending_cookie)) resolve_pending(w);
  if (m & IN_Q_OVERFLOW) {
    w->flags |= F_OVERFLOW;
    return;
  }
  int32_t idx = lookup(w, ev->wd);
  if (idx < 0) return;
  if (m & IN_UNMOUNT) w->flags |= F_UNMOUNTED; /* what the mount hid is there now, never watched */
  if (m & IN_IGNORED) {
    if (w->nodes[idx].root) w->flags |= F_ROOT_GONE | F_ROOT_CHANGED;
    remove_subtree(w, idx, 1);
    return;
  }
  if (ev->len == 0 || ev->name[0] == 0) {
    /* The directory itself: its parent's watch reported it with its name, except for a root. */
    if (w->nodes[idx].root && (m & (IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF))) w->flags |= F_ROOT_CHANGED;
    return;
  }
  mark_dirty(w, idx);
  if (!(m & IN_ISDIR)) return;
  size_t len = strnlen(ev->name, ev->len);
  if (m & IN_MOVED_FROM) {
    int32_t c = find_child(w, idx, ev->name, len);
    if (c >= 0) {
      w->pending = c;
      w->pending_cookie = ev->cookie;
    }
    return;
  }
  if ((m & IN_MOVED_TO) && w->pending >= 0) {
    /* Moved within the area: its watches follow it; only its place in the tree changes. */
    int32_t c = w->pending;
    w->pending = -1;
    if (set_name(w, c, ev->name, len)) {
      unlink_node(w, c);
      link_node(w, c, idx);
    } else {
      remove_subtree(w, c, 1);
    }
  }
  /* Created or moved in: JavaScript decides whether to watch it (and watches what is below). */
  if (m & (IN_CREATE | IN_MOVED_TO)) queue_newdir(w, ev->wd, ev->name, len);
}

static void call_js(watcher_t *w) {
  napi_env env = w->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv, argv[2];
  uint32_t flags = w->flags;
  w->flags = 0;
  napi_create_uint32(env, flags, &argv[0]);
  if (w->newdirs.len > 0)
    napi_create_buffer_copy(env, w->newdirs.len, w->newdirs.p, NULL, &argv[1]);
  else
    napi_get_null(env, &argv[1]);
  w->newdirs.len = 0;
  if (w->newdirs.cap > 65536) { /* do not keep a burst's buffer */
    free(w->newdirs.p);
    w->newdirs.p = NULL;
    w->newdirs.cap = 0;
  }
  if (napi_get_reference_value(env, w->cb, &cb) == napi_ok && cb != NULL) {
    napi_get_global(env, &recv); /* make_callback wants an object as `this` */
    w->in_cb = 1;
    napi_make_callback(env, w->actx, recv, cb, 2, argv, NULL);
    w->in_cb = 0;
    if (w->closed) napi_async_destroy(env, w->actx); /* closed from the callback (or its microtasks) */
  }
  napi_close_handle_scope(env, scope);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  watcher_t *w = h->data;
  if (w->closed) return;
  int drained = 0;
  for (int r = 0; r < READS_PER_WAKE && !w->closed; r++) {
    ssize_t n = read(w->fd, w->rbuf, READ_BUF);
    if (n < 0) {
      if (errno == EINTR) continue;
      drained = 1; /* EAGAIN */
      break;
    }
    if (n == 0) {
      drained = 1;
      break;
    }
    for (char *p = w->rbuf; p < w->rbuf + n;) {
      const struct inotify_event *ev = (const struct inotify_event *)p;
      handle_event(w, ev);
      p += sizeof(struct inotify_event) + ev->len;
    }
  }
  /* Nothing more queued: a move's two halves are queued together, so a lone IN_MOVED_FROM left. */
  if (drained) resolve_pending(w);
  if (w->flags || w->newdirs.len) call_js(w);
}

/* ---- JavaScript ----------------------------------------------------------- */

static napi_value throw_errno_w(napi_env env, int err, const char *syscall_name, const char *path) {
  char msg[512];
  const char *code = uv_err_name(-err);
  if (path)
    snprintf(msg, sizeof msg, "%s: %s, %s '%.400s'", code, strerror(err), syscall_name, path);
  else
    snprintf(msg, sizeof msg, "%s: %s, %s", code, strerror(err), syscall_name);
  napi_value js_msg, js_code, error, js_errno, js_sys;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &js_msg);
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &js_code);
  napi_create_error(env, js_code, js_msg, &error);
  napi_create_int32(env, -err, &js_errno);
  napi_set_named_property(env, error, "errno", js_errno);
  napi_set_named_property(env, error, "code", js_code);
  napi_create_string_utf8(env, syscall_name, NAPI_AUTO_LENGTH, &js_sys);
  napi_set_named_property(env, error, "syscall", js_sys);
  napi_throw(env, error);
  return NULL;
}

static void release(watcher_t *w) {
  if (--w->refs > 0) return;
  free(w);
}

static void on_close(uv_handle_t *h) {
  watcher_t *w = h->data;
  close(w->fd);
  release(w);
}

static void do_close(watcher_t *w) {
  if (w->closed) return;
  w->closed = 1;
  uv_poll_stop(&w->poll);
  uv_close((uv_handle_t *)&w->poll, on_close);
  for (int32_t i = 0; i < w->n_nodes; i++) free(w->nodes[i].name);
  free(w->nodes);
  free(w->table);
  free(w->dirty);
  free(w->newdirs.p);
  free(w->rbuf);
  w->nodes = NULL;
  w->table = NULL;
  w->dirty = NULL;
  w->newdirs.p = NULL;
  w->rbuf = NULL;
  w->n_nodes = w->cap_nodes = w->live = w->n_dirty = 0;
  w->tcap = 0;
  if (w->cb) napi_delete_reference(w->env, w->cb);
  w->cb = NULL;
  if (!w->in_cb) napi_async_destroy(w->env, w->actx); /* else call_js does, after the callback */
}

static void finalize(napi_env env, void *data, void *hint) {
  watcher_t *w = data;
  do_close(w);
  release(w);
}

static watcher_t *get_w(napi_env env, napi_value v) {
  void *p = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external || napi_get_value_external(env, v, &p) != napi_ok ||
      p == NULL) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "not a watcher handle");
    return NULL;
  }
  watcher_t *w = p;
  if (w->closed) {
    napi_throw_error(env, "ERR_STRATA_WATCH_CLOSED", "the watcher is closed");
    return NULL;
  }
  return w;
}

static napi_value js_open(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3) {
    napi_throw_type_error(env, NULL, "watchOpen(cb, maxDirs, maxWatches)");
    return NULL;
  }
  napi_valuetype t;
  napi_typeof(env, argv[0], &t);
  int32_t max_dirs;
  int64_t max_watches;
  if (t != napi_function || napi_get_value_int32(env, argv[1], &max_dirs) != napi_ok ||
      napi_get_value_int64(env, argv[2], &max_watches) != napi_ok) {
    napi_throw_type_error(env, NULL, "watchOpen(cb, maxDirs, maxWatches)");
    return NULL;
  }
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) return throw_errno_w(env, errno, "inotify_init1", NULL);
  watcher_t *w = calloc(1, sizeof *w);
  char *rbuf = malloc(READ_BUF);
  uv_loop_t *loop = NULL;
  if (w == NULL || rbuf == NULL || napi_get_uv_event_loop(env, &loop) != napi_ok) {
    free(w);
    free(rbuf);
    close(fd);
    return throw_errno_w(env, ENOMEM, "watchOpen", NULL);
  }
  w->fd = fd;
  w->env = env;
  w->rbuf = rbuf;
  w->free_head = -1;
  w->pending = -1;
  w->max_dirs = max_dirs > 0 ? max_dirs : 1;
  w->max_watches = max_watches;
  w->refs = 1;
  napi_value name;
  napi_create_string_utf8(env, "StrataWatch", NAPI_AUTO_LENGTH, &name);
  if (napi_create_reference(env, argv[0], 1, &w->cb) != napi_ok ||
      napi_async_init(env, NULL, name, &w->actx) != napi_ok || uv_poll_init(loop, &w->poll, fd) != 0) {
    close(fd);
    free(rbuf);
    free(w);
    napi_throw_error(env, NULL, "watchOpen failed");
    return NULL;
  }
  w->poll.data = w;
  w->refs = 2;
  uv_poll_start(&w->poll, UV_READABLE, on_poll);
  /* The watcher alone does not keep the process alive. */
  uv_unref((uv_handle_t *)&w->poll);
  napi_value out;
  if (napi_create_external(env, w, finalize, NULL, &out) != napi_ok) {
    do_close(w);
    release(w);
    return NULL;
  }
  return out;
}

static char *arg_bytes(napi_env env, napi_value v, size_t *len) {
  bool is_buf = false;
  napi_is_buffer(env, v, &is_buf);
  if (!is_buf) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "name must be a Buffer");
    return NULL;
  }
  void *data;
  napi_get_buffer_info(env, v, &data, len);
  if (*len == 0 || *len > 65535 || memchr(data, 0, *len) != NULL) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "name must be 1-65535 bytes without NUL");
    return NULL;
  }
  return data;
}

static napi_value js_add(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4) {
    napi_throw_type_error(env, NULL, "watchAdd(h, parentWd, name, dirty)");
    return NULL;
  }
  watcher_t *w = get_w(env, argv[0]);
  if (w == NULL) return NULL;
  int32_t parent_wd;
  bool dirty;
  size_t len;
  if (napi_get_value_int32(env, argv[1], &parent_wd) != napi_ok || napi_get_value_bool(env, argv[3], &dirty) != napi_ok) {
    napi_throw_type_error(env, NULL, "watchAdd(h, parentWd, name, dirty)");
    return NULL;
  }
  const char *name = arg_bytes(env, argv[2], &len);
  if (name == NULL) return NULL;
  int32_t parent = -1;
  if (parent_wd != 0) {
    parent = lookup(w, parent_wd);
    if (parent < 0) return throw_errno_w(env, ENOENT, "watchAdd (the parent is not watched)", NULL);
    if (memchr(name, '/', len) != NULL) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "a name must not contain '/'");
      return NULL;
    }
  } else if (name[0] != '/') {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "a root must be an absolute path");
    return NULL;
  }
  struct buf path = {NULL, 0, 0};
  int ok = parent < 0 || node_path(w, parent, &path);
  if (ok && parent >= 0 && path.p[path.len - 1] != '/') ok = buf_put(&path, "/", 1);
  ok = ok && buf_put(&path, name, len) && buf_put(&path, "", 1);
  if (!ok) {
    free(path.p);
    return throw_errno_w(env, ENOMEM, "watchAdd", NULL);
  }
  int wd = inotify_add_watch(w->fd, path.p, WATCH_MASK);
  if (wd < 0) {
    napi_value r = throw_errno_w(env, errno, "inotify_add_watch", path.p);
    free(path.p);
    return r;
  }
  int32_t idx = lookup(w, wd);
  if (idx < 0 && w->max_watches > 0 && w->live >= w->max_watches) {
    inotify_rm_watch(w->fd, wd);
    napi_value r = throw_errno_w(env, ENOSPC, "inotify_add_watch", path.p);
    free(path.p);
    return r;
  }
  int fresh = idx < 0;
  if (idx < 0) {
    idx = new_node(w, wd);
    if (idx < 0 || !set_name(w, idx, name, len)) {
      if (idx >= 0) free_node(w, idx, 1);
      else inotify_rm_watch(w->fd, wd);
      free(path.p);
      return throw_errno_w(env, ENOMEM, "watchAdd", NULL);
    }
    w->nodes[idx].root = parent < 0;
    link_node(w, idx, parent);
  } else {
    node_t *n = &w->nodes[idx];
    if (n->parent != parent || n->len != len || memcmp(n->name, name, len) != 0) {
      /* The same directory found at a new place (moved while events were lost): follow it. */
      int32_t up = parent;
      while (up >= 0 && up != idx) up = w->nodes[up].parent;
      if (up != idx && set_name(w, idx, name, len)) {
        unlink_node(w, idx);
        link_node(w, idx, parent);
        w->nodes[idx].root = parent < 0;
        fresh = 1;
      }
    }
    n->gen = w->gen;
  }
  /* Dirty: what happened in it before its watch existed was not reported. A directory
     whose watch already existed here (moved within the area) missed nothing. */
  if (dirty && fresh) mark_dirty(w, idx);

  /* Its subdirectories, listed after the watch exists: what appears from now on is an event. */
  struct buf subs = {NULL, 0, 0};
  int dfd = open(path.p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
  if (d == NULL && dfd >= 0) close(dfd);
  free(path.p);
  ok = 1;
  if (d != NULL) {
    struct dirent *de;
    while (ok && (de = readdir(d)) != NULL) {
      const char *n = de->d_name;
      if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0))) continue;
      int is_dir = de->d_type == DT_DIR;
      if (de->d_type == DT_UNKNOWN) {
        struct stat st;
        is_dir = fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
      }
      if (!is_dir) continue;
      uint16_t nl = (uint16_t)strlen(n);
      ok = buf_put(&subs, &nl, 2) && buf_put(&subs, n, nl);
    }
    closedir(d);
  }
  napi_value out, v;
  napi_create_object(env, &out);
  napi_create_int32(env, wd, &v);
  napi_set_named_property(env, out, "wd", v);
  if (d != NULL && ok)
    napi_create_buffer_copy(env, subs.len, subs.len ? subs.p : "", NULL, &v);
  else
    napi_get_null(env, &v); /* gone already, or not listable: the caller decides */
  napi_set_named_property(env, out, "subdirs", v);
  free(subs.p);
  return out;
}

static napi_value js_remove(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3) return NULL;
  watcher_t *w = get_w(env, argv[0]);
  if (w == NULL) return NULL;
  int32_t parent_wd;
  size_t len;
  napi_get_value_int32(env, argv[1], &parent_wd);
  const char *name = arg_bytes(env, argv[2], &len);
  if (name == NULL) return NULL;
  int32_t parent = lookup(w, parent_wd), removed = 0;
  for (int32_t c; parent >= 0 && (c = find_child(w, parent, name, len)) >= 0;) removed += remove_subtree(w, c, 1);
  napi_value out;
  napi_create_int32(env, removed, &out);
  return out;
}

static napi_value js_path(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  watcher_t *w = get_w(env, argv[0]);
  if (w == NULL) return NULL;
  int32_t wd = 0;
  napi_get_value_int32(env, argv[1], &wd);
  int32_t idx = lookup(w, wd);
  napi_value out;
  if (idx < 0) {
    napi_get_null(env, &out);
    return out;
  }
  struct buf b = {NULL, 0, 0};
  if (!node_path(w, idx, &b)) {
    free(b.p);
    return throw_errno_w(env, ENOMEM, "watchPath", NULL);
  }
  napi_create_buffer_copy(env, b.len, b.len ? b.p : "", NULL, &out);
  free(b.p);
  return out;
}

static napi_value js_take(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  watcher_t *w = get_w(env, argv[0]);
  if (w == NULL) return NULL;
  bool reset = false;
  napi_get_value_bool(env, argv[1], &reset);
  napi_value out;
  if (w->too_many) {
    napi_get_null(env, &out);
  } else {
    napi_create_array(env, &out);
    uint32_t k = 0;
    struct buf b = {NULL, 0, 0};
    for (int32_t i = 0; i < w->n_dirty; i++) {
      int32_t idx = lookup(w, w->dirty[i]);
      if (idx < 0 || !w->nodes[idx].dirty) continue; /* removed since */
      b.len = 0;
      if (!node_path(w, idx, &b)) {
        free(b.p);
        return throw_errno_w(env, ENOMEM, "watchTake", NULL);
      }
      napi_value v;
      napi_create_buffer_copy(env, b.len, b.p, NULL, &v);
      napi_set_element(env, out, k++, v);
    }
    free(b.p);
  }
  if (reset) {
    for (int32_t i = 0; i < w->n_dirty; i++) {
      int32_t idx = lookup(w, w->dirty[i]);
      if (idx >= 0) w->nodes[idx].dirty = 0;
    }
    w->n_dirty = 0;
    w->too_many = 0;
    if (w->cap_dirty > 1024) {
      free(w->dirty);
      w->dirty = NULL;
      w->cap_dirty = 0;
    }
  }
  return out;
}

static napi_value js_sweep(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  watcher_t *w = get_w(env, argv[0]);
  if (w == NULL) return NULL;
  bool begin = false;
  napi_get_value_bool(env, argv[1], &begin);
  int32_t removed = 0;
  if (begin) {
    w->gen++;
  } else {
    for (int32_t i = 0; i < w->n_nodes; i++)
      if (w->nodes[i].wd != 0 && w->nodes[i].gen != w->gen) removed += remove_subtree(w, i, 1);
  }
  napi_value out;
  napi_create_int32(env, removed, &out);
  return out;
}

static napi_value js_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  watcher_t *w = get_w(env, argv[0]);
  if (w == NULL) return NULL;
  /* What this watcher holds: the node array, the table, names (each a malloc of its own), buffers. */
  double bytes = (double)w->cap_nodes * sizeof(node_t) + (double)w->tcap * sizeof(int32_t) +
                 (double)w->name_bytes + (double)w->live * 16 + (double)w->cap_dirty * sizeof(int32_t) +
                 (double)w->newdirs.cap + READ_BUF;
  napi_value out, v;
  napi_create_object(env, &out);
  napi_create_int32(env, w->live, &v);
  napi_set_named_property(env, out, "watches", v);
  napi_create_double(env, bytes, &v);
  napi_set_named_property(env, out, "bytes", v);
  return out;
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *p = NULL;
  if (argc < 1 || napi_get_value_external(env, argv[0], &p) != napi_ok || p == NULL) return NULL;
  do_close(p);
  return NULL;
}

napi_value watch_register(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"watchOpen", NULL, js_open, NULL, NULL, NULL, napi_enumerable, NULL},
      {"watchAdd", NULL, js_add, NULL, NULL, NULL, napi_enumerable, NULL},
      {"watchRemove", NULL, js_remove, NULL, NULL, NULL, napi_enumerable, NULL},
      {"watchPath", NULL, js_path, NULL, NULL, NULL, napi_enumerable, NULL},
      {"watchTake", NULL, js_take, NULL, NULL, NULL, napi_enumerable, NULL},
      {"watchSweep", NULL, js_sweep, NULL, NULL, NULL, napi_enumerable, NULL},
      {"watchStats", NULL, js_stats, NULL, NULL, NULL, napi_enumerable, NULL},
      {"watchClose", NULL, js_close, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
