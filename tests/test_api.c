/* Tests of the embedding API: open, run, errors, close reaping children. */
#include "pcrun.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;

#define CHECK(cond) do { \
  if (!(cond)) { \
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    failures++; \
  } } while (0)

/* Count live children of this process by scanning /proc. */
static int children(void) {
  DIR *d = opendir("/proc");
  struct dirent *e;
  int n = 0;
  char path[300], buf[512];
  while ((e = readdir(d))) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = 0;
    char *p = strrchr(buf, ')');
    int ppid = 0;
    if (p && sscanf(p + 2, "%*c %d", &ppid) == 1 && ppid == getpid()) n++;
  }
  closedir(d);
  return n;
}

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
  CHECK(children() == 3);
  pcr_close(rt);  /* waits for them, as Python joins non-daemon children */
  CHECK(children() == 0);

  CHECK(pcr_open(&rt, NULL) == PCR_OK);
  CHECK(pcr_run_string(rt,
    "require('pcrun').process(function() while true do end end):start()",
    NULL) == PCR_OK);
  CHECK(children() == 1);
  pcr_kill_children(rt);
  CHECK(children() == 0);
  pcr_close(rt);
}

int main(void) {
  test_errors();
  test_run();
  test_children_reaped();
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  puts("c_api: all checks passed");
  return 0;
}
