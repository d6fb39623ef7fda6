/* The dict core (runtime/dict.c) without Lua: values, growth and
** shrinking, the recovery of a stripe whose writer died holding its lock
** (simulated exactly, then by SIGKILLs at random points of writes), and
** the arena back to its baseline. Runs under ASan too. */
#include "../runtime/dict.h"
#include "../runtime/pcrdef.h"
#include "testlib.h"

#include <signal.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Writers SIGKILLed; each kill may cost a lock probe (50 ms) and, under
** ASan, a slow fork. */
#define KILLS 80

/* fork, with the child killed if this test process dies first (a test
** that aborts or times out must not leave a writer spinning). */
static pid_t forkchild(void) {
  pid_t parent = getpid(), pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
  }
  return pid;
}

static pcr_dkey skey(const char *s) {
  pcr_dkey k = { PCR_DK_STRING, s, strlen(s), 0 };
  pcr__dict_key(&k);
  return k;
}

static pcr_dval sval(const char *s) {
  pcr_dval v = { PCR_DV_STRING, 0, s, strlen(s), NULL, 0 };
  return v;
}

static pcr_dval nval(double x) {
  pcr_dval v = { PCR_DV_NUMBER, x, NULL, 0, NULL, 0 };
  return v;
}

/* A key of stripe `stripe`: "s<stripe>-<n>" for the first n that hashes
** there. */
static pcr_dkey key_in(int stripe, char *buf, size_t cap) {
  for (int n = 0;; n++) {
    snprintf(buf, cap, "s%d-%d", stripe, n);
    pcr_dkey k = skey(buf);
    if ((int)(k.hash & (PCR_DICT_STRIPES - 1)) == stripe) return k;
  }
}

static void basics(void) {
  size_t base = pcr__shm_used();
  pcr_dict *d = pcr__dict_new(NULL);
  pcr_dout out = { 0 };
  char buf[64];
  for (int i = 0; i < 5000; i++) {
    snprintf(buf, sizeof buf, "key%d", i);
    pcr_dkey k = skey(buf);
    pcr_dval v = sval(buf);
    CHECK(pcr__dict_put(d, &k, &v, PCR_DC_ANY, NULL, 0, 0) == 1);
  }
  CHECK(pcr__dict_len(d) == 5000);
  for (int i = 0; i < 5000; i++) {
    snprintf(buf, sizeof buf, "key%d", i);
    pcr_dkey k = skey(buf);
    CHECK(pcr__dict_get(d, &k, &out) == 1);
    CHECK(out.kind == PCR_DV_STRING && out.n == strlen(buf) &&
          memcmp(out.buf, buf, out.n) == 0);
  }
  pcr_dkey c = skey("counter");
  double res = 0;
  unsigned kind;
  for (int i = 0; i < 1000; i++) pcr__dict_add(d, &c, 1, &res, &kind);
  CHECK(res == 1000);
  pcr_dkey k0 = skey("key0");
  CHECK(pcr__dict_add(d, &k0, 1, &res, &kind) == -EINVAL &&
        kind == PCR_DV_STRING);
  /* cas: absent -> 1 -> 2; a wrong old value stores nothing */
  pcr_dkey ck = skey("cas");
  pcr_dval one = nval(1), two = nval(2);
  CHECK(pcr__dict_put(d, &ck, &one, PCR_DC_VALUE, NULL, 0, 0) == 1);
  CHECK(pcr__dict_put(d, &ck, &two, PCR_DC_VALUE, NULL, 0, 0) == 0);
  CHECK(pcr__dict_put(d, &ck, &two, PCR_DC_VALUE, &one, 0, 0) == 1);
  CHECK(pcr__dict_get(d, &ck, &out) == 1 && out.num == 2);
  /* delete all: every stripe gives back its index */
  for (int i = 0; i < 5000; i++) {
    snprintf(buf, sizeof buf, "key%d", i);
    pcr_dkey k = skey(buf);
    CHECK(pcr__dict_put(d, &k, NULL, PCR_DC_ANY, NULL, 0, 0) == 1);
  }
  CHECK(pcr__dict_put(d, &c, NULL, PCR_DC_ANY, NULL, 0, 0) == 1);
  CHECK(pcr__dict_put(d, &ck, NULL, PCR_DC_ANY, NULL, 0, 0) == 1);
  CHECK(pcr__dict_len(d) == 0);
  size_t empty = pcr__shm_used();
  for (int i = 0; i < 3000; i++) {
    snprintf(buf, sizeof buf, "again%d", i);
    pcr_dkey k = skey(buf);
    pcr_dval v = nval(i);
    pcr__dict_put(d, &k, &v, PCR_DC_ANY, NULL, 0, 0);
  }
  pcr__dict_clear(d);
  CHECK(pcr__dict_len(d) == 0);
  CHECK(pcr__shm_used() == empty);
  pcr__obj_unref(&d->hdr);
  CHECK(pcr__shm_used() == base);
  free(out.buf);
}

