/* The arena allocator (runtime/shm.c) without Lua: alignment, buddies
** merged on free (small blocks freed serve a large request again), the
** page release of large blocks next to live ones, and recovery from
** processes SIGKILLed while they hold the allocator's lock. Runs under
** ASan too. */
#include "../runtime/frame.h"
#include "../runtime/futex.h"
#include "../runtime/shm.h"
#include "testlib.h"

#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

#define KILLS 60

static char why[256];

static int consistent(void) {
  if (pcr__shm_check(why, sizeof why) == 0) return 1;
  fprintf(stderr, "arena check: %s\n", why);
  return 0;
}

static uint64_t rnd(void) {  /* xorshift: the same run each time */
  static uint64_t x = 88172645463325252ull;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return x;
}

/* Take every free byte in blocks of 32 (n = 16); returns how many, and
** frees them again. */
static size_t take_all_small(void) {
  size_t cap = 1 << 16, k = 0;
  void **v = malloc(cap * sizeof *v);
  for (void *p; (p = pcr__shm_alloc(16)); v[k++] = p)
    if (k == cap) v = realloc(v, (cap *= 2) * sizeof *v);
  for (size_t i = 0; i < k; i++) pcr__shm_free(v[i]);
  free(v);
  return k;
}

static void alignment(void) {
  size_t base = pcr__shm_used();
  static const size_t sizes[] = { 0, 1, 15, 16, 17, 48, 63, 64, 100, 1000,
                                  2032, 2033, 4080, 5000, 1 << 20 };
  void *p[sizeof sizes / sizeof *sizes];
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    p[i] = pcr__shm_alloc(sizes[i]);
    CHECK(p[i] != NULL);
    uintptr_t u = (uintptr_t)p[i];
    CHECK(u % 16 == 0);
    if (sizes[i] >= 64) CHECK(u % 64 == 0);
    if (sizes[i] > 2032) CHECK(u % 4096 == 0);
    memset(p[i], 0xa5, sizes[i]);
  }
  CHECK(consistent());
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
    pcr__shm_free(p[i]);
  CHECK(pcr__shm_used() == base);
  CHECK(consistent());
}

/* Leave about `keep` bytes free: take the largest blocks until what is
** left is that small. Returns the count taken into big[]. */
static int reserve(void **big, size_t keep) {
  int n = 0;
  size_t m;
  while ((m = pcr__shm_largest_free()) > keep) big[n++] = pcr__shm_alloc(m);
  return n;
}

/* Fill what is free with small blocks of mixed sizes, free them in a
** random order: the largest block serves again (it never did before the
** buddies merged). */
static void coalesce(void) {
  size_t base = pcr__shm_used(), largest = pcr__shm_largest_free();
  CHECK(largest >= pcr__shm_size() / 2 - 64);
  void *big[64];
  int nbig = reserve(big, (size_t)8 << 20);
  size_t region = pcr__shm_largest_free(), cap = 1 << 18, k = 0;
  CHECK(region >= ((size_t)4 << 20) - 16);
  void **v = malloc(cap * sizeof *v);
  for (;;) {
    void *p = pcr__shm_alloc(16 + rnd() % 2000);
    if (!p) p = pcr__shm_alloc(16);  /* fill the last crumbs too */
    if (!p) break;
    if (k == cap) v = realloc(v, (cap *= 2) * sizeof *v);
    v[k++] = p;
  }
  CHECK(pcr__shm_largest_free() == 0);
  CHECK(pcr__shm_alloc(region) == NULL);
  CHECK(consistent());
  for (size_t i = k; i > 1; i--) {  /* shuffle, then free */
    size_t j = rnd() % i;
    void *t = v[i - 1];
    v[i - 1] = v[j];
    v[j] = t;
  }
  for (size_t i = 0; i < k; i++) pcr__shm_free(v[i]);
  free(v);
  CHECK(consistent());
  CHECK(pcr__shm_largest_free() == region);
  void *r = pcr__shm_alloc(region);
  CHECK(r != NULL);
  pcr__shm_free(r);
  while (nbig) pcr__shm_free(big[--nbig]);
  CHECK(pcr__shm_used() == base);
  CHECK(pcr__shm_largest_free() == largest);
  r = pcr__shm_alloc(largest);  /* half the arena, from a fresh state */
  CHECK(r != NULL);
  pcr__shm_free(r);
  CHECK(consistent());
}

