/* Exported functions: a Lua function behind a libffi closure. A calling
** host thread claims a request slot in the arena, writes the raw C
** arguments, wakes a worker process and waits on the slot until the worker
** writes the result. Both sides poll for XSPIN before a futex sleep, and
** wake the other only when it announced a sleep. No host lock and no host
** Lua state is touched, so any number of host threads may call at once. */
#include "export.h"
#include "futex.h"
#include "native.h"
#include "pcrdef.h"
#include "pcrun.h"
#include "proc.h"
#include "ser.h"
#include "shm.h"
#include "zygote.h"

#include <errno.h>
#include <lauxlib.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define XSLOTS 32
#define XBUF 2048           /* string arguments in; error or string out */
#define XMAGIC 0x78524350u  /* "PCRx" */
#define XPOLL 0.05          /* seconds between checks for a dead worker */
#define XSPIN 50e-6         /* seconds a side polls before it sleeps */
#define XCLOCK 8            /* polls between clock reads while polling */
#define XYIELD 32           /* polls between sched_yield while polling */
#define XSCAN 0.01          /* seconds between scans for dead idle workers */

/* Slot states. A worker takes a posted slot by writing XS_TAKEN + its pid,
** so a caller can always tell whose death fails its call. */
enum { XS_FREE, XS_CLAIMED, XS_POSTED, XS_DONE, XS_ABANDONED, XS_TAKEN = 16 };

typedef struct xslot {
  _Atomic uint32_t state;     /* futex; see above. CAS by callers, workers */
  _Atomic uint32_t sleeping;  /* caller: 1 before it sleeps on state (seq_cst
                                 store, then reload); the worker reads it
                                 after its seq_cst CAS to DONE to decide to
                                 wake. 0 again before the next POSTED */
  int32_t code;               /* worker: PCR_OK or PCR_E*, before DONE */
  pcr__val args[PCR_SIG_MAX]; /* caller, before POSTED */
  pcr__val ret;               /* worker, before DONE */
  char buf[XBUF];             /* caller: strings; worker: error/string */
} xslot;

struct pcr__xsrv {
  uint32_t magic;             /* XMAGIC; written once before any fork */
  _Atomic uint32_t posted;    /* futex: callers bump it per request */
  _Atomic uint32_t idle;      /* workers asleep on posted: each adds 1 then
                                 rereads posted (seq_cst); callers bump
                                 posted then read it (seq_cst) to decide to
                                 wake. A worker killed asleep leaves it
                                 high: only extra wakes */
  _Atomic uint32_t freed;     /* futex: bumped whenever a slot is freed */
  _Atomic uint32_t fwait;     /* host threads asleep on freed; as idle */
  _Atomic uint32_t closing;   /* host sets it once at close */
  uint32_t fnlen;             /* bytes of the encoded function in fn[] */
  char name[64];              /* written once before any fork */
  char sig[PCR_SIG_TEXT];
  xslot slots[XSLOTS];
  char fn[];                  /* the function, encoded (zygote mode) */
};
_Static_assert(offsetof(struct pcr__xsrv, magic) == 0, "magic first");

/* -- The calling side (any host thread) -------------------------------- */

static _Thread_local int tcode;
static _Thread_local char tmsg[XBUF];  /* as large as a slot's message */
static _Thread_local char tstr[XBUF];  /* string results */

int pcr__export_status(const char **msg) {
  if (msg) *msg = tmsg;
  return tcode;
}

static int xfail(pcr__export *x, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int xfail(pcr__export *x, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tmsg, sizeof tmsg, fmt, ap);
  va_end(ap);
  tcode = code;
  if (x->onerr) x->onerr(x->onerr_ud, x->srv->name, code, tmsg);
  return code;
}

/* Poll *w until (*w == v) == eq, for at most XSPIN. Returns whether that
** came true. Either process. */
static int spin(_Atomic uint32_t *w, uint32_t v, int eq) {
  double until = 0;
  for (unsigned i = 1;; i++) {
    if ((atomic_load_explicit(w, memory_order_acquire) == v) == eq) return 1;
    pcr__cpu_relax();
    if (i % XCLOCK) continue;
    double now = pcr__now();
    if (until == 0) until = now + XSPIN;
    else if (now >= until) return 0;
    if (i % XYIELD == 0) sched_yield();  /* let the other side run */
  }
}

