/* The handle core (lhandle.h): the registry of this process's live
** handles, their lifetime across fork and messages, and the helpers every
** binding file shares (blocking calls, arena pressure, errors). */
#include "lhandle.h"
#include "proc.h"
#include "frame.h"
#include "ser.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define MAXKINDS 32

static pcr_hkind kinds[MAXKINDS];
static int nkinds;
static pcr_handle *live;

/* -- Kinds ------------------------------------------------------------ */

static int h_serialize(lua_State *L);
static int h_deserialize(lua_State *L);
static int h_gc(lua_State *L);
static int h_tostring(lua_State *L);
static int h_eq(lua_State *L);

int pcr__lua_class(lua_State *L, const char *name, const luaL_Reg *methods,
                   const luaL_Reg *more, const luaL_Reg *meta) {
  int fresh = luaL_newmetatable(L, name);
  lua_newtable(L);
  luaL_register(L, NULL, methods);
  if (more) luaL_register(L, NULL, more);
  lua_setfield(L, -2, "__index");
  luaL_register(L, NULL, meta);
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  return fresh;
}

int pcr__handle_register(lua_State *L, const pcr_hkind *k) {
  int id = -1;
  for (int i = 0; i < nkinds; i++)  /* a second Lua state of the process */
    if (!strcmp(kinds[i].name, k->name)) id = i;
  if (id < 0) {
    if (nkinds == MAXKINDS) luaL_error(L, "pcrun: too many handle kinds");
    id = nkinds++;
  }
  kinds[id] = *k;
  luaL_Reg meta[] = {
    {"__gc", h_gc}, {"__tostring", h_tostring}, {"__eq", h_eq},
    {"__serialize", k->serialize ? k->serialize : h_serialize},
    {"__deserialize", k->deserialize ? k->deserialize : h_deserialize},
    {NULL, NULL}
  };
  pcr__lua_class(L, k->name, k->methods, k->more, meta);
  lua_pushinteger(L, id);
  lua_setfield(L, -2, "__kind");
  lua_setfield(L, -2, k->name + 6);  /* core.Queue = mt, ... */
  return id;
}

const pcr_hkind *pcr__handle_kindinfo(int id) {
  return id >= 0 && id < nkinds ? &kinds[id] : NULL;
}

/* -- The registry ----------------------------------------------------- */

static void link_h(pcr_handle *h) {
  h->prev = NULL;
  h->next = live;
  if (live) live->prev = h;
  live = h;
}

static void unlink_h(pcr_handle *h) {
  if (h->prev) h->prev->next = h->next;
  else if (live == h) live = h->next;
  if (h->next) h->next->prev = h->prev;
  h->prev = h->next = NULL;
}

pcr_handle *pcr__handle_push(lua_State *L, pcr_obj *o, int id) {
  size_t size = sizeof(pcr_handle) + kinds[id].extra;
  pcr_handle *h = lua_newuserdata(L, size);
  memset(h, 0, size);
  h->o = o;
  h->magic = PCR_HANDLE_MAGIC;
  h->kind = id;
  h->owner = pcr__self();
  h->open = 1;
  h->lidx[0] = h->lidx[1] = -1;
  link_h(h);
  luaL_getmetatable(L, kinds[id].name);
  lua_setmetatable(L, -2);
  if (o) pcr__handle_own(h);
  return h;
}

void pcr__handle_own(pcr_handle *h) {
  uint64_t r[2];
  int n;
  if (!pcr__handle_owned(h)) return;
  if (kinds[h->kind].refs) {
    n = kinds[h->kind].refs(h, r);
  } else {
    n = h->o ? 1 : 0;
    if (n) r[0] = pcr__shm_offset(h->o) | PCR_REF_PLAIN;
  }
  for (int i = 0; i < n && i < 2; i++) pcr__ledger_add(r[i], &h->lidx[i]);
}

