/* The handle core of the Lua binding: one registry of this process's live
** handles (connections and arena objects), the message-reference
** transaction every transport uses, and the blocking-call helpers.
**
** A kind of handle (queue, lock, connection...) registers once, from its
** binding file's open function, with a pcr_hkind: metatable name, methods,
** the bytes it keeps after the pcr_handle (its own state), and hooks. Then:
**   id = pcr__handle_register(L, &kind);    core.<Name> = its metatable
**   h = pcr__handle_push(L, o, id);          wrap o, adopting its reference
**   h = pcr__handle_check(L, id, "get");     argument 1, or raise
**   st = pcr__handle_extra(h);               the kind's own state
** The core gives every kind __gc, __tostring, __eq, __serialize and
** __deserialize: a handle records the pid that owns its reference, so a
** forked copy that collects an inherited handle drops nothing of the
** parent's (the parent holds the child's references and drops them when
** it reaps it). Inside a message (pcr__ser_inmsg) the sender's encode
** takes a reference with pcr__msg_ref and the receiver's decode adopts
** it; the transport commits (pcr__msg_end(1)) once the frame is sent, or
** rolls back (pcr__msg_end(0)) and the references go. */
#ifndef PCR_LHANDLE_H
#define PCR_LHANDLE_H

#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include "shm.h"
#include "futex.h"

typedef struct pcr_handle {
  pcr_obj *o;                     /* the arena object, or NULL */
  uint32_t magic;                 /* PCR_HANDLE_MAGIC */
  int kind;                       /* from pcr__handle_register */
  uint32_t owner;                 /* the process whose reference this is */
  int open;                       /* 0 once released */
  long lidx[2];                   /* its references' ledger entries */
  struct pcr_handle *prev, *next; /* live handles of this process */
  uint64_t extra[];               /* the kind's state; userdata are only
                                     8-aligned in LuaJIT */
} pcr_handle;

#define PCR_HANDLE_MAGIC 0x6a624f50u

/* What fork takes for a child: one reference (drop undoes it). */
typedef void (*pcr_hold_fn)(pcr_obj *o);

typedef struct pcr_hkind {
  const char *name;                /* metatable name: "pcrun.Queue" */
  const luaL_Reg *methods, *more;  /* __index (more may be NULL) */
  size_t extra;                    /* bytes of state after the handle */
  int base;                        /* a kind check() also accepts this
                                      one for (JoinableQueue: Queue); -1 */
  /* Optional hooks; NULL for none. */
  void (*release)(pcr_handle *h);  /* free the state (any process) */
  void (*forked)(pcr_handle *h);   /* child just forked: forget the
                                      parent's parts of the state */
  /* Take one more reference of everything h holds for a child about to
  ** be forked: add(o, drop) per reference, drop run at reap. NULL: one
  ** reference of h->o, dropped by pcr__obj_unref. */
  int (*hold)(pcr_handle *h, int (*add)(pcr_obj *, pcr_hold_fn));
  int (*ready)(pcr_handle *h);         /* select: a wait would not block */
  pcr_waitq *(*waitq)(pcr_handle *h);  /* select: where to sleep */
  /* The references h owns, as tagged offsets (frame.h), at most 2;
  ** returns how many. NULL: h->o's, plain. */
  int (*refs)(pcr_handle *h, uint64_t out[2]);
  /* Crossing a process: NULL for the core's (offset and kind). */
  lua_CFunction serialize, deserialize;
} pcr_hkind;

/* Register a kind; with the core module's table on top, stores the
** metatable there under the name after "pcrun.". Returns its id. */
int pcr__handle_register(lua_State *L, const pcr_hkind *k);
const pcr_hkind *pcr__handle_kindinfo(int id);

/* Push a new handle of kind id on o (its reference is adopted and
** recorded in the ledger). o may be NULL: a kind whose state is all in
** extra (a connection), or a creator that makes the object next with
** &h->lidx[0] as its ledger entry (pcr__frame_obj_new: owned from its
** allocation on), then sets h->o (or releases h when that failed). */
pcr_handle *pcr__handle_push(lua_State *L, pcr_obj *o, int id);
/* Record h's references in this process's ledger (a forked process:
** whoever reaps it drops them if it is killed). push does it for a
** handle on an object; a kind whose state is filled after push (a
** connection) calls it then. */
void pcr__handle_own(pcr_handle *h);
/* The kind of the handle at idx, or -1 if it is none. */
int pcr__handle_kind(lua_State *L, int idx);
/* Argument 1 as a live handle of kind id (or one whose base is id), or
** raise "pcrun.Queue:get: call it as obj:get(...) on a pcrun.Queue". */
pcr_handle *pcr__handle_check(lua_State *L, int id, const char *method);
static inline void *pcr__handle_extra(pcr_handle *h) { return h->extra; }
/* Drop what h holds (in the owner only) and unlist it; idempotent. */
void pcr__handle_release(pcr_handle *h);
/* Whether this process owns h's references (not a forked copy). */
static inline int pcr__handle_owned(const pcr_handle *h) {
  return h->owner == pcr__self();
}