/* Sleep on *w while it holds v, counted in *nsleep so that wakers can skip
** the syscall. seq_cst add then reload: pairs with the waker's seq_cst
** bump of *w then read of *nsleep, so one of them sees the other. */
static void sleepon(_Atomic uint32_t *w, uint32_t v, _Atomic uint32_t *nsleep,
                    double deadline) {
  atomic_fetch_add(nsleep, 1);
  if (atomic_load(w) == v) pcr__futex_wait(w, v, deadline);
  atomic_fetch_sub(nsleep, 1);
}

/* Bump *w (seq_cst) and wake one sleeper if any announced itself. */
static void bump(_Atomic uint32_t *w, _Atomic uint32_t *nsleep) {
  atomic_fetch_add(w, 1);
  if (atomic_load(nsleep)) pcr__futex_wake(w, 1);
}

static void freeslot(pcr__xsrv *s, xslot *sl) {
  atomic_store_explicit(&sl->state, XS_FREE, memory_order_release);
  bump(&s->freed, &s->fwait);
}

/* -- Worker liveness: one pidfd per worker, all under x->mu ------------ */

/* A pidfd on pid, or -1 (kernel without pidfd_open). For a child of this
** process, before anyone may reap it. */
static int openpidfd(int pid) {
  int fd = pcr__pidfd_open((pid_t)pid);
  return fd < 0 ? -1 : fd;
}

/* Whether worker i has exited. */
static int exited(pcr__export *x, int i) {
  int pid = x->pids[i];
  if (pid <= 0) return 1;
  if (x->pidfds[i] < 0) return pcr__pid_dead((uint32_t)pid);
  struct pollfd p = {.fd = x->pidfds[i], .events = POLLIN};
  return poll(&p, 1, 0) > 0;  /* POLLIN: exited (POLLNVAL: cannot be) */
}

/* Worker i died: in zygote mode ask the zygote for a replacement (the
** host itself may have threads, so it never forks here); otherwise mark
** the entry dead as -pid and keep its pidfd (the zombie is ours, reaped
** at free). Returns whether a live worker now holds entry i. */
static int replace(pcr__export *x, int i) {
  if (!x->zy) {
    if (x->pids[i] > 0) x->pids[i] = -x->pids[i];
    return 0;
  }
  if (x->pidfds[i] >= 0) close(x->pidfds[i]);  /* the zygote reaps pid */
  x->pidfds[i] = -1;
  x->pids[i] = 0;
  if (atomic_load(&x->srv->closing)) return 0;
  int fd;
  pid_t np = pcr__zygote_fork(x->zy, x->srv, &fd);
  if (np <= 0) return 0;
  x->pids[i] = np;
  x->pidfds[i] = fd;
  return 1;
}

/* Look at every worker with one poll() and replace (or mark) those that
** died; in zygote mode also refill entries a failed fork left empty.
** Returns how many are alive. */
static int scan(pcr__export *x) {
  struct pollfd p[64];
  int at[64], n = 0, live = 0;
  for (int i = 0; i < x->nworkers; i++) {
    if (x->pids[i] <= 0 || x->pidfds[i] < 0) {
      if (x->pids[i] > 0 && !exited(x, i)) live++;
      else if (x->pids[i] > 0 || (x->zy && x->pids[i] == 0))
        live += replace(x, i);
      continue;
    }
    p[n] = (struct pollfd){.fd = x->pidfds[i], .events = POLLIN};
    at[n++] = i;
  }
  if (n && poll(p, (nfds_t)n, 0) < 0) return live + n;  /* EINTR: unsure */
  for (int k = 0; k < n; k++)
    live += p[k].revents ? replace(x, at[k]) : 1;
  return live;
}