void pcr__handle_release(pcr_handle *h) {
  if (!h->open) return;
  h->open = 0;
  unlink_h(h);
  /* A kind with references of its own (a connection) unrecords each right
  ** before it drops it; then h->o's, unrecorded right before it goes. */
  if (kinds[h->kind].release) kinds[h->kind].release(h);
  pcr__ledger_remove(&h->lidx[1]);
  /* A forked copy holds no reference of its own: its parent took one for
  ** it and drops it when it reaps the copy. */
  if (h->o && h->lidx[0] >= 0) pcr__ledger_drop(&h->lidx[0]);
  else if (h->o && pcr__handle_owned(h)) pcr__obj_unref(h->o);
  pcr__ledger_remove(&h->lidx[0]);
  h->o = NULL;
}

/* The magic and size check is a metatable lookup's job done without one:
** this is on every call. */
int pcr__handle_kind(lua_State *L, int idx) {
  pcr_handle *h = lua_touserdata(L, idx);
  if (!h || lua_type(L, idx) != LUA_TUSERDATA ||
      lua_objlen(L, idx) < sizeof(pcr_handle) || h->magic != PCR_HANDLE_MAGIC
      || h->kind < 0 || h->kind >= nkinds ||
      lua_objlen(L, idx) != sizeof(pcr_handle) + kinds[h->kind].extra)
    return -1;
  return h->kind;
}

const char *pcr__handle_who(lua_State *L, int id, const char *m) {
  return lua_pushfstring(L, "%s:%s", kinds[id].name, m);
}

pcr_handle *pcr__handle_check(lua_State *L, int id, const char *m) {
  pcr_handle *h = lua_touserdata(L, 1);
  int got = pcr__handle_kind(L, 1);
  if (got != id && !(got >= 0 && kinds[got].base == id))
    luaL_error(L, "%s: call it as obj:%s(...) on a %s",
               pcr__handle_who(L, id, m), m, kinds[id].name);
  if (!h->open)
    luaL_error(L, "%s: the object was released", pcr__handle_who(L, id, m));
  return h;
}

int pcr__handle_nospace(lua_State *L, const char *who) {
  size_t mib = pcr__shm_size() >> 20;
  return luaL_error(L, "%s: out of shared arena space (the arena is %d MiB; "
                       "raise PCRUN_ARENA, e.g. PCRUN_ARENA=%dM)", who,
                    (int)mib, (int)(2 * mib));
}

double pcr__handle_timeout(lua_State *L, int idx, int id, const char *m) {
  if (lua_isnoneornil(L, idx)) return -1;
  if (lua_type(L, idx) != LUA_TNUMBER || lua_tonumber(L, idx) !=
                                             lua_tonumber(L, idx))
    luaL_error(L, "%s: timeout must be a number, got %s",
               pcr__handle_who(L, id, m), luaL_typename(L, idx));
  double t = lua_tonumber(L, idx);
  return t <= 0 ? 0 : pcr__now() + t;
}

/* -- Arena pressure --------------------------------------------------- */

int pcr__lua_collect(lua_State *L) {
  size_t before = pcr__shm_used();
  /* Twice: a handle anchored by a weak table of a collected object
  ** (pcrun.array's ObjRef) becomes garbage one cycle later. */
  lua_gc(L, LUA_GCCOLLECT, 0);
  lua_gc(L, LUA_GCCOLLECT, 0);
  return pcr__shm_used() < before;
}

/* -- Messages --------------------------------------------------------- */

/* References taken by the messages being encoded, as tagged offsets
** (frame.h): each frame's list of what it carries is the part of pend
** above its message's mark. Messages nest (a hook or a finalizer that
** sends while one is encoded), innermost last. A message whose C frame
** is gone (a raise unwound it) is rolled back by the next begin at the
** same depth or a shallower one, as the encoder finds its free levels. */
static uint64_t *pend;
static size_t npend, cappend;
#define MAXTX 256  /* above LuaJIT's C call limit */
static struct { size_t mark; uintptr_t frame; } txs[MAXTX];
static int ntx;

static void rollback(int sent) {
  size_t mark = ntx ? txs[--ntx].mark : 0;
  pcr__ledger_unpend_to(mark);  /* a transport that published did it already */
  if (!sent)
    for (size_t i = mark; i < npend; i++) pcr__frame_drop(pend[i]);
  npend = mark;
}

void pcr__msg_end(int sent) {
  rollback(sent);
}

