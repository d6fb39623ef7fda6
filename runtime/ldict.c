/* The Lua binding of dicts (dict.c): a pcrun.Dict handle is a shared-object
** handle of the handle core, lhandle.h (it crosses processes as a queue);
** this file converts keys and values. Numbers, booleans and strings are
** stored as they are, anything else encoded, with the references to the
** shared objects inside held by the entry. */
#include "dict.h"
#include "lhandle.h"
#include "pcrdef.h"
#include "ser.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int K = -1;  /* the kind, from pcr__handle_register */

static pcr_dict *todict(lua_State *L, const char *m) {
  return (pcr_dict *)pcr__handle_check(L, K, m)->o;
}

/* The key at idx, as "'name'" for a string, else as tostring gives it. */
static const char *keyname(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING)
    return lua_pushfstring(L, "'%s'", lua_tostring(L, idx));
  if (lua_type(L, idx) == LUA_TBOOLEAN)
    return lua_toboolean(L, idx) ? "true" : "false";
  lua_pushvalue(L, idx);
  const char *s = lua_tostring(L, -1);
  return s ? s : "?";
}

static void tokey(lua_State *L, int idx, pcr_dkey *k, double *num,
                  const char *m) {
  switch (lua_type(L, idx)) {
  case LUA_TSTRING:
    k->kind = PCR_DK_STRING;
    k->p = lua_tolstring(L, idx, &k->n);
    break;
  case LUA_TNUMBER:
    *num = lua_tonumber(L, idx);
    if (*num != *num) luaL_error(L, "pcrun.Dict:%s: key is NaN", m);
    if (*num == 0) *num = 0;  /* -0 and 0 are one key, as in a table */
    k->kind = PCR_DK_NUMBER;
    k->p = num;
    k->n = sizeof *num;
    break;
  case LUA_TBOOLEAN:
    k->kind = PCR_DK_BOOLEAN;
    k->p = lua_toboolean(L, idx) ? "\1" : "\0";
    k->n = 1;
    break;
  default:
    luaL_error(L, "pcrun.Dict:%s: key must be a string, number or boolean, "
                  "got %s", m, luaL_typename(L, idx));
  }
  pcr__dict_key(k);
}

static void pushkey(lua_State *L, const pcr_dent *e) {
  switch (e->kkind) {
  case PCR_DK_STRING: lua_pushlstring(L, e->data, e->klen); break;
  case PCR_DK_NUMBER: {
    double x;
    memcpy(&x, e->data, sizeof x);
    lua_pushnumber(L, x);
    break;
  }
  default: lua_pushboolean(L, e->data[0] != 0);
  }
}

/* Whether the value at idx is stored without the serializer. */
static int plain(lua_State *L, int idx) {
  int t = lua_type(L, idx);
  return t == LUA_TNIL || t == LUA_TBOOLEAN || t == LUA_TNUMBER ||
         t == LUA_TSTRING;
}

/* The value at idx as a pcr_dval; NULL for nil. Encoded values take
** references for the objects inside (pcr__msg_begin..end): the caller ends
** the message, sent when the dict adopted them. */
static pcr_dval *toval(lua_State *L, int idx, pcr_dval *v, int kidx,
                       const char *m) {
  memset(v, 0, sizeof *v);
  switch (lua_type(L, idx)) {
  case LUA_TNIL: return NULL;
  case LUA_TNUMBER:
    v->kind = PCR_DV_NUMBER;
    v->num = lua_tonumber(L, idx);
    return v;
  case LUA_TBOOLEAN:
    v->kind = lua_toboolean(L, idx) ? PCR_DV_TRUE : PCR_DV_FALSE;
    return v;
  case LUA_TSTRING:
    v->kind = PCR_DV_STRING;
    v->p = lua_tolstring(L, idx, &v->n);
    return v;
  default: {
    const char *root = lua_pushfstring(L, "pcrun.Dict:%s: value at %s", m,
                                       keyname(L, kidx));
    pcr__msg_begin();
    v->kind = PCR_DV_VALUE;
    v->p = pcr__msg_encode(L, idx, &v->n, root, 0);
    v->nrefs = pcr__msg_refs(&v->refs);
    if (v->nrefs > 0xffff) {
      pcr__msg_end(0);
      luaL_error(L, "%s: more than 65535 shared objects in one value", root);
    }
    return v;
  }
  }
}