/* Whether a worker is alive; replaces (or marks) those found dead. */
static int anyalive(pcr__export *x) {
  pthread_mutex_lock(&x->mu);
  int live = scan(x);
  pthread_mutex_unlock(&x->mu);
  return live > 0;
}

/* Whether the worker pid that took a slot has died; replaces (or marks)
** it if so. A pid no longer in pids[] was found dead and replaced. */
static int takerdead(pcr__export *x, int pid) {
  int dead = 1;
  pthread_mutex_lock(&x->mu);
  for (int i = 0; i < x->nworkers; i++) {
    if (x->pids[i] != pid && x->pids[i] != -pid) continue;
    if ((dead = exited(x, i)) && x->pids[i] > 0) replace(x, i);
    break;
  }
  pthread_mutex_unlock(&x->mu);
  return dead;
}

/* A caller about to sleep: every XSCAN at most (among all callers), scan
** for workers that died while idle, so that they are replaced before a
** call stalls on them. Skipped while another thread holds the lock. */
static void check(pcr__export *x) {
  int64_t now = (int64_t)(pcr__now() * 1e6);
  if (now < atomic_load_explicit(&x->nextscan, memory_order_relaxed) ||
      pthread_mutex_trylock(&x->mu))
    return;
  atomic_store_explicit(&x->nextscan, now + (int64_t)(XSCAN * 1e6),
                        memory_order_relaxed);
  scan(x);
  pthread_mutex_unlock(&x->mu);
}

static xslot *claim(pcr__export *x) {
  pcr__xsrv *s = x->srv;
  unsigned start = (unsigned)((uintptr_t)&tcode >> 6) % XSLOTS;
  while (!atomic_load(&s->closing)) {
    uint32_t seq = atomic_load(&s->freed);
    for (unsigned k = 0; k < XSLOTS; k++) {
      xslot *sl = &s->slots[(start + k) % XSLOTS];
      uint32_t want = XS_FREE;
      if (atomic_load_explicit(&sl->state, memory_order_relaxed) == XS_FREE &&
          atomic_compare_exchange_strong(&sl->state, &want, XS_CLAIMED))
        return sl;
    }
    check(x);
    sleepon(&s->freed, seq, &s->fwait, pcr__now() + XPOLL);
  }
  return NULL;
}

static int putargs(pcr__export *x, xslot *sl, void **args) {
  size_t used = 0;
  for (int i = 0; i < x->sig.nargs; i++) {
    pcr__val_load(x->sig.args[i], args[i], &sl->args[i]);
    const char *str = sl->args[i].s;
    if (x->sig.args[i] != PCR_T_STR || !str) continue;
    size_t len = strlen(str) + 1;
    if (len > XBUF - used)
      return xfail(x, PCR_EINVAL, "export '%s': string arguments take more "
                   "than %d bytes in all (each its length + 1)",
                   x->srv->name, XBUF);
    memcpy(sl->buf + used, str, len);
    sl->args[i].s = sl->buf + used;  /* the arena is at the same address */
    used += len;
  }
  return 0;
}

/* Wait until the slot is done: poll, then sleep with checks for a dead
** worker and for close. Returns 0 or PCR_E* (the slot is then freed or
** abandoned). */
static int await(pcr__export *x, xslot *sl) {
  pcr__xsrv *s = x->srv;
  if (spin(&sl->state, XS_DONE, 1)) return 0;
  check(x);
  atomic_store(&sl->sleeping, 1);  /* seq_cst, then the seq_cst load below */
  for (;;) {
    uint32_t st = atomic_load(&sl->state);
    if (st == XS_DONE) return 0;
    if (atomic_load(&s->closing)) {
      if (atomic_compare_exchange_strong(&sl->state, &st, XS_ABANDONED))
        return xfail(x, PCR_ECLOSED, "export '%s': the runtime was closed "
                     "during the call", s->name);
      continue;
    }
    if (pcr__futex_wait(&sl->state, st, pcr__now() + XPOLL) != -ETIMEDOUT)
      continue;
    check(x);
    if (st >= XS_TAKEN && takerdead(x, (int)(st - XS_TAKEN))) {
      if (!atomic_compare_exchange_strong(&sl->state, &st, XS_CLAIMED))
        continue;
      freeslot(s, sl);
      return xfail(x, PCR_ECHILD, "export '%s': worker pid %u died during "
                   "the call", s->name, st - XS_TAKEN);
    }
    if (st == XS_POSTED && !anyalive(x) &&
        atomic_compare_exchange_strong(&sl->state, &st, XS_CLAIMED)) {
      freeslot(s, sl);
      return xfail(x, PCR_ECHILD, "export '%s': every worker has died",
                   s->name);
    }
  }
}

