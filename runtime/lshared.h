/* The Lua binding of shared objects (lshared.c), as lpcrun.c uses it. */
#ifndef PCR_LSHARED_H
#define PCR_LSHARED_H

#include <lua.h>
#include "shm.h"

/* Add the shared-object functions and metatables to the table on top. */
void pcr__lshared_open(lua_State *L);

/* Take one reference to the object of every live handle of this process,
** for a child about to be forked; *out (malloc'd) lists them. Returns the
** count, or -1 out of memory. */
int pcr__lshared_hold(pcr_obj ***out);

/* In a child just forked: forget what the parent's handles hold. */
void pcr__lshared_forked(void);

/* Whether the hook set on L is the one Ctrl-C sets (luajit's and the
** CLI's: call, return and count 1), not a debugger's or a profiler's. */
int pcr__lua_sigint(lua_State *L);

/* Drop this process's own references (a child about to _exit). */
void pcr__lshared_exit(void);

#endif
