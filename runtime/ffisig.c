/* C signatures for native and exported functions: a small parser from
** "double(double, int)" to libffi types, and the value moves libffi needs.
** Free of Lua; the conversions to and from Lua live in native.c. */
#include "ffisig.h"
#include "pcrun.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const struct { const char *name; int kind; } named[] = {
  {"int8_t", PCR_T_I8}, {"uint8_t", PCR_T_U8}, {"int16_t", PCR_T_I16},
  {"uint16_t", PCR_T_U16}, {"int32_t", PCR_T_I32}, {"uint32_t", PCR_T_U32},
  {"int64_t", PCR_T_I64}, {"uint64_t", PCR_T_U64}, {"size_t", PCR_T_U64},
  {"ssize_t", PCR_T_I64}, {"intptr_t", PCR_T_I64}, {"uintptr_t", PCR_T_U64},
  {"ptrdiff_t", PCR_T_I64}, {"bool", PCR_T_BOOL}, {"_Bool", PCR_T_BOOL},
  {"float", PCR_T_FLOAT}, {"double", PCR_T_DOUBLE}, {"void", PCR_T_VOID},
};

static const char *const kindnames[] = {
  "void", "bool", "int8_t", "uint8_t", "int16_t", "uint16_t", "int32_t",
  "uint32_t", "int64_t", "uint64_t", "float", "double", "const char *",
  "void *"
};

const char *pcr__kind_name(int kind) {
  return kind >= 0 && kind <= PCR_T_PTR ? kindnames[kind] : "?";
}

int pcr__kind_isint(int kind) {
  return kind >= PCR_T_I8 && kind <= PCR_T_U64;
}

static ffi_type *ffitype(int kind) {
  switch (kind) {
  case PCR_T_VOID: return &ffi_type_void;
  case PCR_T_BOOL: return &ffi_type_uint8;  /* _Bool is one byte here */
  case PCR_T_I8: return &ffi_type_sint8;
  case PCR_T_U8: return &ffi_type_uint8;
  case PCR_T_I16: return &ffi_type_sint16;
  case PCR_T_U16: return &ffi_type_uint16;
  case PCR_T_I32: return &ffi_type_sint32;
  case PCR_T_U32: return &ffi_type_uint32;
  case PCR_T_I64: return &ffi_type_sint64;
  case PCR_T_U64: return &ffi_type_uint64;
  case PCR_T_FLOAT: return &ffi_type_float;
  case PCR_T_DOUBLE: return &ffi_type_double;
  default: return &ffi_type_pointer;
  }
}
_Static_assert(sizeof(_Bool) == 1, "bool is passed as one byte");
_Static_assert(sizeof(long) == 8, "LP64 only");

/* -- Parsing ----------------------------------------------------------- */

typedef struct parser {
  const char *text, *p;
  char *err;
  size_t n;
} parser;

