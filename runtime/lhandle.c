/* The handle core (lhandle.h): the registry of this process's live
** handles, their lifetime across fork and messages, and the helpers every
** binding file shares (blocking calls, arena pressure, errors). */
#include "lhandle.h"
#include "ser.h"

#include <errno.h>
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
  link_h(h);
  luaL_getmetatable(L, kinds[id].name);
  lua_setmetatable(L, -2);
  return h;
}

void pcr__handle_release(pcr_handle *h) {
  if (!h->open) return;
  h->open = 0;
  unlink_h(h);
  if (kinds[h->kind].release) kinds[h->kind].release(h);
  /* A forked copy holds no reference of its own: its parent took one for
  ** it and drops it when it reaps the copy. */
  if (h->o && pcr__handle_owned(h)) pcr__obj_unref(h->o);
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

void *pcr__lua_retry(lua_State *L, void *(*alloc)(void *), void *arg) {
  void *p = alloc(arg);
  if (p) return p;
  /* Garbage handles may hold most of the arena: LuaJIT collects before
  ** it reports out of memory, and so do we. */
  lua_gc(L, LUA_GCCOLLECT, 0);
  return alloc(arg);
}

static void *shmalloc(void *n) { return pcr__shm_alloc(*(size_t *)n); }

void *pcr__lua_alloc(lua_State *L, size_t n) {
  return pcr__lua_retry(L, shmalloc, &n);
}

/* -- Messages --------------------------------------------------------- */

static pcr_obj **pend;  /* references taken by the message being encoded */
static int npend, cappend;

void pcr__msg_end(int sent) {
  if (!sent)
    for (int i = 0; i < npend; i++) pcr__obj_unref(pend[i]);
  npend = 0;
}

void pcr__msg_begin(void) {
  pcr__msg_end(0);  /* an encode that raised left its references here */
}

size_t pcr__msg_refs(const uint64_t **out) {
  static uint64_t *offs;
  static int cap;
  if (npend > cap) {
    uint64_t *p = realloc(offs, sizeof *p * (size_t)npend);
    if (!p) {  /* without the list a freed queue would leak them: rare */
      *out = NULL;
      return 0;
    }
    offs = p;
    cap = npend;
  }
  for (int i = 0; i < npend; i++) offs[i] = pcr__shm_offset(pend[i]);
  *out = offs;
  return (size_t)npend;
}

int pcr__msg_ref(pcr_obj *o) {
  if (npend == cappend) {
    int cap = cappend ? 2 * cappend : 16;
    pcr_obj **p = realloc(pend, sizeof *p * (size_t)cap);
    if (!p) return -1;
    pend = p;
    cappend = cap;
  }
  pcr__obj_ref(o);
  pend[npend++] = o;
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
  for (pcr_handle *h = live; h; h = h->next)
    if (kinds[h->kind].forked) kinds[h->kind].forked(h);
}

void pcr__lhandle_exit(void) {
  while (live) pcr__handle_release(live);
  pcr__lconn_exit();
}

/* -- Blocking calls --------------------------------------------------- */

int pcr__lua_sigint(lua_State *L) {
  return lua_gethookmask(L) == (LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT)
         && lua_gethookcount(L) == 1;
}

void pcr__lua_interrupted(lua_State *L) {
  if (pcr__lua_sigint(L)) {
    lua_sethook(L, NULL, 0, 0);  /* the hook has done its work: we raise */
    luaL_error(L, "interrupted");
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
  if (pcr__ser_msg && pcr__msg_ref(h->o) < 0)  /* the receiver adopts it */
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
  if (!pcr__ser_msg && !pcr__ser_trusted)
    return luaL_error(L, "pcrun.decode: a shared object in untrusted input "
                         "(decode with { trusted = true })");
  if (!o || o->magic != PCR_OBJ_MAGIC || o->type != w.type || w.kind < 0 ||
      w.kind >= nkinds)
    return luaL_error(L, "pcrun: a shared object in a message no longer "
                         "exists");
  if (!pcr__ser_msg) pcr__obj_ref(o);  /* else adopt the message's */
  pcr__handle_push(L, o, w.kind);
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
    {NULL, NULL}
  };
  static int atexit_set;
  if (!atexit_set) {  /* os.exit in a child drops its references too */
    atexit_set = 1;
    atexit(pcr__lhandle_exit);
  }
  luaL_register(L, NULL, fns);
}
