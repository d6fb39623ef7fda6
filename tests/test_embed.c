/* Tests of pcr_call, native functions, exported functions and zygote mode,
** and of the signature parser (table-driven plus a fuzz-ish pass). */
#include "ffisig.h"
#include "proc.h"
#include "pcrun.h"
#include "testlib.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>


static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static pcr_runtime *open_rt(int zygote, int workers) {
  pcr_options o;
  pcr_options_init(&o);
  o.zygote = zygote;
  o.workers = workers;
  pcr_runtime *rt = NULL;
  CHECK(pcr_open(&rt, &o) == PCR_OK);
  return rt;
}

/* -- The signature parser ---------------------------------------------- */

static void test_sig_valid(void) {
  static const struct { const char *text; int ret, n, a0, a1; } ok[] = {
    {"double(double, int)", PCR_T_DOUBLE, 2, PCR_T_DOUBLE, PCR_T_I32},
    {"void(const char *, int64_t)", PCR_T_VOID, 2, PCR_T_STR, PCR_T_I64},
    {"int32_t(void)", PCR_T_I32, 0, 0, 0},
    {"int32_t()", PCR_T_I32, 0, 0, 0},
    {"  bool ( float ,size_t )  ", PCR_T_BOOL, 2, PCR_T_FLOAT, PCR_T_U64},
    {"unsigned(unsigned char, signed char)", PCR_T_U32, 2, PCR_T_U8,
     PCR_T_I8},
    {"long(unsigned long long, short)", PCR_T_I64, 2, PCR_T_U64, PCR_T_I16},
    {"unsigned short int(long int, char)", PCR_T_U16, 2, PCR_T_I64,
     PCR_T_I8},
    {"void *(double *, const double * const)", PCR_T_PTR, 2, PCR_T_PTR,
     PCR_T_PTR},
    {"const char *(char *, char **)", PCR_T_STR, 2, PCR_T_PTR, PCR_T_PTR},
    {"uint8_t(int8_t, uint16_t)", PCR_T_U8, 2, PCR_T_I8, PCR_T_U16},
    {"_Bool(intptr_t, ptrdiff_t)", PCR_T_BOOL, 2, PCR_T_I64, PCR_T_I64},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    pcr__sig s;
    char err[512] = "";
    int r = pcr__sig_parse(&s, ok[i].text, err, sizeof err);
    if (r) fprintf(stderr, "  %s -> %s\n", ok[i].text, err);
    CHECK(r == 0);
    CHECK(s.ret == ok[i].ret);
    CHECK(s.nargs == ok[i].n);
    if (s.nargs > 0) CHECK(s.args[0] == ok[i].a0);
    if (s.nargs > 1) CHECK(s.args[1] == ok[i].a1);
  }
  pcr__sig s;
  char err[512];
  CHECK(pcr__sig_parse(&s, "int(int,int,int,int,int,int,int,int,int,int,int,"
                       "int,int,int,int,int)", err, sizeof err) == 0);
  CHECK(s.nargs == 16);
}

