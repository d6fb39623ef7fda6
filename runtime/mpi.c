/* MPI: the binding pcrun.cluster's transport uses (core.mpi), compiled
** against the mpi.h found at build time (Open MPI and MPICH differ in
** their binary interface, so no hand-written FFI). MPI is initialised only
** when a launcher started this process (mpirun, srun) and PCRUN_MPI is not
** 0. Nothing here blocks: sends are MPI_Isend from pooled buffers,
** completed by MPI_Testsome; receives are MPI_Improbe then MPI_Mrecv into
** a buffer that only grows. Only the process that initialised MPI may call
** it: forked workers get an error, not a corrupted rank. */
#include "futex.h"
#include "lhandle.h"
#include "proc.h"
#include "ser.h"

#include <mpi.h>

#include <dlfcn.h>
#include <lauxlib.h>
#include <lua.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int inited, finalized, rank_, size_ = 1;
static pid_t owner;  /* the process that ran MPI_Init */
static char host[MPI_MAX_PROCESSOR_NAME + 1];

/* Sends in flight and the buffers they use; a finished send's buffer goes
** back to the pool (at most POOLED kept). A string is sent from its own
** bytes, anchored in the registry (ref) until the send completes.
** On the wire the MPI tag is tag * 4 + kind; "bye" is an empty message. */
typedef struct sbuf { char *p; size_t cap; int ref; } sbuf;
#define POOLED 16
#define POOLMAX ((size_t)4 << 20)  /* larger buffers are freed, not kept */
static sbuf pool[POOLED];
static int npool;
static MPI_Request *reqs;
static sbuf *busy;
static int nreq, capreq;
static int *doneidx;

static char *rbuf;  /* the receive buffer: only grows */
static size_t rcap;

/* The largest send buffer over POOLMAX, kept for the next big message:
** a fresh 64 MiB malloc is an mmap whose page faults cost as much as the
** copy into it (one buffer, as rbuf: it only grows). */
static sbuf spare;

/* recv("view") hands a relayed frame on without a Lua string: the
** payload stays in rbuf, named by this key (a light userdata) until the
** next recv; lconn.c's _send_raw writes it to a worker's connection. */
static char viewkey;
static size_t viewn;
static int viewok;
extern int (*pcr__raw_view)(const void *key, const char **p, size_t *n);

static int getview(const void *key, const char **p, size_t *n) {
  if (key != &viewkey || !viewok || getpid() != owner) return -1;
  *p = rbuf;
  *n = viewn;
  return 0;
}

static int launched(void) {
  const char *v = getenv("PCRUN_MPI");
  if (v && strcmp(v, "0") == 0) return 0;
  return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") ||
         getenv("PMIX_RANK") || getenv("PMI_RANK") || getenv("MPI_LOCALNRANKS");
}

/* Workers are forked children: MPI's and UCX's crash handlers would
** turn a crashing task into a hung or aborted rank. */
static void forked(void) {
  static const int sigs[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT };
  for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
    signal(sigs[i], SIG_DFL);
}

static void reap(lua_State *L, int all);
static int growreqs(void);

/* Rank 0 while agents serve a cluster: an exit without pool:close()
** tells them to stop ("bye", kind 9 in Lua), or their MPI_Finalize never comes
** and ours waits for it. */
static int serving;

/* MPI_Finalize waits for every rank: one that never gets there (wedged,
** or a script that never reached pcrun.cluster on rank 0) must not hang
** the job for ever. */
static void late(int sig) {
  static const char msg[] = "pcrun: MPI_Finalize did not return within 60 s "
                            "(another rank never finalized); exiting\n";
  ssize_t w = write(2, msg, sizeof msg - 1);
  (void)w;
  (void)sig;
  _exit(1);
}

static void finish(void) {
  if (!inited || finalized || getpid() != owner) return;
  if (serving) {
    static char bye;
    serving = 0;
    for (int r = 0; r < size_; r++) {
      if (r == rank_ || growreqs() < 0) continue;
      if (MPI_Isend(&bye, 0, MPI_BYTE, r, 0, MPI_COMM_WORLD, &reqs[nreq])
          == MPI_SUCCESS)
        busy[nreq++] = (sbuf){ NULL, 0, LUA_NOREF };
    }
  }
  /* Sends still in flight get a few seconds (a dead peer never takes
     them), then are cancelled: finalize must not hang. */
  double end = pcr__now() + 5;
  while (nreq > 0 && pcr__now() < end) {
    reap(NULL, 0);
    if (nreq) usleep(1000);
  }
  reap(NULL, 1);
  finalized = 1;
  signal(SIGALRM, late);
  alarm(60);
  MPI_Finalize();
  alarm(0);
}