static int fail(parser *ps, const char *at, const char *fmt, ...) {
  char why[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  snprintf(ps->err, ps->n, "bad signature '%s': %s at column %d", ps->text,
           why, (int)(at - ps->text) + 1);
  return PCR_EINVAL;
}

static void skipspace(parser *ps) {
  while (isspace((unsigned char)*ps->p)) ps->p++;
}

/* Read one identifier into w (NUL-terminated); 0 if none here. */
static int word(parser *ps, char *w, size_t n) {
  skipspace(ps);
  const char *s = ps->p;
  if (!isalpha((unsigned char)*s) && *s != '_') return 0;
  while (isalnum((unsigned char)*ps->p) || *ps->p == '_') ps->p++;
  size_t k = (size_t)(ps->p - s);
  if (k >= n) k = n - 1;
  memcpy(w, s, k);
  w[k] = '\0';
  return 1;
}

typedef struct spec {
  int nconst, nsigned, nunsigned, nlong, nshort;
  const char *base;   /* "int", "char", a name from `named`, or NULL */
  const char *at;     /* where the type starts, for messages */
} spec;

/* Fold the words of a builtin type into its kind; -1 if they clash. */
static int builtin(const spec *t) {
  int sign = t->nsigned + t->nunsigned;
  if (sign > 1 || t->nlong > 2 || t->nshort > 1 || (t->nlong && t->nshort))
    return -1;
  if (t->base && strcmp(t->base, "int") && strcmp(t->base, "char")) {
    if (sign || t->nshort || t->nlong) return -1;  /* "long double" too */
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
      if (!strcmp(named[i].name, t->base)) return named[i].kind;
    return -1;
  }
  int u = t->nunsigned;
  if (t->base && !strcmp(t->base, "char")) {
    if (t->nshort || t->nlong) return -1;
    return u ? PCR_T_U8 : PCR_T_I8;
  }
  if (!t->base && !sign && !t->nshort && !t->nlong) return -1;  /* "const" */
  if (t->nshort) return u ? PCR_T_U16 : PCR_T_I16;
  if (t->nlong) return u ? PCR_T_U64 : PCR_T_I64;
  return u ? PCR_T_U32 : PCR_T_I32;
}

/* The canonical spelling of a base type word, or NULL if unknown. */
static const char *canon(const char *w) {
  if (!strcmp(w, "int")) return "int";
  if (!strcmp(w, "char")) return "char";
  for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
    if (!strcmp(named[i].name, w)) return named[i].name;
  return NULL;
}

/* type := word+ '*'*   Sets *kind; returns 0 or PCR_EINVAL. */
static int type(parser *ps, int *kind) {
  spec t = {0};
  char w[64];
  skipspace(ps);
  t.at = ps->p;
  const char *wat = ps->p;
  while (skipspace(ps), wat = ps->p, word(ps, w, sizeof w)) {
    if (!strcmp(w, "const") || !strcmp(w, "volatile")) t.nconst++;
    else if (!strcmp(w, "signed")) t.nsigned++;
    else if (!strcmp(w, "unsigned")) t.nunsigned++;
    else if (!strcmp(w, "long")) t.nlong++;
    else if (!strcmp(w, "short")) t.nshort++;
    else if (t.base) return fail(ps, wat, "unexpected '%s'", w);
    else if (!(t.base = canon(w)))
      return fail(ps, wat, "unknown type '%s'", w);
  }
  if (ps->p == t.at)
    return fail(ps, ps->p, *ps->p ? "expected a type, found '%c'"
                                  : "expected a type, found the end", *ps->p);
  int stars = 0;
  while (skipspace(ps), *ps->p == '*') { stars++; ps->p++; }
  /* "const" after the last star qualifies the pointer itself */
  while (word(ps, w, sizeof w)) {
    if (strcmp(w, "const") || !stars)
      return fail(ps, ps->p - strlen(w), "unexpected '%s'", w);
  }
  int k = builtin(&t);
  if (k < 0)
    return fail(ps, t.at, "'%.*s' is not a supported type",
                (int)(ps->p - t.at), t.at);
  if (stars)
    k = stars == 1 && k == PCR_T_I8 && t.nconst && !t.nsigned
          ? PCR_T_STR : PCR_T_PTR;
  *kind = k;
  return 0;
}

static int expect(parser *ps, char c) {
  skipspace(ps);
  if (*ps->p == c) { ps->p++; return 0; }
  if (!*ps->p) return fail(ps, ps->p, "expected '%c', found the end", c);
  return fail(ps, ps->p, "expected '%c', found '%c'", c, *ps->p);
}

int pcr__sig_parse(pcr__sig *s, const char *text, char *err, size_t n) {
  parser ps = {text ? text : "", text ? text : "", err, n};
  memset(s, 0, sizeof *s);
  if (!text) return fail(&ps, ps.p, "no signature");
  if (strlen(text) >= PCR_SIG_TEXT)
    return fail(&ps, ps.p, "longer than %d characters", PCR_SIG_TEXT - 1);
  int k, r;
  if ((r = type(&ps, &k))) return r;
  s->ret = (uint8_t)k;
  if ((r = expect(&ps, '('))) return r;
  skipspace(&ps);
  const char *first = ps.p;
  if (*ps.p != ')') {
    for (;;) {
      const char *at = (skipspace(&ps), ps.p);
      if ((r = type(&ps, &k))) return r;
      if (k == PCR_T_VOID) {
        skipspace(&ps);
        if (at != first || *ps.p != ')')
          return fail(&ps, at, "'void' must be the only parameter");
        break;
      }
      if (s->nargs == PCR_SIG_MAX)
        return fail(&ps, at, "more than %d parameters", PCR_SIG_MAX);
      s->args[s->nargs++] = (uint8_t)k;
      skipspace(&ps);
      if (*ps.p != ',') break;
      ps.p++;
    }
  }
  if ((r = expect(&ps, ')'))) return r;
  skipspace(&ps);
  if (*ps.p) return fail(&ps, ps.p, "unexpected '%c' after ')'", *ps.p);
  for (int i = 0; i < s->nargs; i++) s->atypes[i] = ffitype(s->args[i]);
  strcpy(s->text, text);
  if (ffi_prep_cif(&s->cif, FFI_DEFAULT_ABI, (unsigned)s->nargs,
                   ffitype(s->ret), s->atypes) != FFI_OK)
    return fail(&ps, text, "libffi cannot prepare it");
  return 0;
}

/* -- Moving values ----------------------------------------------------- */

void pcr__val_load(int kind, const void *raw, pcr__val *v) {
  switch (kind) {
  case PCR_T_BOOL: v->b = *(const _Bool *)raw; break;
  case PCR_T_I8: case PCR_T_U8: memcpy(v, raw, 1); break;
  case PCR_T_I16: case PCR_T_U16: memcpy(v, raw, 2); break;
  case PCR_T_I32: case PCR_T_U32: case PCR_T_FLOAT: memcpy(v, raw, 4); break;
  case PCR_T_VOID: break;
  default: memcpy(v, raw, 8); break;
  }
}

void pcr__val_store_ret(int kind, const pcr__val *v, void *raw) {
  ffi_arg *a = raw;  /* small integers go back widened to ffi_arg */
  switch (kind) {
  case PCR_T_VOID: break;
  case PCR_T_BOOL: *a = v->b; break;
  case PCR_T_I8: *(ffi_sarg *)a = v->i8; break;
  case PCR_T_U8: *a = v->u8; break;
  case PCR_T_I16: *(ffi_sarg *)a = v->i16; break;
  case PCR_T_U16: *a = v->u16; break;
  case PCR_T_I32: *(ffi_sarg *)a = v->i32; break;
  case PCR_T_U32: *a = v->u32; break;
  case PCR_T_FLOAT: *(float *)raw = v->f; break;
  default: memcpy(raw, v, 8); break;
  }
}

void pcr__val_fix_ret(int kind, pcr__val *v) {
  ffi_arg a = v->arg;
  switch (kind) {
  case PCR_T_BOOL: v->b = (_Bool)(a & 0xff); break;
  case PCR_T_I8: v->i8 = (int8_t)a; break;
  case PCR_T_U8: v->u8 = (uint8_t)a; break;
  case PCR_T_I16: v->i16 = (int16_t)a; break;
  case PCR_T_U16: v->u16 = (uint16_t)a; break;
  case PCR_T_I32: v->i32 = (int32_t)a; break;
  case PCR_T_U32: v->u32 = (uint32_t)a; break;
  default: break;
  }
}
