/* make bench, group embed: calls of an exported Lua function from 1, 2
** and 4 host threads, against the same Lua function called in-process
** (pcr_call) by one thread. Prints "key value" lines for
** bench/cases/embed.lua. usage: bench_embed [calls per thread] */
#include <pcrun.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct arg { double (*f)(double); long n; int bad; } arg;

static void *worker(void *p) {
  arg *a = p;
  for (long i = 0; i < a->n; i++)
    if (a->f((double)i) != 2.0 * (double)i + 1) a->bad = 1;
  return NULL;
}

/* Run nthreads threads of n calls each; prints rate and microseconds. */
static int threads(double (*f)(double), int nt, long n) {
  pthread_t th[8];
  arg a[8];
  double t0 = now();
  for (int i = 0; i < nt; i++) {
    a[i] = (arg){f, n, 0};
    pthread_create(&th[i], NULL, worker, &a[i]);
  }
  int bad = 0;
  for (int i = 0; i < nt; i++) {
    pthread_join(th[i], NULL);
    bad |= a[i].bad;
  }
  double dt = now() - t0;
  printf("export%d_rate %.1f\nexport%d_us %.3f\n", nt, nt * n / dt, nt,
         dt / n * 1e6);  /* each thread waits dt / n per call */
  return bad;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 20000;
  pcr_options o;
  pcr_options_init(&o);
  o.zygote = 1;  /* the host runs threads */
  pcr_runtime *rt;
  double (*f)(double);
  if (pcr_open(&rt, &o) ||
      pcr_run_string(rt, "function f(x) return 2 * x + 1 end", "=bench") ||
      pcr_export(rt, "f", "double(double)", &f)) {
    fprintf(stderr, "bench_embed: %s\n", rt ? pcr_last_error(rt) : "open");
    return 1;
  }
  double r, t0 = now();
  for (long i = 0; i < n; i++)
    if (pcr_call(rt, "f", "double(double)", &r, (double)i) ||
        r != 2.0 * (double)i + 1) {
      fprintf(stderr, "bench_embed: %s\n", pcr_last_error(rt));
      return 1;
    }
  double dt = now() - t0;
  printf("inproc_rate %.1f\ninproc_us %.3f\n", n / dt, dt / n * 1e6);
  int bad = 0;
  for (long i = 0; i < 1000; i++) f(1);  /* warm the workers */
  bad |= threads(f, 1, n);
  bad |= threads(f, 2, n);
  bad |= threads(f, 4, n);
  pcr_close(rt);
  if (bad) fprintf(stderr, "bench_embed: a call returned a wrong result\n");
  return bad;
}