static long rss_shmem_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "RssShmem: %ld kB", &kb) == 1) break;
  if (f) fclose(f);
  return kb;
}

/* A freed 256 MiB block gives its pages back, the release spares the
** header of the block after it (in its last page), and it merges with
** that block, its buddy, once that is freed too. */
static void release(void) {
  size_t base = pcr__shm_used(), big = ((size_t)256 << 20) - 16;
  char *d = pcr__shm_alloc(big);  /* the 256 MiB block the space starts as */
  char *x = pcr__shm_alloc(big);  /* the lower half of the 512 MiB one */
  char *u = pcr__shm_alloc(big);  /* its buddy */
  CHECK(d && x && u && u == x + big + 16);
  memset(u, 0x5a, 100);
  for (size_t i = 0; i < (size_t)32 << 20; i += 4096) x[i] = 1;
  memset(x + big - 100, 1, 100);  /* the last page, shared with u's header */
  long before = rss_shmem_kb();
  pcr__shm_free(x);
  long after = rss_shmem_kb();
  CHECK(before < 0 || before - after >= 30 * 1024);
  CHECK(pcr__shm_at(pcr__shm_offset(u), 100) == u);  /* header intact */
  for (int i = 0; i < 100; i++) CHECK((unsigned char)u[i] == 0x5a);
  CHECK(consistent());
  pcr__shm_free(u);
  CHECK(consistent());
  char *m = pcr__shm_alloc(2 * big + 16);  /* x and u merged */
  CHECK(m == x && m[0] == 0 && m[4096] == 0);  /* x's pages were dropped */
  pcr__shm_free(m);
  pcr__shm_free(d);
  CHECK(pcr__shm_used() == base);
}

/* Fork a child that runs churn(round, arg) until it is SIGKILLed at a
** random moment within 5 ms; reap it and return its pid. */
static pid_t killed_child(int round, void (*churn)(int, void *), void *arg) {
  pid_t parent = getpid(), pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    churn(round, arg);
    _exit(0);
  }
  struct timespec ts = { 0, (long)(rnd() % 5000) * 1000 };
  nanosleep(&ts, NULL);
  kill(pid, SIGKILL);
  int st;
  waitpid(pid, &st, 0);
  CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  return pid;
}

enum { HOLD = 256 };

static void allocate_free(int round, void *arg) {
  _Atomic uint64_t *held = arg;
  for (uint64_t i = (uint64_t)round * 7919;; i++) {
    unsigned slot = (unsigned)(i * 2654435761u) % HOLD;
    uint64_t off = atomic_load(&held[slot]);
    if (off) pcr__shm_free_from(pcr__shm_base() + off, &held[slot]);
    size_t n = i % 7 == 0 ? 16 + i % 60000 : 16 + i % 500;
    pcr__shm_alloc_into(n, &held[slot], 0);
  }
}

/* Children in a tight alloc/free loop, SIGKILLed at random moments, often
** while they hold the allocator's lock. Each block is recorded in a slot
** in the arena as it is allocated and unrecorded as it is freed (the
** journal makes each pair one). After each kill: the state checks out
** (the next locker rebuilt it), nothing is lost, and every free byte can
** be allocated. */
static void killed_allocators(void) {
  void *big[64];
  int nbig = reserve(big, (size_t)2 << 20);
  /* The blocks a child holds, for the parent to free after its death. */
  _Atomic uint64_t *held = pcr__shm_alloc(HOLD * 8);
  CHECK(held != NULL);
  memset((void *)held, 0, HOLD * 8);
  size_t used0 = pcr__shm_used(), room = take_all_small() * 32;
  uint64_t repairs0 = pcr__shm_repairs();
  for (int round = 0; round < KILLS; round++) {
    killed_child(round, allocate_free, (void *)held);
    CHECK(consistent());
    for (int i = 0; i < HOLD; i++) {
      uint64_t off = atomic_exchange(&held[i], 0);
      if (off) pcr__shm_free(pcr__shm_base() + off);
    }
    /* Every block the child held was in a slot: all free, all serve. */
    CHECK(pcr__shm_used() == used0);
    CHECK(take_all_small() * 32 == room);
    CHECK(consistent());
  }
  uint64_t repaired = pcr__shm_repairs() - repairs0;
  fprintf(stderr, "test_shm: %d kills, %llu while holding the lock, %zu "
          "bytes lost\n", KILLS, (unsigned long long)repaired,
          pcr__shm_used() - used0);
  CHECK(repaired >= 1);  /* the faults did hit the lock */
  pcr__shm_free((void *)held);
  while (nbig) pcr__shm_free(big[--nbig]);
}

