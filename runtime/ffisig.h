/* C signatures: "double(double, int)" parsed into libffi call interfaces,
** and the raw value storage that crosses libffi. Free of Lua. */
#ifndef PCR_FFISIG_H
#define PCR_FFISIG_H

#include <ffi.h>
#include <stddef.h>
#include <stdint.h>

#define PCR_SIG_MAX 16     /* arguments per signature */
#define PCR_SIG_TEXT 256   /* longest signature text */

/* Value kinds a signature may name. STR is `const char *` (a string that
** is read); PTR is any other pointer (an address passed as is). */
typedef enum {
  PCR_T_VOID, PCR_T_BOOL, PCR_T_I8, PCR_T_U8, PCR_T_I16, PCR_T_U16,
  PCR_T_I32, PCR_T_U32, PCR_T_I64, PCR_T_U64, PCR_T_FLOAT, PCR_T_DOUBLE,
  PCR_T_STR, PCR_T_PTR
} pcr__kind;

/* One value of any kind; libffi reads and writes the member of the kind.
** `arg` is the widened slot libffi uses for small integer results. */
typedef union pcr__val {
  _Bool b;
  int8_t i8; uint8_t u8; int16_t i16; uint16_t u16;
  int32_t i32; uint32_t u32; int64_t i64; uint64_t u64;
  float f; double d;
  const char *s; void *p;
  ffi_arg arg;
} pcr__val;

typedef struct pcr__sig {
  int nargs;
  uint8_t ret;                       /* pcr__kind */
  uint8_t args[PCR_SIG_MAX];         /* pcr__kind of each argument */
  ffi_type *atypes[PCR_SIG_MAX];
  ffi_cif cif;                       /* prepared; points into this struct */
  char text[PCR_SIG_TEXT];           /* the signature as given */
} pcr__sig;

/* Parse text into *s and prepare its cif. Returns 0, or PCR_EINVAL with
** a message in err (n bytes) naming the signature and the position. The
** cif points into *s: do not copy a parsed pcr__sig by value. Any
** process; no allocation. */
int pcr__sig_parse(pcr__sig *s, const char *text, char *err, size_t n);

/* The C spelling of a kind ("int32_t", "const char *"). */
const char *pcr__kind_name(int kind);

/* Whether a kind is an integer kind (bool excluded). */
int pcr__kind_isint(int kind);

/* Read a value of `kind` stored at raw (as libffi passes arguments) into
** v; write v to raw as libffi expects a closure's result. */
void pcr__val_load(int kind, const void *raw, pcr__val *v);
void pcr__val_store_ret(int kind, const pcr__val *v, void *raw);

/* Narrow the result of ffi_call (widened to ffi_arg for small integers)
** to its kind's member. */
void pcr__val_fix_ret(int kind, pcr__val *v);

#endif
