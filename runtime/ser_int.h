/* ser_int.h -- what the serializer's files share: the wire format's tags,
   the pointer map, the per-state data (buffers, names index, layout) and
   the internals one file defines for another. Only ser*.c include it. */
#ifndef PCR_SER_INT_H
#define PCR_SER_INT_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "ser.h"
#include "ser_fast.h"

/* -- Format --------------------------------------------------------------- */

#define MAGIC 0xB7
#define F_REFS 0x01        /* header flag: back-references occur */
#define TCDATA 10          /* lua_type() of LuaJIT cdata */
#define SSTR 0x80          /* 0x80..0xBF: string of 0..63 bytes */
#define SINT 0xC0          /* 0xC0..0xFF: integer 0..63 */
#define SHORT 64           /* strings this long or longer may be shared */
#define MAXNEST 8          /* encodes running inside __serialize hooks */
#define NFILTER 65536      /* bits in the names filter (8 KB) */

enum {
  T_NIL, T_FALSE, T_TRUE, T_NUM, T_INT, T_STR, T_TAB, T_TABMT, T_FUNC,
  T_REF, T_UPREF, T_MOD, T_FIELD, T_TYPE, T_EXT, T_I64, T_U64, T_CDATA,
  T_AI32, T_ANUM
};

#define PACKMIN 4          /* shortest array written as T_AI32/T_ANUM */
#define KCACHE 64          /* string keys kept on hand by the encoder */
#define E_KC 8             /* env slots E_KC .. E_KC + KCACHE - 1: those keys */

/* Slots of the state's environment table. */
enum { E_NM = 1, E_TYPES, E_CDESC, E_CMAKE, E_CAPS };

/* Kinds of names (low 2 bits of a names-map value). */
enum { K_MOD, K_FIELD, K_TYPE };

#define INPROG (1u << 31)  /* seen-map flag: __serialize result pending */

/* -- Pointer map (open addressing, cleared in O(1) by generation) --------- */

typedef struct pslot {
  const void *k;
  uint32_t v, gen;
} pslot;

typedef struct pmap {
  pslot *s;
  uint32_t mask, n, gen;
  int mix;  /* scramble keys: for maps where lookups mostly miss */
} pmap;

/* -- Tables met by one encode -------------------------------------------- */

/* Every table must be recorded (a second visit is a back-reference), but
   most are visited once, and a hash map over tens of thousands of tables
   misses the cache on every insert. So a table first sets one bit in a
   bitmap of the address space: one bit per GCtab size (64 bytes, 32
   without GC64) is exact, and 2 KB cover a megabyte of heap (half that
   without GC64). Tables are also
   appended to a list; only when a bit is found set already does the list
   go into the seen map, which then gives the number to refer to. */

#define CSHIFT 20                          /* 1 MB of addresses per chunk
                                              (GC64) */
#define CBITS (1u << (CSHIFT - 6))         /* bits per chunk */

typedef struct tent {
  const void *p;
  uint32_t id;
  uint32_t loc;  /* chunk index << (CSHIFT - 6) | bit: to clear it */
} tent;

typedef struct tseen {
  pmap dir;              /* chunk number -> chunk index + 1 */
  uint64_t **chunk;      /* CBITS / 64 words each, kept across encodes */
  uint32_t nchunk, used; /* chunks allocated; assigned in this encode */
  uintptr_t lastkey;     /* chunk number of last, a one-entry cache */
  uint64_t *last;
  uint32_t lastidx;
  tent *list;
  size_t n, cap, flushed;  /* list[0 .. flushed) are in the seen map */
} tseen;

typedef struct level {  /* what one encode (nested or not) writes into */
  char *p;
  size_t n, cap;
  pmap seen;
  tseen tabs;
  uintptr_t frame;  /* C frame of the encode using it; 0: free */
} level;

/* -- Per-state data ------------------------------------------------------- */

typedef struct sstate {
  level lv[MAXNEST];
  flayout fl;     /* verified LuaJIT layout, or fl.ok == 0: API only */
  int names_ok;   /* names map matches package.loaded and the types */
  int nloaded;    /* entries of package.loaded when it was built */
  pmap names;     /* module/field/type value -> 4 * index + kind */
  uint64_t nfilter[NFILTER / 64];  /* bit per hash of a names entry */
  const void *kcs[KCACHE];  /* GCstr of each key cache entry (env-held) */
} sstate;

/* -- Names filter (the index itself is in ser.c) -------------------------- */

/* Every table goes past the names map, nearly always to miss: a bit
   filter that stays in L1 answers most of those misses with one load. */
static inline uint32_t nfbit(const void *k)
{
  uint64_t x = (uint64_t)(uintptr_t)k * 0x9e3779b97f4a7c15ull;
  return (uint32_t)(x >> 48);  /* NFILTER == 1 << 16 */
}

static inline int nfmaybe(const sstate *S, const void *k)
{
  uint32_t b = nfbit(k);
  return (int)(S->nfilter[b >> 6] >> (b & 63)) & 1;
}

/* -- Defined in ser.c ----------------------------------------------------- */

/* Pushes the hook argument that says flags (PCR_SER_MSG, PCR_SER_TRUSTED)
   when the hook at idx is a C function; returns the arguments pushed. */
int pcr__ser_pushflags(lua_State *L, int idx, int flags);

void pcr__ser_pclear(pmap *m);
pslot *pcr__ser_pfind(pmap *m, const void *k);
pslot *pcr__ser_plook(lua_State *L, pmap *m, const void *k, uint32_t v);
sstate *pcr__ser_getstate(lua_State *L);
int pcr__ser_loadedcount(lua_State *L);
void pcr__ser_namesbuild(lua_State *L, sstate *S, int env);
void pcr__ser_cdhelper(lua_State *L, int env, int which);
void pcr__ser_cdhooks(lua_State *L);

/* -- Defined in ser_enc.c ------------------------------------------------- */

void pcr__ser_tfree(tseen *t);
const char *pcr__ser_encode_state(lua_State *L, sstate *S, int sud, int idx,
                                  size_t *len, const char *root, int flags);

/* -- Defined in ser_dec.c ------------------------------------------------- */

/* maxbytes: opts.max_bytes, a cap on what the decode allocates; 0: none */
void pcr__ser_decode_state(lua_State *L, const flayout *fl, const char *buf,
                           size_t len, int flags, size_t maxbytes);

#endif