/* Children taking and dropping references of one object, each recorded
** in (or cleared from) an entry in the arena as one (pcr__obj_refop),
** SIGKILLed at random moments: after each, the count is the parent's one
** plus one per entry set. Taken and recorded in two steps, as before the
** journal, a death between them broke this. */
typedef struct holders { pcr_obj *o; _Atomic uint64_t *ent; } holders;

static void take_drop(int round, void *arg) {
  holders *h = arg;
  uint64_t ref = pcr__shm_offset(h->o);
  for (uint64_t i = (uint64_t)round * 7919;; i++) {
    unsigned k = (unsigned)(i * 2654435761u) % 64;
    if (atomic_load(&h->ent[k]))
      pcr__obj_refop(h->o, -1, NULL, &h->ent[k], 0, 0);
    else
      pcr__obj_refop(h->o, 1, NULL, &h->ent[k], ref, ref);
  }
}

static void killed_holders(void) {
  pcr_obj *o = pcr__obj_new(64, 7);  /* a type without a dtor */
  _Atomic uint64_t *ent = pcr__shm_alloc(64 * 8);
  CHECK(o && ent);
  memset((void *)ent, 0, 64 * 8);
  holders h = { o, ent };
  for (int round = 0; round < KILLS; round++) {
    killed_child(round, take_drop, &h);
    pcr__shm_free(pcr__shm_alloc(16));  /* takes the lock: a repair */
    uint32_t set = 0;
    for (int k = 0; k < 64; k++) set += atomic_load(&ent[k]) != 0;
    CHECK(atomic_load(&o->refs) == 1 + set);
    for (int k = 0; k < 64; k++)
      if (atomic_load(&ent[k])) pcr__obj_refop(o, -1, NULL, &ent[k], 0, 0);
    CHECK(atomic_load(&o->refs) == 1);
  }
  pcr__shm_free(ent);
  CHECK(pcr__obj_unref(o) == 1);
}

/* Children that record references in a ledger and give it up as at exit
** (pcr__ledger_exit), over and over, SIGKILLed at random moments; then
** their reaper drops what each one's ledger still names (pcr__frame_reap).
** Every reference and every chunk of the ledgers must come back: a child
** killed after it had taken its ledger's name off the table and before it
** freed the chunks left them to nobody (a pool worker killed as it
** exited: 1 KiB, 2 of 25 make test-repeat runs). */
static void record_exit(int round, void *arg) {
  pcr_obj *o = arg;
  (void)round;
  pcr__self_reset();
  for (;;) {
    long idx[3];
    pcr__ledger_forked();
    for (int k = 0; k < 3; k++) pcr__ledger_take(o, PCR_REF_PLAIN, &idx[k]);
    pcr__ledger_exit();
  }
}

static void killed_exiters(void) {
  pcr_obj *o = pcr__obj_new(64, 7);  /* a type without a dtor */
  CHECK(o != NULL);
  size_t used0 = pcr__shm_used();
  int leaks = 0;
  for (int round = 0; round < KILLS; round++) {
    size_t used = pcr__shm_used();
    uint32_t refs = atomic_load(&o->refs);
    pcr__frame_reap((uint32_t)killed_child(round, record_exit, o));
    leaks += atomic_load(&o->refs) != refs || pcr__shm_used() != used;
    CHECK(consistent());
  }
  CHECK(atomic_load(&o->refs) == 1 && pcr__shm_used() == used0);
  if (leaks)
    fprintf(stderr, "test_shm: %d of %d killed exits left references "
            "or chunks\n", leaks, KILLS);
  CHECK(leaks == 0);
  CHECK(pcr__obj_unref(o) == 1);
}

int main(void) {
  CHECK(pcr__shm_attach((size_t)1 << 30) == 0);
  CHECK(pcr__shm_used() == 0);
  CHECK(consistent());
  alignment();
  coalesce();
  release();
  killed_allocators();
  killed_holders();
  killed_exiters();
  CHECK(consistent());
  CHECK(descendants() == 0);
  return finish("test_shm");
}