static int fail(lua_State *L, int e, const char *m, int kidx) {
  if (e == -ENOSPC) {
    const char *who = lua_pushfstring(L, "pcrun.Dict:%s", m);
    return pcr__handle_nospace(L, who);
  }
  return luaL_error(L, "pcrun.Dict:%s: value at %s: %s", m, keyname(L, kidx),
                    strerror(-e));
}

/* Read buffer of this process; values are copied out of it at once. */
static pcr_dout out;

/* Push every entry of a snapshot, held by a userdata whose __gc drops
** what the snapshot holds should a decode raise. */
static pcr_dsnap *newsnap(lua_State *L) {
  pcr_dsnap *s = lua_newuserdata(L, sizeof *s);
  memset(s, 0, sizeof *s);
  luaL_getmetatable(L, "pcrun.DictSnapshot");
  lua_setmetatable(L, -2);
  return s;
}

static int snap_gc(lua_State *L) {
  pcr__dict_snapshot_free(lua_touserdata(L, 1));
  return 0;
}

static void pushval(lua_State *L, const pcr_dent *e) {
  switch (e->vkind) {
  case PCR_DV_NUMBER: {
    uint64_t bits = atomic_load(&((pcr_dent *)e)->num);
    double x;
    memcpy(&x, &bits, sizeof x);
    lua_pushnumber(L, x);
    break;
  }
  case PCR_DV_TRUE: lua_pushboolean(L, 1); break;
  case PCR_DV_FALSE: lua_pushboolean(L, 0); break;
  case PCR_DV_STRING:
    lua_pushlstring(L, PCR_DENT_VAL((pcr_dent *)e), e->vlen);
    break;
  default:
    pcr__ser_decode(L, PCR_DENT_VAL((pcr_dent *)e), e->vlen,
                    PCR_SER_TRUSTED);
  }
}

/* Push the value of k (or nothing). Returns 1 when found, with *tok (if
** asked) naming what was read. */
static int getval(lua_State *L, pcr_dict *d, const pcr_dkey *k,
                  uint64_t *tok, double *num) {
  int r = pcr__dict_get(d, k, &out);
  if (r < 0) luaL_error(L, "pcrun.Dict: out of memory");
  if (tok) {
    *tok = out.tok;
    *num = out.num;
  }
  if (!r) return 0;
  switch (out.kind) {
  case PCR_DV_NUMBER: lua_pushnumber(L, out.num); return 1;
  case PCR_DV_TRUE: lua_pushboolean(L, 1); return 1;
  case PCR_DV_FALSE: lua_pushboolean(L, 0); return 1;
  case PCR_DV_STRING: lua_pushlstring(L, out.buf, out.n); return 1;
  }
  if (out.nrefs == 0) {
    /* A copy: a hook run by the decode may read the dict again. */
    lua_pushlstring(L, out.buf, out.n);
    pcr__ser_decode(L, lua_tostring(L, -1), lua_objlen(L, -1),
                    PCR_SER_TRUSTED);
    lua_remove(L, -2);
    return 1;
  }
  /* It names shared objects: copy it under the lock, with a reference to
  ** each, so that none is freed before the decode takes its own. */
  pcr_dsnap *s = newsnap(L);
  if (pcr__dict_snapshot_key(d, k, s) < 0)
    luaL_error(L, "pcrun.Dict: out of memory");
  if (tok) *tok = s->tok;
  if (s->count == 0) {
    lua_pop(L, 1);
    return 0;
  }
  pcr_dent *e = (pcr_dent *)s->buf;
  if (tok) {
    uint64_t bits = atomic_load(&e->num);
    memcpy(num, &bits, sizeof *num);
  }
  pushval(L, e);
  pcr__dict_snapshot_free(s);
  lua_remove(L, -2);
  return 1;
}

static int l_dict(lua_State *L) {
  pcr_handle *h = pcr__handle_push(L, NULL, K);
  pcr_dict *d = pcr__dict_new(&h->lidx[0]);
  if (!d) {
    pcr__handle_release(h);
    return pcr__handle_nospace(L, "pcrun.dict");
  }
  h->o = &d->hdr;
  return 1;
}