/* Keep this module and libmpi mapped until exit: UCX crashes at exit if
** libmpi is unloaded after MPI_Finalize, and Open MPI's plugins need its
** symbols global. */
static void pin(void) {
  Dl_info di;
  if (dladdr((void *)&MPI_Init, &di) && di.dli_fname)
    dlopen(di.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NODELETE);
  if (dladdr((void *)&pin, &di) && di.dli_fname)
    dlopen(di.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* Called when the core module opens: initialise when launched. */
void pcr__mpi_open(void) {
  if (inited || !launched()) return;
  pin();
  int provided, ok = 0;
  MPI_Initialized(&ok);
  if (!ok && MPI_Init_thread(NULL, NULL, MPI_THREAD_SINGLE, &provided)
             != MPI_SUCCESS)
    return;
  inited = 1;
  owner = getpid();
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  int n = 0;
  MPI_Get_processor_name(host, &n);
  host[n < 0 ? 0 : n] = 0;
  pcr__fork_hook = forked;
  pcr__raw_view = getview;
  atexit(finish);
}

static void check(lua_State *L, const char *who) {
  if (!inited) luaL_error(L, "pcrun.mpi.%s: MPI is not initialised (not "
                             "started by mpirun or srun, or PCRUN_MPI=0)", who);
  if (finalized) luaL_error(L, "pcrun.mpi.%s: MPI was finalized", who);
  if (getpid() != owner)
    luaL_error(L, "pcrun.mpi.%s: MPI belongs to process %d (rank %d); a "
                  "forked process (%d) cannot call it", who, (int)owner,
               rank_, (int)getpid());
}

static int mpierr(lua_State *L, const char *who, int code) {
  char s[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(code, s, &n);
  return luaL_error(L, "pcrun.mpi.%s: %s", who, s);
}

/* Retire finished sends (all: cancel the rest, at exit). L: where the
** anchored strings are (NULL at exit: they go with the process). */
static void reap(lua_State *L, int all) {
  if (nreq == 0) return;
  int nd = 0;
  if (all) {
    for (int i = 0; i < nreq; i++) {
      int f = 0;
      MPI_Test(&reqs[i], &f, MPI_STATUS_IGNORE);
      if (!f) {
        MPI_Cancel(&reqs[i]);
        MPI_Request_free(&reqs[i]);
      }
      doneidx[nd++] = i;
    }
  } else if (MPI_Testsome(nreq, reqs, &nd, doneidx, MPI_STATUSES_IGNORE)
             != MPI_SUCCESS || nd == MPI_UNDEFINED) {
    nd = 0;
  }
  if (nd == 0) return;
  for (int k = 0; k < nd; k++) {
    sbuf *b = &busy[doneidx[k]];
    if (b->ref != LUA_NOREF) {
      if (L) luaL_unref(L, LUA_REGISTRYINDEX, b->ref);
    } else if (b->p && npool < POOLED && b->cap <= POOLMAX) {
      pool[npool++] = *b;
    } else if (b->p && b->cap > POOLMAX && b->cap > spare.cap) {
      free(spare.p);
      spare = *b;
    } else {
      free(b->p);
    }
    b->p = NULL;
    b->cap = SIZE_MAX;  /* done */
  }
  int j = 0;
  for (int i = 0; i < nreq; i++)
    if (busy[i].cap != SIZE_MAX) { reqs[j] = reqs[i]; busy[j] = busy[i]; j++; }
  nreq = j;
}

/* A pooled buffer of at least n bytes. */
static int getbuf(sbuf *out, size_t n) {
  int best = -1;
  for (int i = 0; i < npool; i++)
    if (pool[i].cap >= n && (best < 0 || pool[i].cap < pool[best].cap))
      best = i;
  if (best >= 0) {
    *out = pool[best];
    pool[best] = pool[--npool];
    return 0;
  }
  if (n > POOLMAX && spare.cap >= n) {
    *out = spare;
    spare = (sbuf){ NULL, 0, LUA_NOREF };
    return 0;
  }
  size_t cap = n < 4096 ? 4096 : n;
  out->p = malloc(cap);
  out->cap = cap;
  out->ref = LUA_NOREF;
  return out->p ? 0 : -1;
}

static int growreqs(void) {
  if (nreq < capreq) return 0;
  int cap = capreq ? 2 * capreq : 32;
  void *a = realloc(reqs, sizeof *reqs * (size_t)cap);
  if (a) reqs = a;
  void *b = realloc(busy, sizeof *busy * (size_t)cap);
  if (b) busy = b;
  void *c = realloc(doneidx, sizeof *doneidx * (size_t)cap);
  if (c) doneidx = c;
  if (!a || !b || !c) return -1;
  capreq = cap;
  return 0;
}

/* mpi.encode(v [, root]): pcrun.encode's bytes, as for another node. */
static int l_encode(lua_State *L) {
  luaL_checkany(L, 1);
  size_t n;
  const char *p = pcr__ser_encode_as(L, 1, &n, luaL_optstring(L, 2, "value"),
                                     PCR_SER_REMOTE);
  lua_pushlstring(L, p, n);
  return 1;
}

static int destarg(lua_State *L, int idx, const char *who) {
  lua_Integer d = luaL_checkinteger(L, idx);
  if (d < 0 || d >= size_ || d == rank_)
    luaL_error(L, "pcrun.mpi.%s: no rank %d to send to", who, (int)d);
  return (int)d;
}

/* mpi.send(dest, tag, kind, value [, root]): send value to dest without
** waiting; kind (0-3) travels in the MPI tag. A string goes as it is,
** from its own bytes; anything else is encoded for another node (arena
** handles refused, with the path under root) into a pooled buffer. */
static int l_send(lua_State *L) {
  check(L, "send");
  int dest = destarg(L, 1, "send");
  lua_Integer tag = luaL_checkinteger(L, 2);
  lua_Integer kind = luaL_checkinteger(L, 3);
  luaL_argcheck(L, kind >= 0 && kind <= 3, 3, "kind must be 0 to 3");
  luaL_argcheck(L, tag >= 0 && tag < (1 << 20), 2, "tag out of range");
  luaL_checkany(L, 4);
  const char *root = luaL_optstring(L, 5, "message");
  reap(L, 0);
  if (growreqs() < 0) return luaL_error(L, "pcrun.mpi.send: out of memory");
  size_t n;
  sbuf b;
  if (lua_type(L, 4) == LUA_TSTRING) {
    b.p = (char *)lua_tolstring(L, 4, &n);
    b.cap = n;
    lua_pushvalue(L, 4);
    b.ref = luaL_ref(L, LUA_REGISTRYINDEX);
  } else {
    /* raises naming the path */
    const char *p = pcr__ser_encode_as(L, 4, &n, root, PCR_SER_REMOTE);
    if (getbuf(&b, n) < 0)
      return luaL_error(L, "pcrun.mpi.send: out of memory");
    memcpy(b.p, p, n);
  }
  if (n > (size_t)INT32_MAX) {
    if (b.ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, b.ref);
    else free(b.p);
    return luaL_error(L, "pcrun.mpi.send: message of %f bytes is over "
                         "MPI's 2 GiB limit", (double)n);
  }
  int e = MPI_Isend(b.p, (int)n, MPI_BYTE, dest, (int)(tag * 4 + kind),
                    MPI_COMM_WORLD, &reqs[nreq]);
  if (e != MPI_SUCCESS) {
    if (b.ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, b.ref);
    else free(b.p);
    return mpierr(L, "send", e);
  }
  busy[nreq++] = b;
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

/* mpi.recv([decode]): one message if any has arrived (never waits):
** source, tag, kind, payload (a string, or the value decoded in place
** when decode is true). Nothing: nil. decode "view": a frame (kind 1-3,
** tag > 0) comes as a view of the receive buffer and its size instead of
** a string, valid until the next recv (an agent's relay: no copy). */
static int l_recv(lua_State *L) {
  check(L, "recv");
  int view = lua_type(L, 1) == LUA_TSTRING &&
             strcmp(lua_tostring(L, 1), "view") == 0;
  int decode = !view && lua_toboolean(L, 1);
  viewok = 0;
  reap(L, 0);
  int flag = 0;
  MPI_Message m;
  MPI_Status st;
  int e = MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &m,
                      &st);
  if (e != MPI_SUCCESS) return mpierr(L, "recv", e);
  if (!flag) return 0;
  int count = 0;
  MPI_Get_count(&st, MPI_BYTE, &count);
  if ((size_t)count > rcap) {
    size_t cap = rcap ? rcap : 65536;
    while (cap < (size_t)count) cap *= 2;
    char *p = malloc(cap);  /* not realloc: the old bytes are done with */
    if (!p) {  /* the message is still matched: take it somewhere */
      char c[1];
      MPI_Mrecv(c, 0, MPI_BYTE, &m, MPI_STATUS_IGNORE);
      return luaL_error(L, "pcrun.mpi.recv: out of memory for a message of "
                           "%d bytes", count);
    }
    free(rbuf);
    rbuf = p;
    rcap = cap;
  }
  e = MPI_Mrecv(rbuf, count, MPI_BYTE, &m, MPI_STATUS_IGNORE);
  if (e != MPI_SUCCESS) return mpierr(L, "recv", e);
  int kind = st.MPI_TAG & 3;
  lua_pushinteger(L, st.MPI_SOURCE);
  lua_pushinteger(L, st.MPI_TAG >> 2);
  if (count == 0 && st.MPI_TAG == 0) {  /* bye */
    lua_pushinteger(L, 9);
    lua_pushliteral(L, "");
    return 4;
  }
  lua_pushinteger(L, kind);
  if (view && kind >= 1 && st.MPI_TAG >> 2 > 0) {
    viewn = (size_t)count;
    viewok = 1;
    lua_pushlightuserdata(L, &viewkey);
    lua_pushinteger(L, count);
    return 5;
  }
  if (decode && kind <= 1) pcr__ser_decode(L, rbuf, (size_t)count, PCR_SER_TRUSTED);
  else lua_pushlstring(L, rbuf, (size_t)count);
  return 4;
}

/* mpi.pending(): sends not yet complete (after retiring finished ones). */
static int l_pending(lua_State *L) {
  check(L, "pending");
  reap(L, 0);
  lua_pushinteger(L, nreq);
  return 1;
}

/* mpi.abort(code): end every rank of the job now. */
static int l_abort(lua_State *L) {
  check(L, "abort");
  fflush(NULL);
  MPI_Abort(MPI_COMM_WORLD, (int)luaL_optinteger(L, 1, 1));
  return 0;
}

/* mpi.finalize(): end MPI in this process (exit does it otherwise). */
static int l_finalize(lua_State *L) {
  check(L, "finalize");
  finish();
  return 0;
}

/* mpi.serving(on): agents are serving this rank's cluster. */
static int l_serving(lua_State *L) {
  serving = lua_toboolean(L, 1);
  return 0;
}

static int l_info(lua_State *L) {
  lua_createtable(L, 0, 5);
  lua_pushboolean(L, inited && !finalized);
  lua_setfield(L, -2, "active");
  lua_pushinteger(L, rank_);
  lua_setfield(L, -2, "rank");
  lua_pushinteger(L, size_);
  lua_setfield(L, -2, "size");
  lua_pushstring(L, host);
  lua_setfield(L, -2, "host");
  lua_pushinteger(L, owner);
  lua_setfield(L, -2, "owner");
  char lib[MPI_MAX_LIBRARY_VERSION_STRING];
  int n = 0;
  MPI_Get_library_version(lib, &n);
  lua_pushlstring(L, lib, n > 0 ? (size_t)n : 0);
  lua_setfield(L, -2, "library");
  return 1;
}

static int l_rank(lua_State *L) {
  lua_pushinteger(L, rank_);
  return 1;
}

static int l_size(lua_State *L) {
  lua_pushinteger(L, size_);
  return 1;
}

void pcr__mpi_lopen(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"send", l_send}, {"encode", l_encode}, {"serving", l_serving}, {"recv", l_recv}, {"pending", l_pending},
    {"abort", l_abort}, {"finalize", l_finalize}, {"info", l_info},
    {"rank", l_rank}, {"size", l_size}, {NULL, NULL}
  };
  pcr__mpi_open();
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  lua_setfield(L, -2, "mpi");
}