void pcr__msg_begin(void) {
  uintptr_t here = (uintptr_t)__builtin_frame_address(0);
  while (ntx && txs[ntx - 1].frame <= here) rollback(0);
  while (ntx >= MAXTX) rollback(0);
  txs[ntx].mark = npend;
  txs[ntx++].frame = here;
}

size_t pcr__msg_refs(const uint64_t **out) {
  size_t mark = ntx ? txs[ntx - 1].mark : 0;
  *out = pend + mark;
  return npend - mark;
}

typedef struct encargs {
  const char *root, *p;
  size_t n;
  int flags;
} encargs;

static int encode_p(lua_State *L) {
  encargs *a = lua_touserdata(L, 1);
  a->p = pcr__ser_encode_as(L, 2, &a->n, a->root, a->flags);
  return 0;
}

const char *pcr__msg_encode(lua_State *L, int idx, size_t *n,
                            const char *root, int remote) {
  encargs a = { root, NULL, 0, PCR_SER_MSG | (remote ? PCR_SER_REMOTE : 0) };
  int depth = ntx;  /* this message's, begun by the caller */
  lua_pushcfunction(L, encode_p);
  lua_pushlightuserdata(L, &a);
  lua_pushvalue(L, idx);
  int e = lua_pcall(L, 2, 0, 0);
  while (ntx > depth) rollback(0);  /* hooks' messages a raise left open */
  if (e) {
    pcr__msg_end(0);       /* what the encode took before it raised */
    lua_error(L);
  }
  *n = a.n;
  return a.p;
}

typedef struct decargs {
  const char *p;
  size_t n;
} decargs;

static int decode_p(lua_State *L) {
  decargs *a = lua_touserdata(L, 1);
  lua_settop(L, 0);
  pcr__ser_decode(L, a->p, a->n, PCR_SER_TRUSTED | PCR_SER_MSG);
  return 1;
}

void pcr__msg_decode(lua_State *L, const char *p, size_t n, size_t mark) {
  decargs a = { p, n };
  lua_pushcfunction(L, decode_p);
  lua_pushlightuserdata(L, &a);
  int e = lua_pcall(L, 1, 1, 0);
  pcr__taken_end(mark);  /* what it did not adopt */
  if (e) lua_error(L);
}

int pcr__msg_ref(pcr_obj *o, unsigned role) {
  if (npend == cappend) {
    size_t cap = cappend ? 2 * cappend : 16;
    uint64_t *p = realloc(pend, sizeof *p * cap);
    if (!p) return -1;
    pend = p;
    cappend = cap;
  }
  if (pcr__ledger_pend(o, role, &pend[npend]) < 0) return -1;
  npend++;  /* ours until published */
  return 0;
}

/* -- Fork and exit ---------------------------------------------------- */

struct pcr_holds {
  int n, cap;
  struct { pcr_obj *o; pcr_hold_fn drop; } *v;
};

static pcr_holds *taking;  /* the list hold() fills */

static int addhold(pcr_obj *o, pcr_hold_fn drop) {
  pcr_holds *hs = taking;
  if (!o) return 0;
  if (hs->n == hs->cap) {
    int cap = hs->cap ? 2 * hs->cap : 16;
    void *p = realloc(hs->v, sizeof *hs->v * (size_t)cap);
    if (!p) return -1;
    hs->v = p;
    hs->cap = cap;
  }
  pcr__obj_ref(o);
  hs->v[hs->n].o = o;
  hs->v[hs->n].drop = drop;
  hs->n++;
  return 0;
}

static void unrefhold(pcr_obj *o) { pcr__obj_unref(o); }

void pcr__lhandle_drop(void *arg) {
  pcr_holds *hs = arg;
  if (!hs) return;
  for (int i = 0; i < hs->n; i++) hs->v[i].drop(hs->v[i].o);
  free(hs->v);
  free(hs);
}

void pcr__lhandle_forget(pcr_holds *hs) {
  free(hs->v);
  free(hs);
}