/* Messages: "pcrun.Queue:get", the method's name in errors. */
const char *pcr__handle_who(lua_State *L, int id, const char *method);
/* Raise the error fmt, ... (as luaL_error) recording code ("closed",
** "eof") for it: core.errcode(err) returns the code, so that the Lua
** layer tests codes, not the text of messages. */
int pcr__lua_raise(lua_State *L, const char *code, const char *fmt, ...);
/* Raise "<who>: out of shared arena space (arena is N MiB; raise
** PCRUN_ARENA, e.g. PCRUN_ARENA=2G)". */
int pcr__handle_nospace(lua_State *L, const char *who);
/* A timeout argument as a deadline (< 0 none), or raise. */
double pcr__handle_timeout(lua_State *L, int idx, int id, const char *m);

/* Arena pressure: after an allocation failed, run a full collection in
** this process (garbage handles free their blocks, as LuaJIT collects
** before it reports out of memory). Returns 1 when arena space was freed
** and the caller should try once more, else 0. */
int pcr__lua_collect(lua_State *L);

/* The message-reference transaction. begin opens one for a new message,
** above any being encoded (a hook or finalizer that sends while another
** message is encoded gets its own), and rolls back those a raise left
** open at its depth or a shallower one; ref takes a reference of o in
** role (PCR_REF_*, frame.h) for the receiver (0, or -1 out of memory);
** refs lists those the innermost message took so far as tagged offsets,
** its frame's list of what it carries; end commits (sent) or rolls back
** (each reference dropped) the innermost message. */
void pcr__msg_begin(void);
int pcr__msg_ref(pcr_obj *o, unsigned role);
size_t pcr__msg_refs(const uint64_t **out);
void pcr__msg_end(int sent);
/* Decode a received frame's payload as a message and push its value:
** the handles it makes adopt the frame's taken references (frame.h); those
** not adopted are dropped, whether the decode succeeds or raises. mark:
** pcr__taken_mark() read before the frame was received. */
void pcr__msg_decode(lua_State *L, const char *p, size_t n, size_t mark);
/* Encode the value at idx as a message (PCR_SER_MSG; with remote, for
** another node: PCR_SER_REMOTE); if the encode raises, the references it
** took are rolled back first. */
const char *pcr__msg_encode(lua_State *L, int idx, size_t *n,
                            const char *root, int remote);

/* Fork and exit. hold takes the child's references of every live handle
** (*out, malloc'd, for pcr__lhandle_drop at reap); forked runs in the
** child; exit drops this process's own references. */
typedef struct pcr_holds pcr_holds;
pcr_holds *pcr__lhandle_hold(void);
void pcr__lhandle_drop(void *holds);
void pcr__lhandle_forget(pcr_holds *holds);  /* the child's copy of it */
void pcr__lhandle_forked(void);
void pcr__lhandle_exit(void);

/* Blocking calls. A call waits in slices of PCR_SLICE seconds so that
** Ctrl-C (which sets a hook) raises "interrupted" between slices. op(ctx,
** d, first) returns 0 (or a positive result) when done, -ETIMEDOUT when
** the deadline d passed, another negative errno for the caller; with
** quick, a first try gets deadline 0. Returns -ETIMEDOUT only once the
** caller's deadline passed. */
#define PCR_SLICE 0.25
typedef int (*pcr_waitop)(void *ctx, double d, int first);
int pcr__lua_blocking(lua_State *L, double deadline, int quick,
                      pcr_waitop op, void *ctx);
double pcr__lua_sliced(double deadline);
/* EINTR or a slice's end: raise "interrupted" if Ctrl-C is pending. */
void pcr__lua_interrupted(lua_State *L);
/* Whether the hook set on L is the one Ctrl-C sets. */
int pcr__lua_sigint(lua_State *L);

/* Push the metatable name (made on first use) of a class: methods (and
** more, if not NULL) in __index, the metamethods meta, __name. Returns
** whether it was made now. */
int pcr__lua_class(lua_State *L, const char *name, const luaL_Reg *methods,
                   const luaL_Reg *more, const luaL_Reg *meta);

/* Open the core: wait_many, ready (select over queues and events). */
void pcr__lhandle_open(lua_State *L);

/* Binding files: each registers its kinds and functions into the core
** module's table on top. */
void pcr__lconn_open(lua_State *L);
void pcr__lconn_exit(void);  /* drops the references of deferred sockets */
void pcr__lqueue_open(lua_State *L);
void pcr__lsync_open(lua_State *L);
void pcr__larray_open(lua_State *L);
void pcr__lser_open(lua_State *L);
void pcr__ldict_open(lua_State *L);

#endif
