/* Native functions (host C functions called from Lua through libffi) and
** the conversions between Lua values and C values that exports share. */
#ifndef PCR_NATIVE_H
#define PCR_NATIVE_H

#include "ffisig.h"

#include <lua.h>

typedef void (*pcr__fn)(void);

/* One registered function; owned by its runtime's list. */
typedef struct pcr__native {
  struct pcr__native *next;
  pcr__fn fn;
  char name[64];
  pcr__sig sig;
} pcr__native;

/* Register fn under name in L (a function in the table that
** require "pcrun.nativereg" returns) and prepend it to *list. Returns 0 or
** PCR_EINVAL/PCR_ENOMEM with a message in err. Parent (or zygote). */
int pcr__native_add(lua_State *L, pcr__native **list, const char *name,
                    pcr__fn fn, const char *sig, char *err, size_t n);

/* Undo pcr__native_add of name (in *list and in L), if registered. */
void pcr__native_remove(lua_State *L, pcr__native **list, const char *name);

/* Push global name of L, protected (a strict _G's __index may raise).
** Returns 0, or a LUA_ERR* code with the message pushed instead. */
int pcr__lua_getglobal(lua_State *L, const char *name);

/* Free a list built by pcr__native_add (after the Lua state is closed). */
void pcr__native_free(pcr__native *list);

/* Install the preload of "pcrun.nativereg" in L. */
void pcr__native_open(lua_State *L);

/* Convert the Lua value at idx to a C value of kind. Returns 0, or -1
** with the reason in why ("must be a number, got string"). Strings point
** into the Lua value: keep it on the stack while v is used. */
int pcr__lua_toval(lua_State *L, int idx, int kind, pcr__val *v, char *why,
                   size_t n);

/* Push a C value of kind (nothing for void); returns the count pushed.
** 64-bit integers come back as numbers when exact, else as int64_t or
** uint64_t cdata; pointers as light userdata (NULL as nil). */
int pcr__lua_pushval(lua_State *L, int kind, const pcr__val *v);

#endif