pcr_holds *pcr__lhandle_hold(void) {
  pcr_holds *hs = calloc(1, sizeof *hs);
  if (!hs) return NULL;
  taking = hs;
  for (pcr_handle *h = live; h; h = h->next) {
    const pcr_hkind *k = &kinds[h->kind];
    int e = k->hold ? k->hold(h, addhold) : addhold(h->o, unrefhold);
    if (e < 0) {
      taking = NULL;
      pcr__lhandle_drop(hs);
      return NULL;
    }
  }
  taking = NULL;
  return hs;
}

void pcr__lhandle_forked(void) {
  pcr__ledger_forked();
  for (pcr_handle *h = live; h; h = h->next) {
    h->lidx[0] = h->lidx[1] = -1;  /* the parent's entries */
    if (kinds[h->kind].forked) kinds[h->kind].forked(h);
  }
}

void pcr__lhandle_exit(void) {
  while (live) pcr__handle_release(live);
  pcr__lconn_exit();
  pcr__ledger_exit();
}

/* -- Blocking calls --------------------------------------------------- */

int pcr__lua_sigint(lua_State *L) {
  return pcr__interrupt_flag  /* sticky: see proc.h */
         || (lua_gethookmask(L) == (LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT)
             && lua_gethookcount(L) == 1);
}

void pcr__lua_interrupted(lua_State *L) {
  if (pcr__lua_sigint(L)) {
    lua_sethook(L, NULL, 0, 0);  /* the hook has done its work: we raise */
    lua_pushliteral(L, "interrupted");  /* exactly: no position */
    lua_error(L);
  }
}

double pcr__lua_sliced(double deadline) {
  double s = pcr__now() + PCR_SLICE;
  return deadline < 0 || deadline > s ? s : deadline;
}

int pcr__lua_blocking(lua_State *L, double deadline, int quick,
                      pcr_waitop op, void *ctx) {
  for (int first = quick;; first = 0) {
    double d = first ? 0 : pcr__lua_sliced(deadline);
    int e = op(ctx, d, first);
    if (first && e == -ETIMEDOUT && deadline != 0) continue;
    if (e == -EINTR || (e == -ETIMEDOUT && d != deadline)) {
      pcr__lua_interrupted(L);
      continue;
    }
    return e;
  }
}

/* -- Crossing processes ----------------------------------------------- */

/* The wire form: offset and kind; in a message the reference travels
** with it. */
typedef struct wireobj {
  uint64_t off;
  int32_t kind;
  uint32_t type;
} wireobj;

static int h_serialize(lua_State *L) {
  pcr_handle *h = lua_touserdata(L, 1);
  int k = pcr__handle_kind(L, 1);
  if (k < 0 || !h->open || !h->o)
    return luaL_error(L, "cannot send a released object");
  wireobj w = { pcr__shm_offset(h->o), k, h->o->type };
  if ((pcr__ser_hookflags(L, 2) & PCR_SER_MSG) &&
      pcr__msg_ref(h->o, PCR_REF_PLAIN) < 0)  /* the receiver adopts it */
    return luaL_error(L, "out of memory");
  lua_pushlstring(L, (const char *)&w, sizeof w);
  return 1;
}

static int h_deserialize(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  wireobj w;
  if (n != sizeof w) return luaL_error(L, "bad pcrun object encoding");
  memcpy(&w, s, sizeof w);
  pcr_obj *o = pcr__shm_at(w.off, sizeof(pcr_obj));
  int how = pcr__ser_hookflags(L, 2), msg = how & PCR_SER_MSG;
  if (!how)
    return luaL_error(L, "pcrun.decode: a shared object in untrusted input "
                         "(decode with { trusted = true })");
  if (!o || o->magic != PCR_OBJ_MAGIC || o->type != w.type || w.kind < 0 ||
      w.kind >= nkinds)
    return luaL_error(L, "pcrun: a shared object in a message no longer "
                         "exists");
  pcr_handle *h = pcr__handle_push(L, NULL, w.kind);
  h->o = o;
  /* In a message, the handle adopts the message's reference and its
  ** ledger entry; else it takes its own. */
  if (!msg)
    pcr__ledger_take(o, PCR_REF_PLAIN, &h->lidx[0]);
  else if (pcr__taken_adopt(w.off | PCR_REF_PLAIN, &h->lidx[0]) < 0)
    pcr__handle_own(h);  /* a frame that does not list it: as before */
  return 1;
}

