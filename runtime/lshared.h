/* The Lua binding of shared objects (lshared.c), as lpcrun.c uses it. */
#ifndef PCR_LSHARED_H
#define PCR_LSHARED_H

#include <lauxlib.h>
#include <lua.h>
#include "shm.h"

/* Push the metatable name (made on first use) of a class: methods (and
** more, if not NULL) in __index, the metamethods meta, __name. Returns
** whether it was made now. */
int pcr__lua_class(lua_State *L, const char *name, const luaL_Reg *methods,
                   const luaL_Reg *more, const luaL_Reg *meta);

/* Add the shared-object functions and metatables to the table on top. */
void pcr__lshared_open(lua_State *L);

/* Take one reference to the object of every live handle of this process,
** for a child about to be forked; *out (malloc'd) lists them. Returns the
** count, or -1 out of memory. */
int pcr__lshared_hold(pcr_obj ***out);

/* Messages. While a transport (a queue, a pipe: each message decoded
** once) encodes or decodes (pcr__ser_msg), a handle hands its reference
** over with the message: the encoder takes one, the decoder adopts it.
** Otherwise (pcrun.encode and pcrun.decode, whose output may be decoded
** any number of times, or never) an encode takes none and each decode
** takes its own. msg_begin starts a message (dropping what a failed
** encode left); msg_end ends it: sent, the references travel with it;
** not sent, they are dropped. */
void pcr__msg_begin(void);
void pcr__msg_end(int sent);

/* In a child just forked: forget what the parent's handles hold. */
void pcr__lshared_forked(void);

/* Whether the hook set on L is the one Ctrl-C sets (luajit's and the
** CLI's: call, return and count 1), not a debugger's or a profiler's. */
int pcr__lua_sigint(lua_State *L);

/* Drop this process's own references (a child about to _exit). */
void pcr__lshared_exit(void);

/* For the binding files of other kinds (ldict.c). A kind numbers a
** handle class; the handle of the userdata at 1 is checked for it. */
#define PCR_LKIND_DICT 10
/* Wrap o (its reference adopted) as a handle of kind; returns the handle. */
void *pcr__lshared_push(lua_State *L, pcr_obj *o, int kind);
/* The object of the handle at index 1, or an error naming the method. */
pcr_obj *pcr__lshared_check(lua_State *L, int kind, const char *method);
/* The object of a handle (an ffi call's void *), or NULL. */
pcr_obj *pcr__lshared_fast(void *ud, int kind);
/* Raise "who: out of shared arena space (raise PCRUN_ARENA ...)". */
int pcr__lshared_nospace(lua_State *L, const char *who);
/* Make the class of kind (core.<Name> = metatable). */
void pcr__lshared_class(lua_State *L, int kind, const luaL_Reg *methods);
/* The arena offsets of the references the message being encoded has
** taken (between pcr__msg_begin and pcr__msg_end). */
size_t pcr__msg_refs(const uint64_t **out);
/* Add pcrun.Dict (ldict.c). */
void pcr__ldict_open(lua_State *L);

#endif