static int d_get(lua_State *L) {
  pcr_dict *d = todict(L, "get");
  pcr_dkey k;
  double kn;
  tokey(L, 2, &k, &kn, "get");
  if (!getval(L, d, &k, NULL, NULL)) lua_pushvalue(L, 3);
  return 1;
}

/* __index: methods first, then keys. */
static int d_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
  }
  pcr_dict *d = todict(L, "get");
  pcr_dkey k;
  double kn;
  tokey(L, 2, &k, &kn, "get");
  if (!getval(L, d, &k, NULL, NULL)) lua_pushnil(L);
  return 1;
}

static int put(lua_State *L, const char *m) {
  pcr_dict *d = todict(L, m);
  pcr_dkey k;
  pcr_dval v;
  double kn;
  tokey(L, 2, &k, &kn, m);
  luaL_checkany(L, 3);
  pcr_dval *vp = toval(L, 3, &v, 2, m);
  int r = pcr__dict_put(d, &k, vp, PCR_DC_ANY, NULL, 0, 0);
  if (vp && vp->kind == PCR_DV_VALUE) pcr__msg_end(r > 0);
  if (r < 0) return fail(L, r, m, 2);
  return 0;
}

static int d_set(lua_State *L) { return put(L, "set"); }

static int d_delete(lua_State *L) {
  pcr_dict *d = todict(L, "delete");
  pcr_dkey k;
  double kn;
  tokey(L, 2, &k, &kn, "delete");
  int r = pcr__dict_put(d, &k, NULL, PCR_DC_ANY, NULL, 0, 0);
  if (r < 0) return fail(L, r, "delete", 2);
  lua_pushboolean(L, r);
  return 1;
}

static int d_add(lua_State *L) {
  pcr_dict *d = todict(L, "add");
  pcr_dkey k;
  double kn, res;
  unsigned kind;
  tokey(L, 2, &k, &kn, "add");
  if (lua_type(L, 3) != LUA_TNUMBER)
    return luaL_error(L, "pcrun.Dict:add: delta must be a number, got %s",
                      luaL_typename(L, 3));
  int r = pcr__dict_add(d, &k, lua_tonumber(L, 3), &res, &kind);
  if (r == -EINVAL) {
    const char *what;
    switch (kind) {
    case PCR_DV_TRUE: case PCR_DV_FALSE: what = "a boolean"; break;
    case PCR_DV_STRING: what = "a string"; break;
    default:
      what = "a stored value";
      if (getval(L, d, &k, NULL, NULL)) {
        const char *t = luaL_typename(L, -1);
        what = lua_pushfstring(L, "%s %s", strchr("aeiou", t[0]) ? "an" : "a",
                               t);
      }
    }
    return luaL_error(L, "pcrun.Dict:add: value at %s is %s, not a number",
                      keyname(L, 2), what);
  }
  if (r < 0) return fail(L, r, "add", 2);
  lua_pushnumber(L, res);
  return 1;
}

/* update(k, fn): fn(old) -> new, stored if nothing changed the key
** meanwhile, else run again on the newer value. */
static int d_update(lua_State *L) {
  pcr_dict *d = todict(L, "update");
  pcr_dkey k;
  double kn;
  tokey(L, 2, &k, &kn, "update");
  if (!lua_isfunction(L, 3) && !luaL_getmetafield(L, 3, "__call"))
    return luaL_error(L, "pcrun.Dict:update: fn must be a function, got %s",
                      luaL_typename(L, 3));
  lua_settop(L, 3);
  for (;;) {
    uint64_t tok;
    double num;
    lua_pushvalue(L, 3);
    if (!getval(L, d, &k, &tok, &num)) lua_pushnil(L);
    lua_call(L, 1, 1);  /* at 4 */
    /* The key's bytes may have moved: k->p points into the Lua string at
    ** 2 (still there) or at kn (still here). */
    pcr_dval v;
    pcr_dval *vp = toval(L, 4, &v, 2, "update");
    int r = pcr__dict_put(d, &k, vp, PCR_DC_TOKEN, NULL, tok, num);
    if (vp && vp->kind == PCR_DV_VALUE) pcr__msg_end(r > 0);
    if (r < 0) return fail(L, r, "update", 2);
    if (r > 0) {
      lua_settop(L, 4);
      return 1;
    }
    lua_settop(L, 3);
  }
}

