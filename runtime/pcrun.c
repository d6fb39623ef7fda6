/* The pcrun command: a thin host on the embedding API. Runs a script, a
** string or stdin; Ctrl-C becomes a Lua error and exit status 130. */
#include "pcrun.h"
#include "proc.h"
#include "shm.h"  /* pcr__shm_env_error */

#include <lua.h>
#include <luajit.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static lua_State *globalL;

static void stop(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  lua_pushliteral(L, "interrupted");
  lua_error(L);
}

/* The first Ctrl-C raises "interrupted" and stays pending (proc.h) until
** the script returns or clears it; a second one, while it is pending,
** ends everything now. */
static void onint(int sig) {
  (void)sig;
  if (pcr__interrupt_flag) {
    static const char msg[] = "\npcrun: interrupted\n";
    pcr__proc_kill_now();
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(130);
  }
  pcr__interrupt_flag = 1;
  pcr__interrupt_count++;
  lua_sethook(globalL, stop, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void usage(FILE *f) {
  fputs("usage: pcrun [options] [script [args...]]\n"
        "  -e code     run code\n"
        "  -l module   require module into a global of that name\n"
        "  -n N        default size of the pools the script creates\n"
        "  -v, --version  print the version\n"
        "  -h, --help     print this help\n"
        "  -           run the script read from standard input\n", f);
}

/* A script that returns while Ctrl-C is pending (it caught the error)
** still ends with 130. */
static int report(pcr_runtime *rt, int r) {
  if (r == PCR_OK && !pcr__interrupt_flag) return 0;
  if (r == PCR_OK) fputs("pcrun: interrupted\n", stderr);
  else fprintf(stderr, "pcrun: %s\n", pcr_last_error(rt));
  return pcr__interrupt_flag || pcr__interrupt_count ? 130 : 1;
}

/* What a bug report needs, from the LuaJIT actually loaded (the header's
** LUAJIT_VERSION may be another one's). */
static int version(const pcr_options *o) {
  pcr_runtime *rt;
  if (pcr_open(&rt, o)) {
    printf("pcrun %s (%s)\n", pcr_version(), LUAJIT_VERSION);
    return 1;
  }
  int r = pcr_run_string(rt,
      "local i = require 'pcrun'.info()\n"
      "print(('pcrun %s\\n%s (%s)\\nserializer fast path: %s\\n'\n"
      "  .. 'arena: %.0f MiB\\ncpus: %d'):format(i.version, i.luajit,\n"
      "  i.gc64 and 'GC64' or 'non-GC64', i.ser_fast and 'on' or\n"
      "  'off (tables go through the Lua API)', i.arena / 2^20, i.cpus))",
      "=(version)");
  if (r != PCR_OK) fprintf(stderr, "pcrun: %s\n", pcr_last_error(rt));
  pcr_close(rt);
  return r == PCR_OK ? 0 : 1;
}

int main(int argc, char **argv) {
  pcr_options o;
  pcr_options_init(&o);
  int i = 1, status = 0;
  const char *codes[64];
  char kinds[64];
  int ncode = 0;
  for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--")) { i++; break; }
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
    if (!strcmp(a, "-v") || !strcmp(a, "--version")) return version(&o);
    if ((!strcmp(a, "-e") || !strcmp(a, "-l") || !strcmp(a, "-n"))) {
      if (i + 1 >= argc) {
        fprintf(stderr, "pcrun: '%s' needs an argument\n", a);
        usage(stderr);
        return 1;
      }
      if (a[1] == 'n') {
        char *end;
        long n = strtol(argv[++i], &end, 10);
        if (*end || n < 1 || n > 4096) {
          fprintf(stderr, "pcrun: -n must be a positive integer\n");
          return 1;
        }
        o.workers = (int)n;
        continue;
      }
      if (ncode == 64) { fprintf(stderr, "pcrun: too many -e/-l\n"); return 1; }
      kinds[ncode] = a[1];
      codes[ncode++] = argv[++i];
      continue;
    }
    fprintf(stderr, "pcrun: unrecognized option '%s'\n", a);
    usage(stderr);
    return 1;
  }
  pcr_runtime *rt;
  if (pcr__shm_env_error()) {  /* say what is wrong, not "out of arena" */
    fprintf(stderr, "pcrun: %s\n", pcr__shm_env_error());
    return 1;
  }
  int r = pcr_open(&rt, &o);
  if (r) {
    fprintf(stderr, "pcrun: cannot start: %s\n", pcr_strerror(r));
    return 1;
  }
  globalL = pcr_lua_state(rt);
  struct sigaction sa = {.sa_handler = onint};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);  /* no SA_RESTART: waits see EINTR */
  for (int k = 0; k < ncode && status == 0; k++)
    status = report(rt, kinds[k] == 'e' ? pcr_run_string(rt, codes[k],
                                                          "=(command line)")
                                        : pcr_require(rt, codes[k]));
  if (status == 0 && i < argc)
    status = report(rt, pcr_run_file(rt, argv[i], argc - i, argv + i));
  else if (status == 0 && ncode == 0) {
    usage(stderr);
    status = 1;
  }
  signal(SIGINT, SIG_IGN);
  pcr__interrupt_flag = 0;  /* the teardown below must not raise */
  if (status) pcr_kill_children(rt);
  pcr_close(rt);
  return status;
}