static int h_gc(lua_State *L) {
  if (pcr__handle_kind(L, 1) >= 0) pcr__handle_release(lua_touserdata(L, 1));
  return 0;
}

static int h_tostring(lua_State *L) {
  pcr_handle *h = lua_touserdata(L, 1);
  int k = pcr__handle_kind(L, 1);
  lua_pushfstring(L, "%s: %p", k >= 0 ? kinds[k].name : "pcrun.object",
                  h ? (void *)h->o : NULL);
  return 1;
}

static int h_eq(lua_State *L) {
  pcr_handle *a = lua_touserdata(L, 1), *b = lua_touserdata(L, 2);
  lua_pushboolean(L, a && b && a->o && a->o == b->o);
  return 1;
}

/* -- Select over queues and events ------------------------------------ */

/* The kind's ready state of the handle at i, or -1 if it has none. */
static int readyat(lua_State *L, int i) {
  pcr_handle *h = lua_touserdata(L, i);
  int k = pcr__handle_kind(L, i);
  if (k < 0 || !h->open || !kinds[k].ready) return -1;
  return kinds[k].ready(h);
}

/* ready(obj) -> whether a wait on it would not block;
** wait_many(objs, timeout) sleeps until one may be. */
static int l_wait_many(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)lua_objlen(L, 1);
  double deadline = lua_isnoneornil(L, 2) ? -1 : luaL_checknumber(L, 2);
  luaL_argcheck(L, n >= 1 && n <= 128, 1, "1 to 128 queues and events");
  pcr_waitq *qs[128];
  pcr_wqtok ts[128];
  int r = 0;
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    int ready = readyat(L, -1);
    if (ready < 0) {
      for (int j = 0; j < i; j++) pcr__wq_cancel(qs[j], &ts[j]);
      return luaL_error(L, "pcrun.select: item %d is not a queue or event",
                        i + 1);
    }
    pcr_handle *h = lua_touserdata(L, -1);
    qs[i] = kinds[h->kind].waitq(h);
    pcr__wq_prepare(qs[i], &ts[i]);
    r |= ready;
    lua_pop(L, 1);
  }
  if (r) {
    for (int i = 0; i < n; i++) pcr__wq_cancel(qs[i], &ts[i]);
    return 0;
  }
  r = pcr__wq_sleep_many(qs, ts, n, deadline);
  if (r == -EINTR) pcr__lua_interrupted(L);
  return 0;
}

int pcr__lua_raise(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  luaL_where(L, 1);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  lua_getfield(L, LUA_REGISTRYINDEX, "pcrun.errcodes");
  if (lua_istable(L, -1)) {
    lua_pushvalue(L, -2);
    lua_pushstring(L, code);
    lua_rawset(L, -3);
  }
  lua_pop(L, 1);
  return lua_error(L);
}

/* errcode(err) -> the code a binding raised err with, or nil. */
static int l_errcode(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "pcrun.errcodes");
  lua_pushvalue(L, 1);
  lua_rawget(L, -2);
  return 1;
}

/* release(h): drop what handle h holds in this process now. */
static int l_release(lua_State *L) {
  if (pcr__handle_kind(L, 1) < 0)
    return luaL_error(L, "release: not a pcrun handle");
  pcr__handle_release(lua_touserdata(L, 1));
  return 0;
}

static int l_ready(lua_State *L) {
  lua_pushboolean(L, readyat(L, 1) > 0);
  return 1;
}

void pcr__lhandle_open(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"wait_many", l_wait_many}, {"ready", l_ready}, {"release", l_release},
    {"errcode", l_errcode},
    {NULL, NULL}
  };
  static int atexit_set;
  if (!atexit_set) {  /* os.exit in a child drops its references too */
    atexit_set = 1;
    atexit(pcr__lhandle_exit);
  }
  lua_getfield(L, LUA_REGISTRYINDEX, "pcrun.errcodes");
  if (lua_isnil(L, -1)) {
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "pcrun.errcodes");
  }
  lua_pop(L, 1);
  luaL_register(L, NULL, fns);
}