static int xcall(pcr__export *x, void **args, pcr__val *r) {
  pcr__xsrv *s = x->srv;
  xslot *sl = claim(x);
  if (!sl)
    return xfail(x, PCR_ECLOSED, "export '%s': the runtime is closed",
                 s->name);
  int e = putargs(x, sl, args);
  if (e) { freeslot(s, sl); return e; }
  atomic_store_explicit(&sl->sleeping, 0, memory_order_relaxed);
  atomic_store_explicit(&sl->state, XS_POSTED, memory_order_release);
  bump(&s->posted, &s->idle);
  if ((e = await(x, sl))) return e;
  *r = sl->ret;
  int code = sl->code;
  if (code) xfail(x, code, "%s", sl->buf);
  else if (x->sig.ret == PCR_T_STR && r->s) {
    memcpy(tstr, sl->buf, XBUF);  /* the worker NUL-terminated it */
    r->s = tstr;
  }
  freeslot(s, sl);
  return code;
}

/* The closure's body: what a host thread runs when it calls the pointer. */
static void onclosure(ffi_cif *cif, void *ret, void **args, void *ud) {
  pcr__export *x = ud;
  pcr__val r;
  (void)cif;
  atomic_fetch_add(&x->inflight, 1);
  tcode = 0;
  tmsg[0] = '\0';
  if (xcall(x, args, &r)) {
    memset(&r, 0, sizeof r);
    if (x->sig.ret == PCR_T_DOUBLE) r.d = NAN;
    if (x->sig.ret == PCR_T_FLOAT) r.f = NAN;
  }
  pcr__val_store_ret(x->sig.ret, &r, ret);
  atomic_fetch_sub(&x->inflight, 1);
}

/* -- The serving side (a worker process) ------------------------------- */

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

static void reply(xslot *sl, int code, const char *msg) {
  sl->code = code;
  if (msg) snprintf(sl->buf, XBUF, "%s", msg);
}

/* The error path formats into the slot, not onto the Lua stack: out of
** memory, a lua_pushfstring here would raise with no pcall around it. */
static void reply_err(xslot *sl, int code, const char *name,
                      const char *what, lua_State *L) {
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                  : "(error object is not a string)";
  sl->code = code;
  snprintf(sl->buf, XBUF, "export '%s': %s%s", name, what, msg);
}

/* Run one call: the traceback handler at index tb, the function at tb + 1.
** Allocates nothing itself (numbers and pointers push without it). */
static void serve1(lua_State *L, pcr__xsrv *s, const pcr__sig *sig, int tb,
                   xslot *sl) {
  int base = lua_gettop(L);
  lua_pushvalue(L, tb + 1);
  for (int i = 0; i < sig->nargs; i++)
    pcr__lua_pushval(L, sig->args[i], &sl->args[i]);
  int nres = sig->ret == PCR_T_VOID ? 0 : 1;
  sl->ret.u64 = 0;
  if (lua_pcall(L, sig->nargs, nres, tb)) {
    reply_err(sl, PCR_ELUA, s->name, "", L);
  } else if (nres) {
    char why[128];
    if (pcr__lua_toval(L, -1, sig->ret, &sl->ret, why, sizeof why)) {
      sl->code = PCR_ETYPE;
      snprintf(sl->buf, XBUF, "export '%s': result %s", s->name, why);
    } else {
      size_t len = 0;
      if (sig->ret == PCR_T_STR && sl->ret.s) lua_tolstring(L, -1, &len);
      if (len >= XBUF) {
        sl->ret.s = NULL;
        snprintf(sl->buf, XBUF, "export '%s': string result of %lu bytes "
                 "is longer than the limit of %d bytes", s->name,
                 (unsigned long)len, XBUF - 1);
        sl->code = PCR_ETYPE;
      } else if (sig->ret == PCR_T_STR && sl->ret.s) {
        reply(sl, PCR_OK, NULL);
        memcpy(sl->buf, sl->ret.s, len + 1);  /* may hold NULs: cut there */
        sl->ret.s = sl->buf;
      } else {
        reply(sl, PCR_OK, NULL);
      }
    }
  } else {
    reply(sl, PCR_OK, NULL);
  }
  lua_settop(L, base);
}