static void test_sig_invalid(void) {
  static const struct { const char *text, *why; } bad[] = {
    {"", "expected a type, found the end at column 1"},
    {"double", "expected '(', found the end at column 7"},
    {"double(dbl)", "unknown type 'dbl' at column 8"},
    {"double(double", "expected ')', found the end"},
    {"double(double,)", "expected a type, found ')' at column 15"},
    {"double(double) x", "unexpected 'x' after ')'"},
    {"long double(int)", "'long double' is not a supported type"},
    {"int(void, int)", "'void' must be the only parameter"},
    {"int(int, void)", "'void' must be the only parameter"},
    {"unsigned signed(int)", "is not a supported type"},
    {"int int(int)", "unexpected 'int' at column 5"},
    {"struct foo(int)", "unknown type 'struct'"},
    {"int(int[3])", "expected ')', found '['"},
    {"int(const)", "'const' is not a supported type"},
    {"int(int,int,int,int,int,int,int,int,int,int,int,int,int,int,int,int,"
     "int)", "more than 16 parameters"},
    {"short long(int)", "is not a supported type"},
    {"int(float *const x)", "unexpected 'x'"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    pcr__sig s;
    char err[512] = "";
    CHECK(pcr__sig_parse(&s, bad[i].text, err, sizeof err) == PCR_EINVAL);
    if (!strstr(err, bad[i].why))
      fprintf(stderr, "  '%s' -> '%s', want '%s'\n",
              bad[i].text ? bad[i].text : "", err, bad[i].why);
    HAS(err, bad[i].why);
    HAS(err, "bad signature '");
  }
  pcr__sig s;
  char err[64];  /* a short buffer truncates, never overflows */
  CHECK(pcr__sig_parse(&s, NULL, err, sizeof err) == PCR_EINVAL);
  char big[400];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = 0;
  CHECK(pcr__sig_parse(&s, big, err, sizeof err) == PCR_EINVAL);
}

/* Random token soup and mutations of valid signatures: every input either
** parses or fails with a message; nothing crashes or overruns. */
static void test_sig_fuzz(void) {
  static const char *tok[] = {"int", "double", "(", ")", ",", "*", "const",
    "unsigned", "long", "void", "char", " ", "x", "", "\t", "int64_t",
    "bool", "size_t", "(void)", "float", "**", "1", "\xff"};
  static const char *seeds[] = {"double(double, int)",
    "void(const char *, int64_t)", "uint64_t(void *, size_t)"};
  unsigned seed = 12345, parsed = 0;
  for (int round = 0; round < 20000; round++) {
    char text[300] = "";
    seed = seed * 1103515245u + 12345u;
    if (round % 2) {
      int nt = (int)(seed >> 16) % 12;
      for (int k = 0; k < nt; k++) {
        seed = seed * 1103515245u + 12345u;
        strcat(text, tok[(seed >> 16) % (sizeof tok / sizeof tok[0])]);
      }
    } else {
      strcpy(text, seeds[(seed >> 16) % 3]);
      size_t len = strlen(text);
      seed = seed * 1103515245u + 12345u;
      size_t at = (seed >> 16) % len;
      seed = seed * 1103515245u + 12345u;
      if (seed & 0x10000) memmove(text + at, text + at + 1, len - at);
      else text[at] = "(),* xv"[(seed >> 17) % 7];
    }
    pcr__sig s;
    char err[512] = "";
    int r = pcr__sig_parse(&s, text, err, sizeof err);
    CHECK(r == 0 || (r == PCR_EINVAL && strstr(err, "bad signature")));
    if (r == 0) {
      parsed++;
      CHECK(s.nargs >= 0 && s.nargs <= PCR_SIG_MAX);
    }
  }
  CHECK(parsed > 0);
}

/* -- pcr_call ---------------------------------------------------------- */

static void test_call(void) {
  pcr_runtime *rt = open_rt(0, 1);
  CHECK(pcr_run_string(rt,
    "function add(a, b) return a + b end\n"
    "function greet(s, n) return s .. ('!'):rep(n) end\n"
    "function neg(b) return not b end\n"
    "function big() return 2^40 + 1 end\n"
    "function bad() error('kaput') end\n"
    "function nothing() seen = true end\n"
    "function wrong() return 'text' end\n"
    "function small(x) return x end\n", "=t") == PCR_OK);
  double d = 0;
  CHECK(pcr_call(rt, "add", "double(double, int)", &d, 1.5, 2) == PCR_OK);
  CHECK(d == 3.5);
  int32_t i = 0;
  CHECK(pcr_call(rt, "add", "int(int8_t, uint16_t)", &i, -3, 60000) ==
        PCR_OK);
  CHECK(i == 59997);
  const char *s = NULL;
  CHECK(pcr_call(rt, "greet", "const char *(const char *, int)", &s, "hi",
                 3) == PCR_OK);
  CHECK(s && strcmp(s, "hi!!!") == 0);
  _Bool b = 0;
  CHECK(pcr_call(rt, "neg", "bool(bool)", &b, 0) == PCR_OK);
  CHECK(b == 1);
  int64_t big = 0;
  CHECK(pcr_call(rt, "big", "int64_t(void)", &big) == PCR_OK);
  CHECK(big == 1099511627777LL);
  float f = 0;
  CHECK(pcr_call(rt, "add", "float(float, float)", &f, 0.25, 0.5) == PCR_OK);
  CHECK(f == 0.75f);
  CHECK(pcr_call(rt, "nothing", "void()", NULL) == PCR_OK);
  CHECK(pcr_run_string(rt, "assert(seen)", NULL) == PCR_OK);
  CHECK(pcr_call(rt, "add", "double(double, double)", NULL, 1.0, 2.0) ==
        PCR_OK);

  CHECK(pcr_call(rt, "bad", "void()", NULL) == PCR_ELUA);
  HAS(pcr_last_error(rt), "kaput");
  HAS(pcr_last_error(rt), "stack traceback");
  CHECK(pcr_call(rt, "nosuch", "void()", NULL) == PCR_EINVAL);
  HAS(pcr_last_error(rt), "global 'nosuch' is not a function (nil)");
  CHECK(pcr_call(rt, "add", "double(double, what)", &d, 1.0) == PCR_EINVAL);
  HAS(pcr_last_error(rt), "unknown type 'what' at column 16");
  CHECK(pcr_call(rt, "wrong", "double()", &d) == PCR_ETYPE);
  HAS(pcr_last_error(rt), "'wrong': result must be a number, got string");
  CHECK(pcr_call(rt, "small", "int8_t(int)", &i, 300) == PCR_ETYPE);
  HAS(pcr_last_error(rt), "from -128 to 127, got 300");
  CHECK(pcr_call(rt, "small", "int(double)", &i, 1.5) == PCR_ETYPE);
  HAS(pcr_last_error(rt), "must be an integer, got 1.5");
  CHECK(pcr_call(NULL, "add", "void()", NULL) == PCR_EINVAL);
  CHECK(pcr_call(rt, NULL, "void()", NULL) == PCR_EINVAL);
  pcr_close(rt);
}

/* -- Native functions -------------------------------------------------- */

static double n_hyp(double a, double b) { return sqrt(a * a + b * b); }
static int64_t n_mul64(int64_t a, int64_t b) { return a * b; }
static uint64_t n_umax(void) { return UINT64_MAX; }
static int n_len(const char *s) { return s ? (int)strlen(s) : -1; }
static double n_sum(const double *p, int n) {
  double t = 0;
  for (int i = 0; i < n; i++) t += p[i];
  return t;
}
static void n_fill(double *p, int n, double v) {
  for (int i = 0; i < n; i++) p[i] = v;
}
static const char *n_name(int8_t k) { return k > 0 ? "positive" : "not"; }
static _Bool n_odd(uint32_t x) { return x & 1; }
static void *n_self(void *p) { return p; }
static float n_half(float x) { return x / 2; }
static int16_t n_neg16(int16_t x) { return (int16_t)-x; }

static int reg(pcr_runtime *rt, const char *name, pcr_fnptr f,
               const char *sig) {
  int r = pcr_register(rt, name, f, sig);
  if (r) fprintf(stderr, "  register %s: %s\n", name, pcr_last_error(rt));
  return r;
}

static void register_all(pcr_runtime *rt) {
  CHECK(reg(rt, "hyp", PCR_FN(n_hyp), "double(double, double)") == 0);
  CHECK(reg(rt, "mul64", PCR_FN(n_mul64), "int64_t(int64_t, int64_t)") == 0);
  CHECK(reg(rt, "umax", PCR_FN(n_umax), "uint64_t(void)") == 0);
  CHECK(reg(rt, "len", PCR_FN(n_len), "int(const char *)") == 0);
  CHECK(reg(rt, "sum", PCR_FN(n_sum), "double(const double *, int)") == 0);
  CHECK(reg(rt, "fill", PCR_FN(n_fill), "void(double *, int, double)") == 0);
  CHECK(reg(rt, "name", PCR_FN(n_name), "const char *(int8_t)") == 0);
  CHECK(reg(rt, "odd", PCR_FN(n_odd), "bool(uint32_t)") == 0);
  CHECK(reg(rt, "self", PCR_FN(n_self), "void *(void *)") == 0);
  CHECK(reg(rt, "half", PCR_FN(n_half), "float(float)") == 0);
  CHECK(reg(rt, "neg16", PCR_FN(n_neg16), "short(short)") == 0);
}

/* Runs Lua code that must succeed; prints the error otherwise. */
static void lua_ok(pcr_runtime *rt, const char *code) {
  int r = pcr_run_string(rt, code, "=test");
  if (r) fprintf(stderr, "  lua: %s\n", pcr_last_error(rt));
  CHECK(r == PCR_OK);
}

/* Lua code whose error must contain want. */
static void lua_err(pcr_runtime *rt, const char *code, const char *want) {
  CHECK(pcr_run_string(rt, code, "=test") == PCR_ELUA);
  if (!strstr(pcr_last_error(rt), want))
    fprintf(stderr, "  error '%s', want '%s'\n", pcr_last_error(rt), want);
  HAS(pcr_last_error(rt), want);
}

static void test_native(void) {
  pcr_runtime *rt = open_rt(0, 2);
  register_all(rt);
  lua_ok(rt,
    "local n = require 'pcrun.native'\n"
    "local ffi = require 'ffi'\n"
    "assert(n.hyp(3, 4) == 5)\n"
    "assert(n.mul64(3, -4) == -12)\n"
    "local m = n.mul64(2^40, 2^20)\n"
    "assert(type(m) == 'cdata' and m == 2LL^60, tostring(m))\n"
    "assert(n.mul64(3LL, 5ULL) == 15)\n"
    "assert(n.umax() == 0xffffffffffffffffULL)\n"
    "assert(n.len('hello') == 5 and n.len(nil) == -1)\n"
    "local a = ffi.new('double[4]', {1, 2, 3, 4.5})\n"
    "assert(n.sum(a, 4) == 10.5)\n"
    "assert(n.sum(ffi.cast('double *', a) + 1, 2) == 5)\n"
    "n.fill(a, 4, 7)\n"
    "assert(a[0] == 7 and a[3] == 7)\n"
    "assert(n.sum({ ptr = a }, 4) == 28)\n"
    "assert(n.sum({ ptr = function(self) return a end }, 2) == 14)\n"
    "assert(n.name(3) == 'positive' and n.name(-3) == 'not')\n"
    "assert(n.odd(3) == true and n.odd(4) == false)\n"
    "local p = n.self(a)\n"
    "assert(type(p) == 'userdata' and n.sum(p, 1) == 7)\n"
    "assert(n.self(nil) == nil)\n"
    "assert(n.half(3) == 1.5 and n.neg16(-32768) == -32768)\n"
    "assert(n.has('hyp') and not n.has('nope'))\n"
    "assert(#n.names() == 11)\n");
  lua_err(rt, "require('pcrun.native').hyp(1)",
          "pcrun.native.hyp: expected 2 arguments (double(double, double)),"
          " got 1");
  lua_err(rt, "require('pcrun.native').hyp(1, 'x')",
          "pcrun.native.hyp: argument 2 must be a number, got string");
  lua_err(rt, "require('pcrun.native').neg16(40000)",
          "pcrun.native.neg16: argument 1 must be an integer from -32768 to "
          "32767, got 40000");
  lua_err(rt, "require('pcrun.native').odd(-1)",
          "argument 1 must be an integer from 0 to 4294967295, got -1");
  lua_err(rt, "require('pcrun.native').odd(1.5)",
          "argument 1 must be an integer, got 1.5");
  lua_err(rt, "require('pcrun.native').odd(true)",
          "argument 1 must be an integer, got boolean");
  lua_err(rt, "require('pcrun.native').len(5)",
          "pcrun.native.len: argument 1 must be a string, got number");
  lua_err(rt, "require('pcrun.native').sum(1, 1)",
          "pcrun.native.sum: argument 1 must be a pointer, got number");
  lua_err(rt, "require('pcrun.native').sum({}, 1)",
          "argument 1 must be a pointer, got table");
  lua_err(rt, "local ffi = require 'ffi'\n"
          "require('pcrun.native').sum(ffi.new('complex', 1, 2), 1)",
          "argument 1 must be a pointer, got cdata");
  lua_err(rt, "require('pcrun.native').umax(1)",
          "expected 0 arguments (uint64_t(void)), got 1");
  lua_err(rt, "return require('pcrun.native').nope",
          "pcrun.native: no native function 'nope'");
  lua_err(rt, "require('pcrun.native').x = 1", "read-only");

  CHECK(pcr_register(rt, "hyp", PCR_FN(n_hyp), "double(double, double)") ==
        PCR_EINVAL);
  HAS(pcr_last_error(rt), "native function 'hyp' is already registered");
  CHECK(pcr_register(rt, "h2", PCR_FN(n_hyp), "double(double double)") ==
        PCR_EINVAL);
  HAS(pcr_last_error(rt), "'h2': bad signature 'double(double double)'");
  CHECK(pcr_register(rt, "bad name", PCR_FN(n_hyp), "void()") == PCR_EINVAL);
  HAS(pcr_last_error(rt), "bad name 'bad name'");
  CHECK(pcr_register(rt, NULL, PCR_FN(n_hyp), "void()") == PCR_EINVAL);
  CHECK(pcr_register(rt, "nul", NULL, "void()") == PCR_EINVAL);
  HAS(pcr_last_error(rt), "function pointer is NULL");

  /* Pool workers forked after registration call natives by name. */
  lua_ok(rt,
    "local pcrun = require 'pcrun'\n"
    "local pool = pcrun.pool(2)\n"
    "local xs = {}\n"
    "for i = 1, 50 do xs[i] = i end\n"
    "local ys = pool:map('native.odd', xs)\n"
    "for i = 1, 50 do assert(ys[i] == (i % 2 == 1), i) end\n"
    "local ok, err = pcall(pool.map, pool, 'native.nope', { 1 })\n"
    "assert(not ok and tostring(err):find(\"no native function 'nope'\"),"
    " tostring(err))\n"
    "pool:close() pool:join()\n");
  pcr_close(rt);
  CHECK(descendants() == 0);
}

/* A native taking a pointer gets a pcrun.array (a cdata struct with `ptr`
** and `n`): in the host, and in pool workers, where the arena holds the
** array at the same address. */
static void test_native_array(void) {
  pcr_runtime *rt = open_rt(0, 2);
  CHECK(reg(rt, "sum", PCR_FN(n_sum), "double(const double *, int)") == 0);
  CHECK(reg(rt, "fill", PCR_FN(n_fill), "void(double *, int, double)") == 0);
  lua_ok(rt,
    "local pcrun = require 'pcrun'\n"
    "local init = {}\n"
    "for i = 1, 100 do init[i] = i end\n"
    "local arr = pcrun.array('double', 100, init)\n"
    "assert(#arr == 100)\n"
    "assert(pcrun.native.sum(arr, #arr) == 5050)\n"
    "assert(pcrun.native.sum(arr.ptr + 90, 10) == 955)\n"
    "local pool = pcrun.pool(2)\n"
    "local ys = pool:map(function(k) return k * pcrun.native.sum(arr, #arr) "
    "end, { 1, 2, 3, 4 })\n"
    "for k = 1, 4 do assert(ys[k] == 5050 * k, tostring(ys[k])) end\n"
    "ys = pool:map(function(n) return pcrun.native.sum(arr, n) end,"
    " { 0, 1, 10 })\n"
    "assert(ys[1] == 0 and ys[2] == 1 and ys[3] == 55)\n"
    "pool:map(function() pcrun.native.fill(arr, #arr, 2) return true end,"
    " { 1 })\n"
    "assert(arr[0] == 2 and arr[99] == 2)\n"
    "assert(pcrun.native.sum(arr, #arr) == 200)\n"
    "pool:close() pool:join()\n");
  pcr_close(rt);
  CHECK(descendants() == 0);
}

/* -- Exported functions ------------------------------------------------ */

typedef struct job {
  double (*f)(double);
  int n, bad;
} job;

static void *hammer(void *arg) {
  job *j = arg;
  for (int i = 0; i < j->n; i++) {
    double x = i * 0.5;
    double y = j->f(x);
    if (y != x * x + 1) j->bad++;
    if (pcr_export_status(NULL) != PCR_OK) j->bad++;
  }
  return NULL;
}

static int errcalls;
static void onerr(void *ud, const char *name, int code, const char *msg) {
  (void)msg;
  if (ud == &errcalls && name && code < 0) errcalls++;
}

static const char exported_lua[] =
  "local native = require 'pcrun.native'\n"
  "function sq1(x) return x * x + 1 end\n"
  "function boom(x) error('boom at ' .. x) end\n"
  "function notnum(x) return 'nope' end\n"
  "function shout(s, n) return s:upper() .. ('!'):rep(n) end\n"
  "function die(x) os.exit(3) end\n"
  "function slow(x) local t = os.clock() + x while os.clock() < t do end "
  "return x end\n"
  "function usenative(a, b) return native.hyp(a, b) end\n"
  "function count(x) return x + 1 end\n";

static void test_export(int zygote) {
  errcalls = 0;
  pcr_options o;
  pcr_options_init(&o);
  o.zygote = zygote;
  o.workers = 2;
  o.export_error = onerr;
  o.export_error_ud = &errcalls;
  pcr_runtime *rt;
  CHECK(pcr_open(&rt, &o) == PCR_OK);
  CHECK(reg(rt, "hyp", PCR_FN(n_hyp), "double(double, double)") == 0);
  lua_ok(rt, exported_lua);
  double (*sq1)(double), (*boom)(double), (*notnum)(double), (*die)(double);
  double (*usenative)(double, double);
  const char *(*shout)(const char *, int);
  CHECK(pcr_export(rt, "sq1", "double(double)", &sq1) == PCR_OK);
  CHECK(pcr_export(rt, "boom", "double(double)", &boom) == PCR_OK);
  CHECK(pcr_export(rt, "notnum", "double(double)", &notnum) == PCR_OK);
  CHECK(pcr_export(rt, "die", "double(double)", &die) == PCR_OK);
  CHECK(pcr_export(rt, "usenative", "double(double, double)", &usenative) ==
        PCR_OK);
  CHECK(pcr_export(rt, "shout", "const char *(const char *, int)", &shout) ==
        PCR_OK);

  CHECK(sq1(3) == 10);
  CHECK(usenative(6, 8) == 10);
  const char *s = shout("hey", 2);
  CHECK(s && strcmp(s, "HEY!!") == 0);

  /* Four host threads at once. */
  pthread_t th[4];
  job jobs[4];
  for (int i = 0; i < 4; i++) {
    jobs[i] = (job){sq1, 500, 0};
    pthread_create(&th[i], NULL, hammer, &jobs[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    CHECK(jobs[i].bad == 0);
  }

  /* The error path: NaN and a status naming what went wrong. */
  const char *msg;
  CHECK(isnan(boom(7)));
  CHECK(pcr_export_status(&msg) == PCR_ELUA);
  HAS(msg, "export 'boom'");
  HAS(msg, "boom at 7");
  HAS(msg, "stack traceback");
  CHECK(isnan(notnum(1)));
  CHECK(pcr_export_status(&msg) == PCR_ETYPE);
  HAS(msg, "export 'notnum': result must be a number, got string");
  CHECK(sq1(2) == 5 && pcr_export_status(NULL) == PCR_OK);
  CHECK(errcalls == 2);

  /* A worker that dies fails only its call. */
  CHECK(isnan(die(0)));
  CHECK(pcr_export_status(&msg) == PCR_ECHILD);
  HAS(msg, "export 'die': worker pid");
  HAS(msg, "died during the call");
  CHECK(sq1(4) == 17);
  if (zygote) {  /* replaced from the zygote: both die again, one by one */
    CHECK(isnan(die(0)) && pcr_export_status(NULL) == PCR_ECHILD);
    CHECK(isnan(die(0)) && pcr_export_status(NULL) == PCR_ECHILD);
    CHECK(isnan(die(0)) && pcr_export_status(NULL) == PCR_ECHILD);
  }

  /* Bad input. */
  void *fp = NULL;
  CHECK(pcr_export(rt, "sq1", "double(double", &fp) == PCR_EINVAL);
  HAS(pcr_last_error(rt), "pcr_export: 'sq1': bad signature");
  CHECK(pcr_export(rt, "nosuch", "double(double)", &fp) == PCR_EINVAL);
  HAS(pcr_last_error(rt), "global 'nosuch' is not a function (nil)");
  CHECK(pcr_export(rt, "sq1", "double(double)", NULL) == PCR_EINVAL);
  CHECK(fp == NULL);
  char longs[3000];
  memset(longs, 'a', sizeof longs - 1);
  longs[sizeof longs - 1] = 0;
  CHECK(shout(longs, 1) == NULL);
  CHECK(pcr_export_status(&msg) == PCR_EINVAL);
  HAS(msg, "string arguments take more than 2048 bytes in all");
  memset(longs, 'a', 2046);  /* 2047 characters: the most one string takes */
  longs[2047] = 0;
  s = shout(longs + 1, 0);
  CHECK(s && strlen(s) == 2046 && pcr_export_status(NULL) == PCR_OK);

  pcr_close(rt);
  CHECK(descendants() == 0);
}

/* A worker whose memory is full when a call's arguments are pushed (its
** string needs room): that call fails with 'not enough memory', the
** worker collects the garbage and serves the next ones. hog(s, 1) lowers
** the worker's RLIMIT_AS, stops the collector and fills the heap with
** garbage; hog(s, 2) restarts the collector. */
static const char oom_lua[] =
  "local ffi = require 'ffi'\n"
  "pcall(ffi.cdef, 'struct pcr_rlimit { unsigned long cur, max; };'\n"
  "  .. 'int setrlimit(int resource, const struct pcr_rlimit *rl);')\n"
  "function hog(s, n)\n"
  "  if n == 1 then\n"
  "    jit.off()\n"
  "    collectgarbage('stop')\n"
  "    local f = assert(io.open('/proc/self/statm'))\n"
  "    local pages = tonumber(f:read('*a'):match('^(%d+)'))\n"
  "    f:close()\n"
  "    local lim = pages * 4096 + 64 * 2 ^ 20\n"
  "    assert(ffi.C.setrlimit(9, ffi.new('struct pcr_rlimit', lim, lim)) == 0)\n"
  "    local function fill(size)\n"
  "      local t = {}\n"
  "      while true do t = { t, ('y'):rep(size) .. tostring(t) } end\n"
  "    end\n"
  "    for _, size in ipairs({ 2 ^ 20, 65536, 1024, 64, 8 }) do\n"
  "      pcall(fill, size)  -- allocates nothing itself\n"
  "    end\n"
  "    return 1\n"
  "  elseif n == 2 then\n"
  "    collectgarbage('restart')\n"
  "    return 2\n"
  "  end\n"
  "  return #s\n"
  "end\n";

static void test_export_oom(void) {
  pcr_options o;
  pcr_options_init(&o);
  o.workers = 1;
  pcr_runtime *rt;
  CHECK(pcr_open(&rt, &o) == PCR_OK);
  lua_ok(rt, oom_lua);
  int (*hog)(const char *, int);
  CHECK(pcr_export(rt, "hog", "int(const char *, int)", &hog) == PCR_OK);
  CHECK(hog("ab", 0) == 2);
  const char *msg;
  int r1 = hog("ab", 1);
  if (pcr_export_status(&msg) != PCR_OK) fprintf(stderr, "  hog: %s\n", msg);
  CHECK(r1 == 1);
  char fresh[1500];  /* a string the worker has never seen: it allocates */
  for (size_t i = 0; i < sizeof fresh - 1; i++) fresh[i] = 'a' + i % 26;
  fresh[sizeof fresh - 1] = 0;
  fresh[0] = 'Q';
  CHECK(hog(fresh, 0) == 0);
  CHECK(pcr_export_status(&msg) == PCR_ELUA);
  HAS(msg, "export 'hog': not enough memory");
  fresh[0] = 'R';
  CHECK(hog(fresh, 0) == 1499 && pcr_export_status(NULL) == PCR_OK);
  CHECK(hog("ab", 2) == 2);
  CHECK(hog(fresh, 0) == 1499);
  pcr_close(rt);
  CHECK(descendants() == 0);
}

/* pcr_close while host threads are inside calls: they return ECLOSED. */
typedef struct slowjob { double (*f)(double); int code; double r; } slowjob;

static void *callslow(void *arg) {
  slowjob *j = arg;
  j->r = j->f(30);  /* 30 s of work: only close can end it early */
  j->code = pcr_export_status(NULL);
  return NULL;
}

static void test_close_in_flight(int zygote) {
  pcr_runtime *rt = open_rt(zygote, 2);
  lua_ok(rt, exported_lua);
  double (*slow)(double);
  CHECK(pcr_export(rt, "slow", "double(double)", &slow) == PCR_OK);
  CHECK(slow(0.01) == 0.01);
  pthread_t th[3];
  slowjob jobs[3];
  for (int i = 0; i < 3; i++) {  /* 3 calls, 2 workers: one waits posted */
    jobs[i] = (slowjob){slow, 0, 0};
    pthread_create(&th[i], NULL, callslow, &jobs[i]);
  }
  usleep(200 * 1000);
  pcr_close(rt);
  for (int i = 0; i < 3; i++) {
    pthread_join(th[i], NULL);
    CHECK(jobs[i].code == PCR_ECLOSED);
    CHECK(isnan(jobs[i].r));
  }
  CHECK(descendants() == 0);
}

/* Zygote mode: the host starts threads first, then exports: no fork in the
** host after pcr_open (the workers are the zygote's children). */
static void *idle(void *arg) {
  volatile int *stop = arg;
  while (!*stop) usleep(1000);
  return NULL;
}

static void test_zygote_parentage(void) {
  pcr_runtime *rt = open_rt(1, 2);
  volatile int stop = 0;
  pthread_t t;
  pthread_create(&t, NULL, idle, (void *)&stop);
  lua_ok(rt, exported_lua);
  double (*count)(double);
  CHECK(descendants() == 1);  /* the zygote */
  CHECK(pcr_export(rt, "count", "double(double)", &count) == PCR_OK);
  CHECK(count(1) == 2);
  CHECK(descendants() == 3);  /* the zygote and its 2 workers */
  stop = 1;
  pthread_join(t, NULL);
  pcr_close(rt);
  CHECK(descendants() == 0);
}

/* Without zygote mode dead workers are not replaced: once all have died a
** call fails with PCR_ECHILD (it used to wait forever). */
static void test_all_dead(void) {
  pcr_runtime *rt = open_rt(0, 2);
  lua_ok(rt, exported_lua);
  double (*die)(double), (*sq1)(double);
  CHECK(pcr_export(rt, "die", "double(double)", &die) == PCR_OK);
  CHECK(pcr_export(rt, "sq1", "double(double)", &sq1) == PCR_OK);
  const char *msg;
  for (int i = 0; i < 2; i++)
    CHECK(isnan(die(0)) && pcr_export_status(NULL) == PCR_ECHILD);
  CHECK(isnan(die(0)));
  CHECK(pcr_export_status(&msg) == PCR_ECHILD);
  HAS(msg, "export 'die': every worker has died");
  CHECK(isnan(die(0)) && pcr_export_status(NULL) == PCR_ECHILD);
  CHECK(sq1(1) == 2);  /* other exports go on */
  pcr_close(rt);
  CHECK(descendants() == 0);
}

/* -- Workers that die while idle ---------------------------------------- */

/* Children of pid (single-threaded) that are not zombies; *one gets one. */
static int live_children(int pid, int *one) {
  char path[64], state;
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, pid);
  FILE *f = fopen(path, "r");
  int kid, ppid, n = 0;
  if (!f) return -1;
  while (fscanf(f, "%d", &kid) == 1) {
    snprintf(path, sizeof path, "%d", kid);
    if (proc_stat(path, &state, &ppid) < 0 || state == 'Z') continue;
    n++;
    if (one) *one = kid;
  }
  fclose(f);
  return n;
}

static int zygote_pid(void) {
  int z = 0;
  return live_children((int)getpid(), &z) == 1 ? z : 0;
}

/* Kill pid and wait (at most 5 s) until it is no live process. */
static void kill_wait(int pid) {
  char path[64], stat[512];
  kill(pid, SIGKILL);
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  for (int t = 0; t < 5000; t++) {
    FILE *g = fopen(path, "r");
    if (!g) return;
    size_t k = fread(stat, 1, sizeof stat - 1, g);
    fclose(g);
    stat[k] = 0;
    char *p = strrchr(stat, ')');
    if (p && p[2] == 'Z') return;
    usleep(1000);
  }
}

typedef struct sjob { double (*f)(double); int n, bad; } sjob;

static void *slowcalls(void *arg) {
  sjob *j = arg;
  for (int i = 0; i < j->n; i++)
    if (j->f(0.002) != 0.002 || pcr_export_status(NULL) != PCR_OK) j->bad++;
  return NULL;
}

/* Zygote mode: a worker killed while idle is replaced by callers that had
** to wait, without a call stalling on it first, and concurrent calls all
** succeed meanwhile. */
static void test_idle_death(void) {
  pcr_runtime *rt = open_rt(1, 3);
  lua_ok(rt, exported_lua);
  double (*slow)(double);
  CHECK(pcr_export(rt, "slow", "double(double)", &slow) == PCR_OK);
  CHECK(slow(0.001) == 0.001);
  int zpid = zygote_pid(), w = 0;
  CHECK(zpid > 0);
  CHECK(live_children(zpid, &w) == 3 && w > 0);
  kill_wait(w);
  CHECK(live_children(zpid, NULL) == 2);
  /* One caller at a time: every call is taken at once by a live worker,
  ** so only the scan of a waiting caller can find the dead one. */
  int n = 0, bad = 0;
  double until = now_s() + 10;
  while (live_children(zpid, NULL) != 3 && now_s() < until) {
    if (slow(0.002) != 0.002 || pcr_export_status(NULL) != PCR_OK) bad++;
    n++;
  }
  CHECK(bad == 0 && n > 0);
  CHECK(live_children(zpid, NULL) == 3);

  /* Again, with calls from 4 threads at once. */
  CHECK(live_children(zpid, &w) == 3 && w > 0);
  kill_wait(w);
  pthread_t th[4];
  sjob jobs[4];
  for (int i = 0; i < 4; i++) {
    jobs[i] = (sjob){slow, 50, 0};
    pthread_create(&th[i], NULL, slowcalls, &jobs[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    CHECK(jobs[i].bad == 0);
  }
  until = now_s() + 10;
  while (live_children(zpid, NULL) != 3 && now_s() < until)
    CHECK(slow(0.002) == 0.002);
  CHECK(live_children(zpid, NULL) == 3);
  pcr_close(rt);
  CHECK(descendants() == 0);
}

/* A dead worker's pid, once reaped (by the zygote, or by the host without
** one), may be reused by an unrelated process: calls and pcr_close must
** leave that process alone. Needs a writable ns_last_pid to force the
** reuse; skipped otherwise. */
static void test_pid_reuse(int zygote) {
  FILE *lp = fopen("/proc/sys/kernel/ns_last_pid", "r+");
  if (!lp) {
    fprintf(stderr, "  test_pid_reuse(%d): skipped (ns_last_pid)\n", zygote);
    return;
  }
  pcr_runtime *rt = open_rt(zygote, 2);
  lua_ok(rt, exported_lua);
  double (*slow)(double);
  CHECK(pcr_export(rt, "slow", "double(double)", &slow) == PCR_OK);
  CHECK(slow(0.001) == 0.001);
  int parent = zygote ? zygote_pid() : (int)getpid(), w = 0;
  CHECK(parent > 0 && live_children(parent, &w) == 2 && w > 0);
  kill_wait(w);
  if (zygote) {  /* the zygote reaps it within its 200 ms poll */
    char path[64];
    snprintf(path, sizeof path, "/proc/%d", w);
    for (int t = 0; t < 5000 && access(path, F_OK) == 0; t++) usleep(1000);
  } else {       /* the host's registry reaps it (as before each fork) */
    pcr__proc_sweep();
  }
  fprintf(lp, "%d", w - 1);
  fclose(lp);
  int fds[2];
  CHECK(pipe(fds) == 0);
  pid_t other = fork();
  if (other == 0) {  /* an unrelated process with the worker's pid */
    close(fds[0]);
    pause();
    _exit(0);
  }
  close(fds[1]);
  if (other != w) {
    fprintf(stderr, "  test_pid_reuse(%d): pid not reused, partly "
            "skipped\n", zygote);
  }
  for (int i = 0; i < 20; i++)
    CHECK(slow(0.002) == 0.002 && pcr_export_status(NULL) == PCR_OK);
  pcr_close(rt);
  int ost = 0;
  pid_t wr = waitpid(other, &ost, WNOHANG);
  if (wr != 0) fprintf(stderr, "  test_pid_reuse(%d): %d gone, status %#x\n",
                       zygote, (int)other, ost);
  CHECK(wr == 0);  /* still running */
  kill(other, SIGKILL);
  while (waitpid(other, NULL, 0) < 0 && errno == EINTR) {}
  close(fds[0]);
  CHECK(descendants() == 0);
}

/* A function pointer still called after pcr_close fails cleanly: the
** export's closure and state are kept, saying "closed". */
static void test_call_after_close(int zygote) {
  pcr_runtime *rt = open_rt(zygote, 1);
  lua_ok(rt, exported_lua);
  double (*slow)(double);
  CHECK(pcr_export(rt, "slow", "double(double)", &slow) == PCR_OK);
  CHECK(slow(0.001) == 0.001);
  pcr_close(rt);
  double v = slow(1);
  CHECK(isnan(v) && pcr_export_status(NULL) == PCR_ECLOSED);
  CHECK(descendants() == 0);
}

/* One runtime per process: a second pcr_open fails until the first is
** closed. */
static void test_one_runtime(void) {
  pcr_runtime *a = open_rt(0, 1), *b = (pcr_runtime *)&b;
  CHECK(pcr_open(&b, NULL) == PCR_EINVAL && b == NULL);
  pcr_close(a);
  CHECK(pcr_open(&b, NULL) == PCR_OK);
  pcr_close(b);
}

/* A host that returns from main without pcr_close: the exit reaper stops
** the zygote and workers instead of waiting for them (it used to hang). */
static void test_exit_without_close(int zygote) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    pcr_options o;
    pcr_options_init(&o);
    o.zygote = zygote;
    o.workers = 2;
    pcr_runtime *rt;
    double (*count)(double);
    if (pcr_open(&rt, &o) || pcr_run_string(rt, exported_lua, "=x") ||
        pcr_export(rt, "count", "double(double)", &count) || count(1) != 2)
      _exit(2);
    exit(0);  /* atexit handlers run; LeakSanitizer may object to rt */
  }
  int st;
  CHECK(waitpid(pid, &st, 0) == pid);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 2);
  CHECK(descendants() == 0);
}

/* Lua API calls that may raise run protected: no libs, a strict _G, and
** results whose `ptr` lookup raises give error codes, not a panic. */
static void test_protected(void) {
  pcr_options o;
  pcr_options_init(&o);
  o.open_libs = 0;
  pcr_runtime *rt;
  CHECK(pcr_open(&rt, &o) == PCR_OK);
  CHECK(pcr_run_string(rt, "x = 1", "=s") == PCR_OK);
  pcr_close(rt);

  rt = open_rt(0, 1);
  lua_ok(rt,
    "local ffi = require 'ffi'\n"
    "local obj = { p = ffi.cast('void *', 0x1234) }\n"
    "function obj.ptr(self) return self.p end\n"
    "function getm() return obj end\n"
    "function proxy() return newproxy() end\n"
    "function strictobj() return setmetatable({}, { __index = "
    "function(_, k) error('no field ' .. k) end }) end\n");
  void *p = NULL, *(*gm)(void), *(*so)(void);
  CHECK(pcr_call(rt, "getm", "void *(void)", &p) == PCR_OK);
  CHECK(p == (void *)0x1234);
  CHECK(pcr_call(rt, "proxy", "void *(void)", &p) == PCR_ETYPE);
  HAS(pcr_last_error(rt), "result must be a pointer, got userdata");
  CHECK(pcr_call(rt, "strictobj", "void *(void)", &p) == PCR_ETYPE);
  HAS(pcr_last_error(rt), "no field ptr");
  CHECK(pcr_export(rt, "getm", "void *(void)", &gm) == PCR_OK);
  CHECK(pcr_export(rt, "strictobj", "void *(void)", &so) == PCR_OK);
  CHECK(gm() == (void *)0x1234 && pcr_export_status(NULL) == PCR_OK);
  const char *msg;
  CHECK(so() == NULL && pcr_export_status(&msg) == PCR_ETYPE);
  HAS(msg, "no field ptr");
  CHECK(so() == NULL && pcr_export_status(NULL) == PCR_ETYPE);

  lua_ok(rt, "setmetatable(_G, { __index = function(_, k) "
         "error('undefined global ' .. k, 2) end, __newindex = "
         "function(_, k) error('new global ' .. k, 2) end })");
  CHECK(pcr_call(rt, "nosuch", "void(void)", NULL) == PCR_ELUA);
  HAS(pcr_last_error(rt), "undefined global nosuch");
  void *fp = NULL;
  CHECK(pcr_export(rt, "nosuch", "void(void)", &fp) == PCR_ELUA && !fp);
  HAS(pcr_last_error(rt), "undefined global nosuch");
  CHECK(pcr_require(rt, "pcrun.native") == PCR_ELUA);
  HAS(pcr_last_error(rt), "new global pcrun.native");
  char *argv[] = {"nofile.lua", NULL};
  CHECK(pcr_run_file(rt, "/nonexistent/x.lua", 1, argv) == PCR_ELUA);
  HAS(pcr_last_error(rt), "new global arg");
  pcr_close(rt);
  CHECK(descendants() == 0);
}

/* pcr_close in a forked copy of the host leaves the host's runtime
** alone (it used to close its exports and free its arena blocks). */
static void test_close_in_fork(int zygote) {
  pcr_runtime *rt = open_rt(zygote, 1);
  lua_ok(rt, exported_lua);
  double (*sq1)(double);
  CHECK(pcr_export(rt, "sq1", "double(double)", &sq1) == PCR_OK);
  CHECK(sq1(1) == 2);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) { pcr_close(rt); _exit(0); }
  int st;
  CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st));
  CHECK(sq1(2) == 5 && pcr_export_status(NULL) == PCR_OK);
  pcr_close(rt);
  CHECK(descendants() == 0);
}