/* A writer that died holding a stripe's lock with a change noted: the
** next writer of that stripe frees what was allocated and not published,
** and what was unlinked and not freed. */
static void dead_writer(void) {
  pcr_dict *d = pcr__dict_new(NULL);
  char buf[64];
  pcr_dkey k = key_in(5, buf, sizeof buf);
  pcr_dval v = sval("first");
  CHECK(pcr__dict_put(d, &k, &v, PCR_DC_ANY, NULL, 0, 0) == 1);
  size_t before = pcr__shm_used();
  pid_t pid = forkchild();
  if (pid == 0) {
    pcr__self_reset();
    pcr_dstripe *s = &d->s[5];
    pcr__lock_lock(&s->lock, -1);
    void *blk = pcr__shm_alloc(200);  /* an entry never published */
    memset(blk, 0, 200);
    s->a = pcr__shm_offset(blk);
    s->b = 0;
    atomic_store(&s->op, 1 /* OP_PUT */);
    _exit(0);  /* holding the lock */
  }
  int st;
  waitpid(pid, &st, 0);
  CHECK(pcr__shm_used() > before);
  pcr_dout out = { 0 };
  CHECK(pcr__dict_get(d, &k, &out) == 1);  /* readers never waited */
  pcr_dval v2 = sval("second");
  CHECK(pcr__dict_put(d, &k, &v2, PCR_DC_ANY, NULL, 0, 0) == 1);
  CHECK(pcr__shm_used() == before);  /* the dead writer's block is back */
  CHECK(pcr__dict_get(d, &k, &out) == 1 && out.n == 6 &&
        memcmp(out.buf, "second", 6) == 0);
  CHECK(atomic_load(&d->s[5].op) == 0);
  pcr__obj_unref(&d->hdr);
  free(out.buf);
}

