/* Dicts: key-value tables in the arena that every process reads and writes
** without a server. The table is split in stripes by key hash; each stripe
** is an open-addressing index of entry offsets, with its own robust lock
** for writers and a version counter that lock-free readers check. Entries
** are immutable once published (numbers excepted: they change in place
** with one atomic store), so every change is one word stored, and a writer
** killed at any instruction leaves the stripe as it was or as it meant it
** to be. Free of Lua. */
#ifndef PCR_DICT_H
#define PCR_DICT_H

#include "futex.h"
#include "shm.h"

#include <stddef.h>
#include <stdint.h>

#define PCR_DICT_STRIPES 64

/* Key kinds and value kinds. */
enum { PCR_DK_STRING = 1, PCR_DK_NUMBER, PCR_DK_BOOLEAN };
enum { PCR_DV_NUMBER = 1, PCR_DV_TRUE, PCR_DV_FALSE, PCR_DV_STRING,
       PCR_DV_VALUE /* encoded by the serializer */ };

/* A stored entry: header, key bytes, padding to 8, the arena offsets of
** the objects whose references the entry holds, the value bytes. */
typedef struct pcr_dent {
  uint64_t hash;
  uint8_t kkind, vkind;
  uint16_t nrefs;
  uint32_t klen;
  uint64_t vlen;
  _Atomic uint64_t num;   /* a number value's bits; changed in place */
  char data[];
} pcr_dent;

#define PCR_DENT_REFS(e) ((uint64_t *)((e)->data + (((e)->klen + 7) & ~7u)))
#define PCR_DENT_VAL(e) ((char *)(PCR_DENT_REFS(e) + (e)->nrefs))
#define PCR_DENT_SIZE(e) \
  (sizeof(pcr_dent) + (((e)->klen + 7) & ~(size_t)7) + 8 * (size_t)(e)->nrefs \
   + (size_t)(e)->vlen)

typedef struct pcr_dstripe {
  _Alignas(64) pcr_lock lock;  /* writers */
  _Atomic uint32_t ver;     /* bumped after every change that frees */
  _Atomic uint64_t tab;     /* offset of the index (0: none yet) */
  _Atomic uint64_t count;   /* live entries; under lock */
  uint64_t used;            /* live entries and tombstones; under lock */
  /* A change under way, for whoever recovers the lock from a dead
  ** writer: what it allocated and what it meant to free. */
  _Atomic uint32_t op;
  uint64_t a, b;
} pcr_dstripe;

typedef struct pcr_dict {
  pcr_obj hdr;
  _Alignas(64) pcr_waitq wq;  /* d:wait() sleepers; woken by new keys */
  pcr_dstripe s[PCR_DICT_STRIPES];
} pcr_dict;

/* A key as the caller gives it: bytes (a number's are its normalised
** double, a boolean's one byte) and their hash (pcr__dict_key). */
typedef struct pcr_dkey {
  unsigned kind;
  const void *p;
  size_t n;
  uint64_t hash;
} pcr_dkey;

void pcr__dict_key(pcr_dkey *k);

/* A value to store: kind, number (PCR_DV_NUMBER), bytes (string or
** encoded) and the references it carries, which the dict adopts. */
typedef struct pcr_dval {
  unsigned kind;
  double num;
  const void *p;
  size_t n;
  const uint64_t *refs;
  size_t nrefs;
} pcr_dval;

/* A value read: kind and number; bytes copied into buf (malloc'd, grown
** as needed, owned by the caller). nrefs > 0 says the value holds shared
** objects: read it with pcr__dict_snapshot_key instead. tok names the
** entry read, for pcr__dict_put's condition. */
typedef struct pcr_dout {
  unsigned kind;
  double num;
  char *buf;
  size_t n, cap;
  unsigned nrefs;
  uint64_t tok;
} pcr_dout;

/* Its reference is recorded in the ledger at *idx (pcr__frame_obj_new;
** NULL: unrecorded). */
pcr_dict *pcr__dict_new(long *idx);
void pcr__dict_init(void);  /* the destructor; once, before any fork */

/* Read without locking. Returns 1 (found), 0 (absent) or -ENOMEM. */
int pcr__dict_get(pcr_dict *d, const pcr_dkey *k, pcr_dout *out);

/* Conditions for pcr__dict_put. */
enum { PCR_DC_ANY,      /* always */
       PCR_DC_VALUE,    /* the stored value equals *want (NULL: absent) */
       PCR_DC_TOKEN };  /* the entry is still the one read as tok (0:
                           absent) with the number read */

/* Store v (NULL deletes) if the condition holds. Returns 1 (stored: for a
** delete, the key existed), 0 (condition false, nothing stored) or
** -ENOSPC. When nothing is stored, v's references are not adopted. */
int pcr__dict_put(pcr_dict *d, const pcr_dkey *k, const pcr_dval *v,
                  int cond, const pcr_dval *want, uint64_t tok, double num);

/* Add delta to a number value (an absent key counts as 0). Returns 0 with
** *res the new value, -EINVAL (the value is not a number: *kind says what
** it is) or -ENOSPC. */
int pcr__dict_add(pcr_dict *d, const pcr_dkey *k, double delta, double *res,
                  unsigned *kind);

int64_t pcr__dict_len(pcr_dict *d);
/* Remove every entry. Returns 0. */
int pcr__dict_clear(pcr_dict *d);

/* A copy of entries (whole pcr_dent records, each padded to 8) taken at
** one moment, holding a reference to every object they name until
** pcr__dict_snapshot_free. */
typedef struct pcr_dsnap {
  char *buf;
  size_t n;
  size_t count;
  uint64_t tok;   /* pcr__dict_snapshot_key: as pcr_dout's */
} pcr_dsnap;

/* Every entry, under every stripe's lock at once (readers go on; writers
** wait for the copy). Returns 0 or -ENOMEM. */
int pcr__dict_snapshot(pcr_dict *d, pcr_dsnap *s);
/* The entry of one key (count 0 if absent). Returns 0 or -ENOMEM. */
int pcr__dict_snapshot_key(pcr_dict *d, const pcr_dkey *k, pcr_dsnap *s);
void pcr__dict_snapshot_free(pcr_dsnap *s);

/* Whether the key exists, without locking. */
int pcr__dict_has(pcr_dict *d, const pcr_dkey *k);

#endif