static int decodefn(lua_State *L) {
  pcr__xsrv *s = lua_touserdata(L, 1);
  pcr__ser_decode(L, s->fn, s->fnlen, PCR_SER_TRUSTED);
  return 1;
}

/* Push the function to serve, or an error string. Returns 1 if a
** function. */
static int getfn(lua_State *L, pcr__xsrv *s, int byvalue) {
  if (byvalue) {
    lua_pushcfunction(L, decodefn);
    lua_pushlightuserdata(L, s);
    if (lua_pcall(L, 1, 1, 0)) {
      lua_pushfstring(L, "export '%s': cannot load the function in the "
                      "worker: %s", s->name, lua_tostring(L, -1));
      return 0;
    }
  } else if (pcr__lua_getglobal(L, s->name)) {
    lua_pushfstring(L, "export '%s': cannot read the global in the worker: "
                    "%s", s->name, lua_tostring(L, -1));
    return 0;
  }
  if (lua_isfunction(L, -1)) return 1;
  lua_pushfstring(L, "export '%s': not a function in the worker", s->name);
  return 0;
}

/* A worker's state across entries of its serve loop. */
typedef struct serving {
  pcr__xsrv *s;
  pcr__sig sig;
  int byvalue;
  uint32_t me;
  int ref;            /* the function in the registry, once loaded */
  int failed;         /* why[] says why no call can be served */
  xslot *cur;         /* the call in hand, if any */
  char why[XBUF];
} serving;

/* Take a posted slot. */
static int take(xslot *sl, uint32_t me) {
  uint32_t want = XS_POSTED;
  /* a failed CAS would still steal the cache line: look first */
  return atomic_load_explicit(&sl->state, memory_order_relaxed) == XS_POSTED
         && atomic_compare_exchange_strong(&sl->state, &want, XS_TAKEN + me);
}

static void done(xslot *sl, uint32_t me) {
  uint32_t want = XS_TAKEN + me;
  /* seq_cst CAS, then read sleeping: pairs with await */
  if (atomic_compare_exchange_strong(&sl->state, &want, XS_DONE) &&
      atomic_load(&sl->sleeping))
    pcr__futex_wake(&sl->state, 1);
}

static void idle(pcr__xsrv *s, uint32_t seq) {
  if (!spin(&s->posted, seq, 0))
    sleepon(&s->posted, seq, &s->idle, pcr__now() + 1.0);
}

