/* Exported functions: a Lua function behind a plain C function pointer (a
** libffi closure) that any host thread may call; each call runs in a
** worker process, through request slots in the shared arena. */
#ifndef PCR_EXPORT_H
#define PCR_EXPORT_H

#include "ffisig.h"

#include <lua.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct pcr__xsrv pcr__xsrv;
typedef struct pcr__zygote pcr__zygote;

/* What a failed call reports besides its thread-local status. */
typedef void (*pcr__xerrfn)(void *ud, const char *name, int code,
                            const char *msg);

typedef struct pcr__export {
  struct pcr__export *next;
  pcr__xsrv *srv;             /* arena: slots, name, signature, function */
  void *closure;              /* ffi_closure */
  void *code;                 /* what the host calls */
  pcr__zygote *zy;            /* forks workers in zygote mode, else NULL */
  pcr__xerrfn onerr;
  void *onerr_ud;
  pthread_mutex_t mu;         /* guards pids[], pidfds[]; serializes
                                 respawns */
  _Atomic int inflight;       /* host threads inside a call */
  _Atomic int64_t nextscan;   /* µs (pcr__now): next scan for dead idle
                                 workers by a waiting caller */
  int nworkers;
  int pids[64];               /* worker pids; 0 = none, -pid = died (not
                                 zygote mode: reaped at free) */
  int pidfds[64];             /* pidfd per worker, opened at spawn: liveness
                                 and signals never hit a reused pid; -1 =
                                 none (kernel without pidfd_open) */
  pcr__sig sig;               /* last: the cif points into it */
} pcr__export;

/* Create export `name` of signature sig for the Lua function that global
** `name` holds in L: fork nworkers workers (from the zygote if zy), make
** the closure. *out receives it. Returns 0 or PCR_E* with a message in
** err. Parent, on the thread that owns L. */
int pcr__export_new(lua_State *L, pcr__zygote *zy, const char *name,
                    const char *sig, int nworkers, pcr__xerrfn onerr,
                    void *ud, pcr__export **out, char *err, size_t n);

/* Make calls in flight fail with PCR_ECLOSED and new ones fail at once;
** returns when no host thread is inside a call. Parent. */
void pcr__export_shut(pcr__export *x);

/* Stop and reap the workers (those forked by this process; the zygote
** reaps its own), then free x; or, with park (x's function was handed
** out), keep x, its closure and srv, so that a call that comes late fails
** with PCR_ECLOSED. After pcr__export_shut. Parent. */
void pcr__export_free(pcr__export *x, int park);

/* Free x's memory in a process forked from the one that made it: the
** workers, closure and srv stay untouched, as they are the maker's. */
void pcr__export_forget(pcr__export *x);

/* A worker's life: serve calls of srv with L until the export closes.
** byvalue: the function is decoded from srv (zygote workers), else it is
** global `name` of L (forked from the host). Never returns. */
void pcr__export_serve(lua_State *L, pcr__xsrv *srv, int byvalue);

/* This thread's status of its last call to an exported function. */
int pcr__export_status(const char **msg);

#endif