/* SIGKILL a writer at random points, many times; check the table after
** each kill: every value is the one its key implies, len agrees. */
static void killed_writers(void) {
  size_t base = pcr__shm_used();
  pcr_dict *d = pcr__dict_new(NULL);
  srand(11);
  for (int round = 0; round < KILLS; round++) {
    pid_t pid = forkchild();
    if (pid == 0) {
      pcr__self_reset();
      char kb[32], vb[600];
      for (unsigned i = (unsigned)round * 7919;; i++) {
        unsigned n = i % 2000;
        snprintf(kb, sizeof kb, "k%u", n);
        pcr_dkey k = skey(kb);
        if (i % 5 == 0) {
          pcr__dict_put(d, &k, NULL, PCR_DC_ANY, NULL, 0, 0);
        } else {
          size_t len = (i % 500) + 1;  /* the value is the key's digits */
          for (size_t j = 0; j < len; j++) vb[j] = kb[1 + j % (strlen(kb) - 1)];
          pcr_dval v = { PCR_DV_STRING, 0, vb, len, NULL, 0 };
          pcr__dict_put(d, &k, &v, PCR_DC_ANY, NULL, 0, 0);
        }
        if (i % 3000 == 0) pcr__dict_clear(d);
      }
    }
    struct timespec ts = { 0, (long)(rand() % 20000) * 1000 };
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    pcr_dsnap s;
    CHECK(pcr__dict_snapshot(d, &s) == 0);
    CHECK((int64_t)s.count == pcr__dict_len(d));
    for (size_t at = 0; at < s.n;) {
      pcr_dent *e = (pcr_dent *)(s.buf + at);
      const char *digits = e->data + 1;
      size_t nd = e->klen - 1;
      CHECK(e->kkind == PCR_DK_STRING && e->vkind == PCR_DV_STRING);
      for (size_t j = 0; j < e->vlen; j++)
        if (PCR_DENT_VAL(e)[j] != digits[j % nd]) {
          CHECK(!"value does not match its key");
          break;
        }
      at += PCR_ALIGN_UP(PCR_DENT_SIZE(e), 8);
    }
    pcr__dict_snapshot_free(&s);
  }
  pcr__dict_clear(d);
  CHECK(pcr__dict_len(d) == 0);
  pcr__obj_unref(&d->hdr);
  /* Only a kill in the instant between allocating and noting (or
  ** unlinking and freeing) loses a block: bounded by one per kill. */
  size_t lost = pcr__shm_used() - base;
  CHECK(lost <= KILLS * 1024);
  printf("  killed writers: %d kills, %zu bytes lost\n", KILLS, lost);
}

/* Lock-free reads while another process replaces, deletes, grows and
** clears: every value read is whole (its bytes are the key's digits),
** whatever was freed and reused under the reader. */
static void readers_vs_writer(void) {
  pcr_dict *d = pcr__dict_new(NULL);
  pid_t pid = forkchild();
  if (pid == 0) {
    pcr__self_reset();
    char kb[32], vb[2100];
    for (unsigned i = 0;; i++) {
      unsigned n = (i * 2654435761u) % 300;
      snprintf(kb, sizeof kb, "r%u", n);
      pcr_dkey k = skey(kb);
      if (i % 7 == 0) {
        pcr__dict_put(d, &k, NULL, PCR_DC_ANY, NULL, 0, 0);
      } else {
        size_t len = (i * 31) % 2000 + 1;
        for (size_t j = 0; j < len; j++) vb[j] = kb[1 + j % (strlen(kb) - 1)];
        pcr_dval v = { PCR_DV_STRING, 0, vb, len, NULL, 0 };
        pcr__dict_put(d, &k, &v, PCR_DC_ANY, NULL, 0, 0);
      }
      if (i % 5000 == 0) pcr__dict_clear(d);
    }
  }
  pcr_dout out = { 0 };
  char kb[32];
  long reads = 0, found = 0, bad = 0;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do {
    for (unsigned n = 0; n < 300; n++, reads++) {
      snprintf(kb, sizeof kb, "r%u", n);
      pcr_dkey k = skey(kb);
      if (pcr__dict_get(d, &k, &out) != 1) continue;
      found++;
      size_t nd = strlen(kb) - 1;
      if (out.kind != PCR_DV_STRING || out.n == 0) bad++;
      for (size_t j = 0; j < out.n; j++)
        if (out.buf[j] != kb[1 + j % nd]) { bad++; break; }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
  } while (t1.tv_sec - t0.tv_sec < 2);
  kill(pid, SIGKILL);
  int st;
  waitpid(pid, &st, 0);
  CHECK(bad == 0);
  CHECK(found > 0);
  printf("  readers vs writer: %ld reads, %ld found, %ld torn\n", reads, found,
         bad);
  pcr__obj_unref(&d->hdr);
  free(out.buf);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(void) {
  CHECK(pcr__shm_attach((size_t)256 << 20) == 0);
  pcr__dict_init();
  double t = now();
  basics();
  dead_writer();
  printf("  basics, dead writer: %.2f s\n", now() - t);
  t = now();
  killed_writers();
  printf("  (%.2f s)\n", now() - t);
  t = now();
  readers_vs_writer();
  printf("  (%.2f s)\n", now() - t);
  CHECK(descendants() == 0);
  return finish("test_dict");
}