/* The serve loop: one protected frame for all its calls (pushing the
** arguments and loading the function allocate; an export worker has no
** pcall around it). A lua_cpcall per call allocated a closure per call:
** the exported-call bench fell from 0.66x to 0.23x of pcr_call. Args: the
** serving state (light userdata) and the traceback handler. An error
** that escapes (out of memory) fails the call in hand; the loop is then
** entered again. */
static int serveloop(lua_State *L) {
  serving *v = lua_touserdata(L, 1);
  pcr__xsrv *s = v->s;
  if (!v->failed && v->ref == LUA_NOREF) {
    if (!getfn(L, s, v->byvalue)) {
      snprintf(v->why, sizeof v->why, "%s", lua_tostring(L, -1));
      v->failed = 1;
    } else {
      v->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
  }
  lua_settop(L, 2);
  if (!v->failed) lua_rawgeti(L, LUA_REGISTRYINDEX, v->ref);  /* at 3 */
  while (!atomic_load(&s->closing)) {
    uint32_t seq = atomic_load(&s->posted);
    int found = 0;
    for (int k = 0; k < XSLOTS; k++) {
      xslot *sl = &s->slots[k];
      if (!take(sl, v->me)) continue;
      found = 1;
      v->cur = sl;
      if (v->failed) reply(sl, PCR_ELUA, v->why);
      else serve1(L, s, &v->sig, 2, sl);
      v->cur = NULL;
      done(sl, v->me);
    }
    if (!found) idle(s, seq);
  }
  return 0;
}

static int collect(lua_State *L) {
  lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}

void pcr__export_serve(lua_State *L, pcr__xsrv *s, int byvalue) {
  serving v;
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  signal(SIGTERM, SIG_DFL);  /* how the exit reaper stops a daemon */
  sigprocmask(SIG_UNBLOCK, &term, NULL);
  v.s = s;
  v.byvalue = byvalue;
  v.me = (uint32_t)getpid();
  v.ref = LUA_NOREF;
  v.cur = NULL;
  v.failed = pcr__sig_parse(&v.sig, s->sig, v.why, sizeof v.why) != 0;
  /* Made once: entering the loop, or collecting, again allocates nothing
  ** (a lua_cpcall would), so a worker out of memory recovers. */
  lua_settop(L, 0);
  lua_pushcfunction(L, serveloop);
  lua_pushcfunction(L, collect);
  lua_pushcfunction(L, traceback);
  for (;;) {
    lua_pushvalue(L, 1);
    lua_pushlightuserdata(L, &v);
    lua_pushvalue(L, 3);
    if (lua_pcall(L, 2, 0, 0) == 0) break;  /* closing */
    if (v.cur) {
      reply_err(v.cur, PCR_ELUA, s->name, "", L);  /* not enough memory */
      done(v.cur, v.me);
      v.cur = NULL;
    } else {
      /* Failed loading the function: fail the calls posted meanwhile,
      ** as each would have failed, then try again. */
      uint32_t seq = atomic_load(&s->posted);
      int found = 0;
      for (int k = 0; k < XSLOTS; k++)
        if (take(&s->slots[k], v.me)) {
          found = 1;
          reply_err(&s->slots[k], PCR_ELUA, s->name, "", L);
          done(&s->slots[k], v.me);
        }
      if (!found) idle(s, seq);
    }
    lua_settop(L, 3);
    lua_pushvalue(L, 2);  /* the failed call's garbage, before the next */
    lua_pcall(L, 0, 0, 0);
    lua_settop(L, 3);
  }
  fflush(NULL);
  _exit(0);
}

/* -- Creating and closing (the thread that owns the runtime) ----------- */

/* Encode global arg 1 (protected: a strict _G may raise). */
static int encodefn(lua_State *L) {
  size_t n;
  lua_getglobal(L, lua_tostring(L, 1));
  lua_replace(L, 1);
  const char *p = pcr__ser_encode_named(L, 1, &n, "function");
  lua_pushlstring(L, p, n);
  return 1;
}

/* Allocate the server; in zygote mode with the function encoded. */
static int newsrv(lua_State *L, pcr__export *x, const char *name, int byvalue,
                  char *err, size_t n) {
  size_t len = 0;
  const char *bytes = NULL;
  if (byvalue) {
    lua_pushcfunction(L, encodefn);
    lua_pushstring(L, name);
    if (lua_pcall(L, 1, 1, 0)) {
      snprintf(err, n, "pcr_export: '%s' cannot be sent to the zygote's "
               "workers: %s", name, lua_tostring(L, -1));
      lua_pop(L, 1);
      return PCR_EINVAL;
    }
    bytes = lua_tolstring(L, -1, &len);
  }
  pcr__xsrv *s = pcr__shm_alloc(sizeof *s + len);
  if (!s) {
    if (byvalue) lua_pop(L, 1);
    snprintf(err, n, "pcr_export: '%s': out of shared arena space (raise "
             "PCRUN_ARENA)", name);
    return PCR_ENOSHM;
  }
  memset(s, 0, sizeof *s);
  s->magic = XMAGIC;
  snprintf(s->name, sizeof s->name, "%s", name);
  snprintf(s->sig, sizeof s->sig, "%s", x->sig.text);
  s->fnlen = (uint32_t)len;
  if (len) memcpy(s->fn, bytes, len);
  if (byvalue) lua_pop(L, 1);
  x->srv = s;
  return 0;
}

/* Start worker i. Returns its pid or a negative errno. */
static int spawn(lua_State *L, pcr__export *x, int i) {
  pid_t pid;
  if (x->zy) {
    pid = pcr__zygote_fork(x->zy, x->srv, &x->pidfds[i]);
  } else {
    pid = pcr__proc_spawn(NULL, NULL);
    if (pid == 0) pcr__export_serve(L, x->srv, 0);
    if (pid > 0) pcr__proc_set_daemon(pid, 1);  /* an exit without
                                                   pcr_close must not wait
                                                   for it */
    if (pid > 0) x->pidfds[i] = openpidfd(pid);  /* our unreaped child */
  }
  if (pid > 0) x->pids[i] = pid;
  return pid;
}

int pcr__export_new(lua_State *L, pcr__zygote *zy, const char *name,
                    const char *sig, int nworkers, pcr__xerrfn onerr,
                    void *ud, pcr__export **out, char *err, size_t n) {
  char why[PCR_SIG_TEXT + 128];
  if (strlen(name) >= sizeof ((pcr__xsrv *)0)->name) {
    snprintf(err, n, "pcr_export: name '%.40s...' is longer than %d "
             "characters", name, (int)sizeof ((pcr__xsrv *)0)->name - 1);
    return PCR_EINVAL;
  }
  if (pcr__lua_getglobal(L, name)) {
    snprintf(err, n, "pcr_export: reading global '%s' raised: %s", name,
             lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    lua_pop(L, 1);
    return PCR_ELUA;
  }
  int isfn = lua_isfunction(L, -1);
  const char *tn = luaL_typename(L, -1);
  lua_pop(L, 1);
  if (!isfn) {
    snprintf(err, n, "pcr_export: global '%s' is not a function (%s)", name,
             tn);
    return PCR_EINVAL;
  }
  pcr__export *x = calloc(1, sizeof *x);
  if (!x) { snprintf(err, n, "pcr_export: out of memory"); return PCR_ENOMEM; }
  int r = pcr__sig_parse(&x->sig, sig, why, sizeof why);
  if (r) {
    snprintf(err, n, "pcr_export: '%s': %s", name, why);
    free(x);
    return r;
  }
  x->zy = zy;
  x->onerr = onerr;
  x->onerr_ud = ud;
  x->nworkers = nworkers < 1 ? 1 : nworkers > 64 ? 64 : nworkers;
  for (int i = 0; i < 64; i++) x->pidfds[i] = -1;
  pthread_mutex_init(&x->mu, NULL);
  if ((r = newsrv(L, x, name, zy != NULL, err, n))) {
    pthread_mutex_destroy(&x->mu);
    free(x);
    return r;
  }
  for (int i = 0; i < x->nworkers; i++) {
    int pid = spawn(L, x, i);
    if (pid < 0) {
      snprintf(err, n, "pcr_export: '%s': cannot start a worker: %s", name,
               strerror(-pid));
      pcr__export_shut(x);
      pcr__export_free(x, 0);
      return PCR_ESYS;
    }
  }
  void *code;
  ffi_closure *cl = ffi_closure_alloc(sizeof *cl, &code);
  if (!cl || ffi_prep_closure_loc(cl, &x->sig.cif, onclosure, x, code)
      != FFI_OK) {
    snprintf(err, n, "pcr_export: '%s': libffi cannot make a closure", name);
    if (cl) ffi_closure_free(cl);
    pcr__export_shut(x);
    pcr__export_free(x, 0);
    return PCR_ENOMEM;
  }
  x->closure = cl;
  x->code = code;
  *out = x;
  return 0;
}

void pcr__export_shut(pcr__export *x) {
  pcr__xsrv *s = x->srv;
  atomic_store(&s->closing, 1);
  atomic_fetch_add(&s->posted, 1);  /* a sleeper about to wait returns */
  atomic_fetch_add(&s->freed, 1);
  pcr__futex_wake(&s->posted, INT32_MAX);
  pcr__futex_wake(&s->freed, INT32_MAX);
  for (int k = 0; k < XSLOTS; k++)
    pcr__futex_wake(&s->slots[k].state, INT32_MAX);
  while (atomic_load(&x->inflight) > 0) usleep(1000);
}

void pcr__export_forget(pcr__export *x) {
  for (int i = 0; i < x->nworkers; i++)  /* this process's copies only */
    if (x->pidfds[i] >= 0) close(x->pidfds[i]);
  free(x);  /* the closure and srv stay: the opener's (a fork shares them) */
}

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* Wait until the process of pidfd fd has exited or deadline (< 0:
** never) has passed. Returns whether it exited. */
static int pidfd_wait(int fd, double deadline) {
  int r;
  while ((r = pcr__pidfd_wait(fd, deadline)) == -EINTR) {}
  return r != 0;  /* cannot wait: assume gone */
}

/* Reap our exited child pid, known by pidfd fd, unless someone already
** did (pcr__proc_sweep, pcr_kill_children): the pid may then name another
** process. WNOWAIT: the registry in proc.c does the reaping. */
static void reapown(int pid, int fd) {
  siginfo_t si;
  int st;
  memset(&si, 0, sizeof si);
  if (waitid((idtype_t)P_PIDFD, (id_t)fd, &si, WEXITED | WNOHANG | WNOWAIT)
      == 0) {
    if (si.si_pid == pid) pcr__proc_wait(pid, -1, &st);
  } else if (errno == EINVAL && pcr__proc_is_child(pid)) {
    pcr__proc_wait(pid, -1, &st);  /* kernel < 5.4: as before pidfds */
  }
}

void pcr__export_free(pcr__export *x, int park) {
  /* Workers leave once they see `closing`; one stuck in a long call is
  ** killed after a short grace. None may outlive srv, which it writes.
  ** Through the pidfds: a pid reaped by the zygote or by a sweep may
  ** already name an unrelated process. */
  double until = pcr__now() + 0.5;
  for (int i = 0; i < x->nworkers; i++) {
    int pid = x->pids[i], fd = x->pidfds[i], st;
    if (fd >= 0) {
      if (pid > 0 && !pidfd_wait(fd, until)) {
        syscall(SYS_pidfd_send_signal, fd, SIGKILL, NULL, 0u);
        pidfd_wait(fd, -1);
      }
      if (pid && !x->zy) reapown(pid > 0 ? pid : -pid, fd);
      close(fd);
      continue;
    }
    /* No pidfd (kernel < 5.3): by pid. */
    if (pid < 0 && !x->zy) pcr__proc_wait(-pid, -1, &st);  /* dead already */
    if (pid <= 0) continue;
    if (pcr__proc_wait_any(pid, until) == 0) {
      pcr__proc_signal(pid, SIGKILL);
      pcr__proc_wait_any(pid, -1);
    }
    if (!x->zy) pcr__proc_wait(pid, -1, &st);  /* the zygote reaps its own */
  }
  if (park) {
    /* The host may still hold the function pointer, and a thread may be
    ** between entering it and counting itself in flight: keep what a
    ** call reads (x, the closure, srv saying `closing`), so a late call
    ** fails with PCR_ECLOSED instead of touching freed memory. Kept
    ** reachable, and small: one runtime per process. */
    static pcr__export *parked;
    for (int i = 0; i < x->nworkers; i++) x->pids[i] = 0, x->pidfds[i] = -1;
    x->nworkers = 0;
    x->zy = NULL;
    x->next = parked;
    parked = x;
    return;
  }
  if (x->closure) ffi_closure_free(x->closure);
  pcr__shm_free(x->srv);
  pthread_mutex_destroy(&x->mu);
  free(x);
}
