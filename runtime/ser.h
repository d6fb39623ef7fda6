/* ser.h -- the value serializer: Lua values to bytes and back.
   Owns the wire format (docs/format.md); knows nothing of pipes or the arena,
   which carry the bytes it produces. */
#ifndef PCR_SER_H
#define PCR_SER_H

#include <stddef.h>
#include <lua.h>

#define PCR_SER_VERSION 2      /* wire format version written and read */
#define PCR_SER_MAXDEPTH 1000  /* nesting limit, encoder and decoder */
#define PCR_SER_TRUSTED 1      /* decode flag: allow code and capabilities */
#define PCR_SER_MSG 2          /* decode flag: a transport's message */
#define PCR_SER_REMOTE 4       /* encode flag: for another node */

/* What the encode or decode calling a hook is, for pcrun's own hooks:
** PCR_SER_MSG in a transport's message (a queue, a pipe: decoded exactly
** once), where a handle's reference travels with the message;
** PCR_SER_TRUSTED when the decode trusts its input. It is the state of
** that encode or decode, not of the process: a hook written in C gets it
** as a second argument (a light userdata that only the serializer makes),
** so an encode or decode nested in a hook, or one that raised, cannot
** change what an outer one's hooks see. Returns those flags for argument
** arg of a hook; 0 when the hook was called otherwise. */
int pcr__ser_hookflags(lua_State *L, int arg);

/* Encodes the value at stack index idx. Returns a buffer owned by the
   encoder state of L (a userdata in the registry, reused): it stays valid
   until the next encode on the same L at the same nesting level, and the
   caller must not free it. *len receives its size. A value that cannot cross
   raises a Lua error naming its path from "value"; nothing leaks. A
   __serialize hook may itself encode (nested calls use their own buffer).
   Either process may call it; not between fork and exec. */
const char *pcr__ser_encode(lua_State *L, int idx, size_t *len);

/* As pcr__ser_encode, naming the root root in error paths ("args" gives
   "pcrun.encode: args[2].conn: cannot send a userdata"). */
const char *pcr__ser_encode_named(lua_State *L, int idx, size_t *len,
                                  const char *root);

/* As pcr__ser_encode_named, with flags: PCR_SER_MSG for a transport's
   message; PCR_SER_REMOTE for another node (pcrun.cluster), where values
   of capability types (arena handles, processes) are refused. Hooks are
   told PCR_SER_MSG (pcr__ser_hookflags); an encode nested in a hook has
   flags of its own. */
const char *pcr__ser_encode_as(lua_State *L, int idx, size_t *len,
                               const char *root, int flags);

/* Decodes len bytes at buf and pushes exactly one value. flags is 0 or
   PCR_SER_TRUSTED; without it only plain data is built: functions,
   modules, module fields, capability types (pcrun's processes, connections
   and shared objects) and unregistered metatables are refused, and table
   sizes are bounded by the input (docs/format.md, Threat model).
   PCR_SER_MSG may be added for a transport's message.
   Truncated or corrupt input raises a Lua error; buf is only read, within
   [buf, buf + len), and may be freed once the call returns. */
void pcr__ser_decode(lua_State *L, const char *buf, size_t len, int flags);

/* Forgets the reverse index of package.loaded so that the next encode
   rebuilds it (call after fork or after loading many modules). */
void pcr__ser_names_reset(lua_State *L);

/* Adds the Lua-facing functions to the table on top of the stack:
   encode(v [, root]) -> string, decode(s [, opts]) -> v,
   register_type(name, mt), refresh_names(), and format_version. */
void pcr__ser_open(lua_State *L);

#endif