static int d_cas(lua_State *L) {
  pcr_dict *d = todict(L, "cas");
  pcr_dkey k;
  double kn;
  tokey(L, 2, &k, &kn, "cas");
  if (!plain(L, 3))
    return luaL_error(L, "pcrun.Dict:cas: old must be nil, a boolean, a "
                         "number or a string, got %s", luaL_typename(L, 3));
  luaL_checkany(L, 4);
  pcr_dval want, v;
  pcr_dval *wp = toval(L, 3, &want, 2, "cas");
  pcr_dval *vp = toval(L, 4, &v, 2, "cas");
  int r = pcr__dict_put(d, &k, vp, PCR_DC_VALUE, wp, 0, 0);
  if (vp && vp->kind == PCR_DV_VALUE) pcr__msg_end(r > 0);
  if (r < 0) return fail(L, r, "cas", 2);
  lua_pushboolean(L, r);
  return 1;
}

static int d_len(lua_State *L) {
  lua_pushnumber(L, (lua_Number)pcr__dict_len(todict(L, "len")));
  return 1;
}

static int d_clear(lua_State *L) {
  int r = pcr__dict_clear(todict(L, "clear"));
  if (r < 0) return luaL_error(L, "pcrun.Dict:clear: %s", strerror(-r));
  return 0;
}

static pcr_dsnap *snapshot(lua_State *L, pcr_dict *d, const char *m) {
  pcr_dsnap *s = newsnap(L);
  int r = pcr__dict_snapshot(d, s);
  if (r < 0) luaL_error(L, "pcrun.Dict:%s: %s", m, strerror(-r));
  return s;
}

#define FOREACH(e, s)                                                    \
  for (size_t at_ = 0; at_ < (s)->n &&                                   \
       ((e) = (pcr_dent *)((s)->buf + at_), 1);                          \
       at_ += PCR_ALIGN_UP(PCR_DENT_SIZE(e), 8))

static int d_keys(lua_State *L) {
  pcr_dsnap *s = snapshot(L, todict(L, "keys"), "keys");
  pcr_dent *e;
  lua_createtable(L, (int)s->count, 0);
  int i = 0;
  FOREACH(e, s) {
    pushkey(L, e);
    lua_rawseti(L, -2, ++i);
  }
  pcr__dict_snapshot_free(s);
  return 1;
}

static int d_totable(lua_State *L) {
  pcr_dsnap *s = snapshot(L, todict(L, "totable"), "totable");
  pcr_dent *e;
  lua_createtable(L, 0, (int)s->count);
  FOREACH(e, s) {
    pushkey(L, e);
    pushval(L, e);
    lua_rawset(L, -3);
  }
  pcr__dict_snapshot_free(s);
  return 1;
}

