/* Tests of the embedding API: open, run, errors, close reaping children. */
#include "pcrun.h"
#include "testlib.h"

static void test_errors(void) {
  CHECK(strcmp(pcr_strerror(PCR_OK), "success") == 0);
  CHECK(strcmp(pcr_err_name(PCR_EINVAL), "PCR_EINVAL") == 0);
  CHECK(strcmp(pcr_strerror(-999), "unknown error") == 0);
  CHECK(strcmp(pcr_version(), PCR_VERSION_STRING) == 0);
  CHECK(pcr_open(NULL, NULL) == PCR_EINVAL);
  pcr_options o;
  pcr_options_init(&o);
  o.workers = -1;
  pcr_runtime *rt = (pcr_runtime *)1;
  CHECK(pcr_open(&rt, &o) == PCR_EINVAL);
  CHECK(rt == NULL);
  pcr_close(NULL);
}

static void test_run(void) {
  pcr_runtime *rt;
  CHECK(pcr_open(&rt, NULL) == PCR_OK);
  CHECK(pcr_run_string(rt, "x = 1 + 1", NULL) == PCR_OK);
  CHECK(strcmp(pcr_last_error(rt), "") == 0);
  CHECK(pcr_run_string(rt, "assert(x == 2)", NULL) == PCR_OK);
  CHECK(pcr_run_string(rt, "error('boom')", "=t") == PCR_ELUA);
  CHECK(strstr(pcr_last_error(rt), "boom") != NULL);
  CHECK(strstr(pcr_last_error(rt), "stack traceback") != NULL);
  CHECK(pcr_run_string(rt, "x = = 1", "=t") == PCR_ESYNTAX);
  CHECK(pcr_run_file(rt, "/nonexistent/x.lua", 0, NULL) == PCR_EFILE);
  CHECK(strstr(pcr_last_error(rt), "nonexistent") != NULL);
  CHECK(pcr_require(rt, "pcrun") == PCR_OK);
  CHECK(pcr_run_string(rt, "assert(pcrun.cpu_count() >= 1)", NULL) == PCR_OK);
  CHECK(pcr_lua_state(rt) != NULL);
  pcr_close(rt);
}

static void test_children_reaped(void) {
  pcr_runtime *rt;
  CHECK(pcr_open(&rt, NULL) == PCR_OK);
  CHECK(pcr_run_string(rt,
    "local pcrun = require 'pcrun'\n"
    "for i = 1, 3 do\n"
    "  pcrun.process(function() local t = os.time() + 0.3\n"
    "    while os.time() < t do end end):start()\n"
    "end", NULL) == PCR_OK);
  CHECK(descendants() == 3);
  pcr_close(rt);  /* waits for them, as Python joins non-daemon children */
  CHECK(descendants() == 0);

  CHECK(pcr_open(&rt, NULL) == PCR_OK);
  CHECK(pcr_run_string(rt,
    "require('pcrun').process(function() while true do end end):start()",
    NULL) == PCR_OK);
  CHECK(descendants() == 1);
  pcr_kill_children(rt);
  CHECK(descendants() == 0);
  pcr_close(rt);
}

/* Offsets in a trusted message are still checked before any read: a
** misaligned one used to reach a header read (UBSan, under make asan). */
static void test_forged_offsets(void) {
  pcr_runtime *rt;
  CHECK(pcr_open(&rt, NULL) == PCR_OK);
  CHECK(pcr_run_string(rt,
    "local pcrun, ffi = require 'pcrun', require 'ffi'\n"
    "local function ext(name, payload)\n"
    "  return '\\183\\2\\0\\14' .. string.char(#name) .. name ..\n"
    "         string.char(0x80 + #payload) .. payload\n"
    "end\n"
    "for _, off in ipairs({1001, 4097, 4104}) do\n"
    "  local w = ffi.new('struct { uint64_t off; int32_t k; uint32_t t; }',\n"
    "                    off, 0, 0)\n"
    "  local ok, e = pcall(pcrun.decode, ext('pcrun.ObjRef',\n"
    "    ffi.string(w, 16)), { trusted = true })\n"
    "  assert(not ok and e:find('no longer exists'), e)\n"
    "  local c = ffi.new('struct { uint64_t i, o, ino, lend; int32_t pid, fd; }',\n"
    "                    off, off + 8, 0, 0, 0, -1)\n"
    "  ok, e = pcall(pcrun.decode, ext('pcrun.Connection',\n"
    "    ffi.string(c, 40)), { trusted = true })\n"
    "  assert(not ok and e:find('buffers are gone'), e)\n"
    "end", "=forged") == PCR_OK);
  if (*pcr_last_error(rt)) fprintf(stderr, "%s\n", pcr_last_error(rt));
  pcr_close(rt);
}

int main(void) {
  test_errors();
  test_run();
  test_children_reaped();
  test_forged_offsets();
  return finish("c_api");
}
