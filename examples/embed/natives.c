/* A host that runs a user script with native functions registered: the
** script calls them as pcrun.native.<name>, in the parent and in pool
** workers. Usage: embed_natives script.lua [args...] */
#include <pcrun.h>

#include <math.h>
#include <stdio.h>

/* The host's own C functions, exposed to Lua through libffi. */
static double damped(double x, double k) { return exp(-k * x) * cos(x); }
static int64_t collatz(int64_t n) {
  int64_t steps = 0;
  for (; n > 1; steps++) n = n % 2 ? 3 * n + 1 : n / 2;
  return steps;
}
static double mean(const double *xs, int n) {
  double t = 0;
  for (int i = 0; i < n; i++) t += xs[i];
  return n ? t / n : 0;
}
static void host_log(const char *msg) { fprintf(stderr, "[host] %s\n", msg); }

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: embed_natives script.lua [args...]\n");
    return 2;
  }
  pcr_runtime *rt;
  int r = pcr_open(&rt, NULL);
  if (r) {
    fprintf(stderr, "embed_natives: pcr_open: %s\n", pcr_strerror(r));
    return 1;
  }
  if (pcr_register(rt, "damped", PCR_FN(damped), "double(double, double)") ||
      pcr_register(rt, "collatz", PCR_FN(collatz), "int64_t(int64_t)") ||
      pcr_register(rt, "mean", PCR_FN(mean), "double(const double *, int)") ||
      pcr_register(rt, "log", PCR_FN(host_log), "void(const char *)")) {
    fprintf(stderr, "embed_natives: %s\n", pcr_last_error(rt));
    pcr_close(rt);
    return 1;
  }
  r = pcr_run_file(rt, argv[1], argc - 1, argv + 1);
  if (r) fprintf(stderr, "embed_natives: %s\n", pcr_last_error(rt));
  pcr_close(rt);
  return r ? 1 : 0;
}