/* Blocking waits go in slices, so that Ctrl-C (a hook) is seen. */
static int d_wait(lua_State *L) {
  pcr_dict *d = todict(L, "wait");
  pcr_dkey k;
  double kn, deadline = -1;
  tokey(L, 2, &k, &kn, "wait");
  if (!lua_isnoneornil(L, 3)) {
    if (lua_type(L, 3) != LUA_TNUMBER || lua_tonumber(L, 3) !=
                                             lua_tonumber(L, 3))
      return luaL_error(L, "pcrun.Dict:wait: timeout must be a number, got "
                           "%s", luaL_typename(L, 3));
    double t = lua_tonumber(L, 3);
    deadline = pcr__now() + (t > 0 ? t : 0);
  }
  for (;;) {
    pcr_wqtok t;
    pcr__wq_prepare(&d->wq, &t);
    if (pcr__dict_has(d, &k)) {
      pcr__wq_cancel(&d->wq, &t);
      break;
    }
    if (deadline >= 0 && pcr__now() >= deadline) {
      pcr__wq_cancel(&d->wq, &t);
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
    int r = pcr__wq_sleep(&d->wq, &t, deadline);
    if (r == -EINTR || r == 0) pcr__lua_interrupted(L);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* -- The ffi fast path ------------------------------------------------- */

/* The dict of a live handle, for the ffi calls (NULL: another kind). */
static pcr_dict *fastdict(void *ud) {
  pcr_handle *h = ud;
  if (!h || h->magic != PCR_HANDLE_MAGIC || !h->open || h->kind != K)
    return NULL;
  return (pcr_dict *)h->o;
}

/* The key of an ffi call: a string (kp, kn) or the number *kx, which k
** points at (-0 as 0); -1 for NaN (the C method raises). */
static int fastkey(pcr_dkey *k, int kkind, const char *kp, size_t kn,
                   double *kx) {
  *k = (pcr_dkey){ (unsigned)kkind, kp, kn, 0 };
  if (kkind == PCR_DK_NUMBER) {
    if (*kx != *kx) return -1;
    if (*kx == 0) *kx = 0;
    k->p = kx;
    k->n = sizeof *kx;
  }
  pcr__dict_key(k);
  return 0;
}

/* Called through ffi function pointers (lua/pcrun/dict.lua) for string
** and number keys: returns the value's kind with a number in *num, or a
** string's length (>= 0, bytes in *str until the next call) as kind
** PCR_DV_STRING; 0 absent, -1 for anything else (the C method's job). */
static int f_get(void *ud, int kkind, const char *kp, size_t kn, double kx,
                 double *num, const char **str, size_t *slen) {
  pcr_dict *d = fastdict(ud);
  if (!d) return -1;
  pcr_dkey k;
  if (fastkey(&k, kkind, kp, kn, &kx) < 0) return -1;
  int r = pcr__dict_get(d, &k, &out);
  if (r <= 0) return r;
  if (out.kind == PCR_DV_VALUE) return -1;
  *num = out.num;
  *str = out.buf;
  *slen = out.n;
  return (int)out.kind;
}

/* Store a number (or add it, if add): 0, or -1 for the C method. */
static int f_setnum(void *ud, int kkind, const char *kp, size_t kn,
                    double kx, double v, int add, double *res) {
  pcr_dict *d = fastdict(ud);
  if (!d) return -1;
  pcr_dkey k;
  if (fastkey(&k, kkind, kp, kn, &kx) < 0) return -1;
  if (add) {
    unsigned kind;
    return pcr__dict_add(d, &k, v, res, &kind) < 0 ? -1 : 0;
  }
  pcr_dval val = { PCR_DV_NUMBER, v, NULL, 0, NULL, 0 };
  return pcr__dict_put(d, &k, &val, PCR_DC_ANY, NULL, 0, 0) < 0 ? -1 : 0;
}

static const luaL_Reg dict_m[] = {
  {"get", d_get}, {"set", d_set}, {"delete", d_delete}, {"add", d_add},
  {"update", d_update}, {"cas", d_cas}, {"len", d_len}, {"clear", d_clear},
  {"keys", d_keys}, {"totable", d_totable}, {"wait", d_wait}, {NULL, NULL}
};

void pcr__ldict_open(lua_State *L) {
  pcr__dict_init();
  luaL_newmetatable(L, "pcrun.DictSnapshot");
  lua_pushcfunction(L, snap_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_dict);
  lua_setfield(L, -2, "dict");
  pcr_hkind k = { .name = "pcrun.Dict", .methods = dict_m, .base = -1 };
  K = pcr__handle_register(L, &k);
  lua_getfield(L, -1, "Dict");
  lua_getfield(L, -1, "__index");  /* the methods */
  lua_pushcclosure(L, d_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, d_set);
  lua_setfield(L, -2, "__newindex");
  lua_pushcfunction(L, d_len);
  lua_setfield(L, -2, "__len");
  lua_getfield(L, -1, "__index");
  lua_getupvalue(L, -1, 1);
  lua_setfield(L, -3, "__methods");  /* for dict.lua's additions */
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushlightuserdata(L, (void *)(uintptr_t)f_get);
  lua_setfield(L, -2, "get");
  lua_pushlightuserdata(L, (void *)(uintptr_t)f_setnum);
  lua_setfield(L, -2, "setnum");
  lua_setfield(L, -2, "__fast");
  lua_pop(L, 1);
}
