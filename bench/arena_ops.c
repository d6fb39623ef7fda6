/* The arena allocator's cost per alloc+free pair, in three patterns (run
** it under valgrind --tool=callgrind for instruction counts, as the
** commit messages of runtime/shm.c do).
** usage: bench_arena [pairs [pingpong|churn|big]] (all three by default)
**   pingpong  one 64-byte block allocated and freed in an empty arena
**   churn     4096 live blocks of 16..4000 bytes, a random one replaced
**   big       one 1 MiB block allocated and freed */
#include "../runtime/shm.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000000;
  const char *only = argc > 2 ? argv[2] : "";
  long np = !*only || !strcmp(only, "pingpong") ? n : 0;
  long nc = !*only || !strcmp(only, "churn") ? n : 0;
  long nb = !*only || !strcmp(only, "big") ? n : 0;
  if (pcr__shm_attach((size_t)1 << 30)) return 1;
  double t0 = now();
  for (long i = 0; i < np; i++) pcr__shm_free(pcr__shm_alloc(64));
  double t1 = now();
  enum { LIVE = 4096 };
  static void *live[LIVE];
  uint64_t x = 88172645463325252ull;
  for (int i = 0; i < LIVE; i++) live[i] = pcr__shm_alloc(16 + i % 3985);
  double t2 = now();
  for (long i = 0; i < nc; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    unsigned k = (unsigned)(x % LIVE);
    pcr__shm_free(live[k]);
    live[k] = pcr__shm_alloc(16 + (x >> 32) % 3985);
  }
  double t3 = now();
  for (int i = 0; i < LIVE; i++) pcr__shm_free(live[i]);
  double t4 = now();
  for (long i = 0; i < nb; i++) pcr__shm_free(pcr__shm_alloc(1 << 20));
  double t5 = now();
  printf("pingpong_ns %.1f\nchurn_ns %.1f\nbig_ns %.1f\nused %zu\n",
         (t1 - t0) / (np ? np : 1) * 1e9, (t3 - t2) / (nc ? nc : 1) * 1e9,
         (t5 - t4) / (nb ? nb : 1) * 1e9,
         pcr__shm_used());
  return pcr__shm_used() != 0;
}