/* Limits: export names, string results; reserved native names; a
** registration the dead zygote cannot take is undone. */
static void test_limits(void) {
  pcr_runtime *rt = open_rt(1, 1);
  char name[80], code[200];
  memset(name, 'f', 70);
  name[70] = 0;
  snprintf(code, sizeof code, "function %s(x) return x end\n"
           "function big(n) return ('x'):rep(n) end", name);
  lua_ok(rt, code);
  void *fp = NULL;
  CHECK(pcr_export(rt, name, "double(double)", &fp) == PCR_EINVAL && !fp);
  HAS(pcr_last_error(rt), "is longer than 63 characters");
  name[63] = 0;
  snprintf(code, sizeof code, "function %s(x) return x end", name);
  lua_ok(rt, code);
  double (*f)(double);
  CHECK(pcr_export(rt, name, "double(double)", &f) == PCR_OK && f(3) == 3);
  const char *(*big)(int), *msg;
  CHECK(pcr_export(rt, "big", "const char *(int)", &big) == PCR_OK);
  CHECK(strlen(big(2047)) == 2047 && pcr_export_status(NULL) == PCR_OK);
  CHECK(big(2048) == NULL && pcr_export_status(&msg) == PCR_ETYPE);
  HAS(msg, "export 'big': string result of 2048 bytes is longer than the "
      "limit of 2047 bytes");
  CHECK(pcr_register(rt, "has", PCR_FN(n_hyp), "double(double, double)") ==
        PCR_EINVAL);
  CHECK(pcr_register(rt, "names", PCR_FN(n_hyp), "double(double, double)")
        == PCR_EINVAL);
  HAS(pcr_last_error(rt), "bad name 'names'");

  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)getpid(),
           (int)getpid());
  FILE *fh = fopen(path, "r");
  int zpid = 0;
  if (fh) {
    CHECK(fscanf(fh, "%d", &zpid) == 1);
    fclose(fh);
  }
  if (zpid > 0) {  /* the zygote, our only child */
    kill(zpid, SIGKILL);
    while (waitpid(zpid, NULL, 0) < 0 && errno == EINTR) {}
    CHECK(pcr_register(rt, "hyp", PCR_FN(n_hyp), "double(double, double)")
          == PCR_ESYS);
    HAS(pcr_last_error(rt), "the zygote could not register it");
    CHECK(pcr_register(rt, "hyp", PCR_FN(n_hyp), "double(double, double)")
          == PCR_ESYS);  /* not "already registered": it was undone */
    lua_ok(rt, "assert(not require('pcrun.native').has('hyp'))");
  }
  pcr_close(rt);
  CHECK(descendants() == 0);
}

int main(void) {
  setvbuf(stderr, NULL, _IONBF, 0);
  test_sig_valid();
  test_sig_invalid();
  test_sig_fuzz();
  test_call();
  test_native();
  test_native_array();
  test_export(0);
  test_export(1);
  test_export_oom();
  test_close_in_flight(0);
  test_close_in_flight(1);
  test_zygote_parentage();
  test_all_dead();
  test_idle_death();
  test_pid_reuse(0);
  test_pid_reuse(1);
  test_one_runtime();
  test_call_after_close(0);
  test_call_after_close(1);
  test_exit_without_close(0);
  test_exit_without_close(1);
  test_protected();
  test_close_in_fork(0);
  test_close_in_fork(1);
  test_limits();
  return finish("c_embed");
}
