/* Frames over arena rings, with socket wake-ups only when a side sleeps:
** a busy sender and receiver exchange frames without a system call. */
#include "pipe.h"
#include "frame.h"
#include "pcrdef.h"

#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Spin this long before sleeping: waking a sleeper costs ~30 us each way
** on virtual machines, more than most waits between two messages. */
#define SPIN_SECONDS 100e-6
#define RECHECK 1.0        /* seconds; see pcr_conn.shared */
#define HDR PCR_FRAME_HDR
#define BIG ((size_t)1 << 18)  /* frames from here on go through a block */

/* A ring's last reference: what frames nobody read hold goes. */
static void ringdtor(pcr_obj *o) {
  pcr_ring *r = (pcr_ring *)o;
  pcr__frame_release(r->data, r->cap, 1, &r->tail, atomic_load(&r->head));
}

void pcr__conn_hold(pcr_ring *in, pcr_ring *out) {
  if (in) pcr__frame_take(&in->hdr, PCR_REF_READER);
  if (out) pcr__frame_take(&out->hdr, PCR_REF_WRITER);
}

void pcr__conn_drop(pcr_ring *in, pcr_ring *out) {
  if (in) pcr__frame_drop(pcr__shm_offset(in) | PCR_REF_READER);
  if (out) pcr__frame_drop(pcr__shm_offset(out) | PCR_REF_WRITER);
}

/* Take an end's references (reader of in, writer of out) and record
** them in the ledger at lidx[0], lidx[1], in that order. */
static void hold_end(pcr_conn *c, long *lidx) {
  long none[2];
  int n = 0;
  if (!lidx) lidx = none;
  if (c->in) pcr__ledger_take(&c->in->hdr, PCR_REF_READER, &lidx[n++]);
  if (c->out) pcr__ledger_take(&c->out->hdr, PCR_REF_WRITER, &lidx[n++]);
}

int pcr__pipe_open(pcr_conn *a, pcr_conn *b, int duplex, size_t cap,
                   long *alidx, long *blidx) {
  pcr__obj_set_dtor(PCR_OBJ_RING, ringdtor);
  int sv[2], e = -ENOSPC;
  long iab = -1, iba = -1;  /* the rings' first references */
  memset(a, 0, sizeof *a);
  memset(b, 0, sizeof *b);
  a->fd = b->fd = -1;
  pcr_ring *ab = pcr__ring_new(cap, &iab);
  pcr_ring *ba = duplex && ab ? pcr__ring_new(cap, &iba) : NULL;
  if (!ab || (duplex && !ba)) goto fail;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0,
                 sv) < 0) {
    e = -errno;
    goto fail;
  }
  if (duplex) {
    a->in = ba; a->out = ab; b->in = ab; b->out = ba;
  } else {  /* a reads, b writes, as Python's Pipe(duplex=False) */
    a->in = ab; b->out = ab;
  }
  /* Each end takes its own references, then the first ones go. */
  hold_end(a, alidx);
  hold_end(b, blidx);
  a->fd = sv[0];
  b->fd = sv[1];
  e = 0;
fail:
  if (ab) pcr__frame_obj_drop(&ab->hdr, &iab);
  if (ba) pcr__frame_obj_drop(&ba->hdr, &iba);
  return e;
}

/* Wake the peer if it sleeps on flag. */
static void wake(pcr_conn *c, _Atomic uint32_t *flag) {
  /* Pairs with the sleeper's exchange: it raises the flag then looks at
  ** the counters, we moved a counter and now look at the flag. */
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(flag, memory_order_relaxed) &&
      atomic_exchange(flag, 0)) {
    ssize_t r;
    PCR_EINTR_LOOP(r, send(c->fd, "w", 1, MSG_NOSIGNAL | MSG_DONTWAIT));
    if (r < 0 && errno == EPIPE) c->eof = 1;  /* EAGAIN: one is queued */
  }
}

/* Eat queued wake-ups; notice the peer's end closing. */
static void drain(pcr_conn *c) {
  char junk[256];
  for (;;) {
    ssize_t r = read(c->fd, junk, sizeof junk);
    if (r > 0) continue;
    if (r == 0) c->eof = 1;
    if (r < 0 && errno == EINTR) continue;
    return;
  }
}

/* Sleep on our socket until woken, the peer closes or the deadline.
** Returns 0, -ETIMEDOUT or -EINTR. */
static int sleepfd(pcr_conn *c, double deadline) {
  double until = c->exclusive ? -1 : pcr__now() + RECHECK;
  if (deadline >= 0 && (until < 0 || deadline < until)) until = deadline;
  int ms = until < 0 ? -1 : (int)((until - pcr__now()) * 1000.0 + 0.999);
  struct pollfd p = {.fd = c->fd, .events = POLLIN};
  int r = poll(&p, 1, until >= 0 && ms < 0 ? 0 : ms);
  if (r < 0) return errno == EINTR ? -EINTR : -errno;
  if (r > 0) drain(c);
  if (deadline >= 0 && pcr__now() >= deadline) return -ETIMEDOUT;
  return 0;
}

/* The other side of ring r is gone: no handle of it is left anywhere. */
static int gone(pcr_conn *c, pcr_ring *r, int reading) {
  if (c->eof) return 1;
  return atomic_load_explicit(reading ? &r->writers : &r->readers,
                              memory_order_relaxed) == 0;
}

/* Wait until amount(r) >= need, sleeping with *flag raised. */
static int waitfor(pcr_conn *c, pcr_ring *r, _Atomic uint32_t *flag,
                   size_t (*amount)(pcr_ring *), size_t need,
                   double deadline) {
  int reading = flag == &r->rsleep;
  double until = 0;
  for (unsigned i = 1;; i++) {
    if (amount(r) >= need) return 0;
    if ((i & 63) == 0 && gone(c, r, reading)) break;
    pcr__cpu_relax();
    if ((i & 63) == 0) {
      double t = pcr__now();
      if (until == 0) until = t + SPIN_SECONDS;
      else if (t >= until) break;
      sched_yield();  /* on a full machine, let the other side run */
    }
  }
  for (;;) {
    atomic_exchange(flag, 1);
    if (amount(r) >= need) { atomic_store(flag, 0); return 0; }
    if (gone(c, r, reading)) { atomic_store(flag, 0); return -EPIPE; }
    int e = sleepfd(c, deadline);
    if (amount(r) >= need) { atomic_store(flag, 0); return 0; }
    if (e < 0) { atomic_store(flag, 0); return e; }
  }
}

static size_t space(pcr_ring *r) { return pcr__ring_space(r); }
static size_t avail(pcr_ring *r) { return pcr__ring_avail(r); }

static int lockring(pcr_lock *l, double deadline) {
  int e = pcr__lock_lock(l, deadline);
  return e == PCR_LOCK_OWNERDEAD ? 0 : e;  /* its frame is lost, not ours */
}

/* A frame larger than the ring: its header, then segments (a length and
** that many bytes) as room frees up. Each write leaves room for one more
** header, so that a sender whose deadline passes (or whom a signal
** interrupts) can always end the frame with ABORT: the reader drops what
** it got of it, and nothing is left half-sent. Caller holds wlock. */
static int stream(pcr_conn *c, pcr_ring *r, const char *head, size_t hn,
                  const char *s, size_t n, double deadline) {
  size_t done = 0;
  int started = 0, e = 0;
  while (done < n) {
    size_t need = (started ? 0 : hn) + 2 * HDR + 1;
    size_t room = pcr__ring_room(r, need);
    if (room < need) {
      e = waitfor(c, r, &r->wsleep, space, need, deadline);
      if (e < 0) break;
      continue;
    }
    if (!started) {
      pcr__ring_write(r, head, hn);
      room -= hn;
      started = 1;
    }
    uint64_t k = room - 2 * HDR;
    if (k > n - done) k = n - done;
    if (done + k == n && hn > HDR)  /* the frame's now */
      pcr__frame_publish(&r->head,
                         pcr__ring_put_frame(r, &k, HDR, s + done, (size_t)k),
                         NULL, (hn - HDR) / 8 - 1);
    else
      pcr__ring_write_frame(r, &k, HDR, s + done, (size_t)k);
    done += (size_t)k;
    wake(c, &r->rsleep);
  }
  if (e < 0 && started) {  /* room for it was kept */
    uint64_t abort_ = PCR_FRAME_ABORT;
    pcr__ring_write(r, &abort_, HDR);
    wake(c, &r->rsleep);
  }
  return e;
}

int pcr__conn_send(pcr_conn *c, unsigned kind, const void *p, size_t n,
                   const uint64_t *refs, size_t nrefs, double deadline) {
  pcr_ring *r = c->out;
  if (c->fd < 0 || !r) return -EBADF;
  if (gone(c, r, 0)) return -EPIPE;
  /* The header and the list of references go first, in one write. */
  uint64_t local[16], *head = local;
  size_t hn = HDR + (nrefs ? 8 * (nrefs + 1) : 0);
  if (hn + 3 * HDR + 1 > r->cap) return -EMSGSIZE;
  if (hn > sizeof local && !(head = malloc(hn))) return -ENOMEM;
  if (nrefs) {
    head[1] = nrefs;
    memcpy(head + 2, refs, 8 * nrefs);
    kind |= PCR_FRAME_REFS;
  }
  int e = lockring(&r->wlock, deadline);
  if (e < 0) goto done;
  void *blk = n >= BIG ? pcr__shm_alloc_inflight(n) : NULL;
  uint64_t off;
  if (blk) {  /* one copy here, one into the Lua string there */
    memcpy(blk, p, n);
    off = pcr__shm_offset(blk);
    p = &off;
    kind |= PCR_FRAME_INDIRECT;
  }
  size_t len = n;
  if (blk) n = sizeof off;
  head[0] = ((uint64_t)len << 8) | kind;
  const char *s = p;
  size_t total = n + hn;
  size_t room = pcr__ring_room(r, total);
  if (room < total && total <= r->cap) {  /* whole or not at all */
    e = waitfor(c, r, &r->wsleep, space, total, deadline);
    room = e == 0 ? pcr__ring_room(r, total) : 0;
  }
  if (e == 0 && room >= total) {  /* it all fits */
    /* the frame owns its block and references from the publish on */
    pcr__frame_publish(&r->head, pcr__ring_put_frame(r, head, hn, s, n),
                       blk, nrefs);
    wake(c, &r->rsleep);
  } else if (e == 0) {
    head[0] |= PCR_FRAME_STREAM;
    e = stream(c, r, (const char *)head, hn, s, n, deadline);
  }
  if (e < 0 && blk) pcr__shm_free(blk);
  pcr__lock_unlock(&r->wlock);
done:
  if (head != local) free(head);
  return e < 0 ? e : 0;
}

static int reserve(pcr_conn *c, size_t n) {
  if (n <= c->bufcap) return 0;
  size_t cap = c->bufcap ? c->bufcap : 256;
  while (cap < n) cap *= 2;
  char *b = malloc(cap);
  if (!b) return -ENOMEM;
  free(c->buf);
  c->buf = b;
  c->bufcap = cap;
  return 0;
}

/* Read exactly n bytes, waiting as long as the sender takes. */
static int readall(pcr_conn *c, pcr_ring *r, char *p, size_t n) {
  for (size_t got = 0; got < n;) {
    size_t k = pcr__ring_read(r, p + got, n - got);
    if (k) { got += k; wake(c, &r->wsleep); continue; }
    int e = waitfor(c, r, &r->rsleep, avail, 1, -1);
    if (e < 0 && e != -EINTR) return e;
  }
  return 0;
}

/* A streamed frame's segments into c->buf: 0, -EAGAIN (the sender
** aborted it) or a negative errno. */
static int readstream(pcr_conn *c, pcr_ring *r, size_t len) {
  for (size_t got = 0; got < len;) {
    uint64_t seg;
    int e = readall(c, r, (char *)&seg, HDR);
    if (e < 0) return e;
    if (seg == PCR_FRAME_ABORT) return -EAGAIN;
    if (seg > len - got) return -EPROTO;
    if ((e = readall(c, r, c->buf + got, (size_t)seg)) < 0) return e;
    got += (size_t)seg;
  }
  return 0;
}

/* The frame just consumed is this process's: its references and block
** recorded in the ledger (frame.h, taken frames) until decoded. */
static void taken(pcr_conn *c, const uint64_t *refs, uint64_t nrefs) {
  for (uint64_t i = 0; i < nrefs; i++) pcr__taken_ref(refs[i]);
  if (c->held) pcr__taken_block(c->held, &c->heldidx);
}

int pcr__conn_recv(pcr_conn *c, unsigned *kind, const char **p, size_t *n,
                   double deadline) {
  pcr_ring *r = c->in;
  if (c->fd < 0 || !r) return -EBADF;
  pcr__conn_done(c);
again:;
  int e = lockring(&r->rlock, deadline);
  if (e < 0) return e;
  uint64_t h, nrefs = 0, local[16], *refs = local, off;
  if (pcr__ring_avail(r) < HDR &&
      (e = waitfor(c, r, &r->rsleep, avail, HDR, deadline)) < 0)
    goto out;
  /* headseen stays at or past tail, as pcr__ring_read expects */
  r->headseen = atomic_load_explicit(&r->head, memory_order_acquire);
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  pcr__wrap_out(r->data, r->cap, t, &h, HDR);
  size_t len = (size_t)(h >> 8), at = HDR;
  if (h & PCR_FRAME_INDIRECT) len = sizeof(uint64_t);
  if (h & PCR_FRAME_REFS) {  /* the decoder adopts them by their offsets */
    pcr__wrap_out(r->data, r->cap, t + HDR, &nrefs, 8);
    at += 8 + 8 * (size_t)nrefs;
    if (nrefs > 16 && !(refs = malloc(8 * (size_t)nrefs))) {
      e = -ENOMEM;
      goto out;
    }
    pcr__wrap_out(r->data, r->cap, t + HDR + 8, refs, 8 * (size_t)nrefs);
  }
  if ((e = reserve(c, len + 1)) < 0) goto out;
  pcr__ledger_ensure((size_t)nrefs + 1);  /* else they go unrecorded */
  if (h & PCR_FRAME_STREAM) {  /* header and list are there; the rest comes */
    atomic_store_explicit(&r->tail, t + at, memory_order_release);
    e = readstream(c, r, len);
    if (e == -EAGAIN) {  /* the sender gave up (its references): next */
      pcr__lock_unlock(&r->rlock);
      if (refs != local) free(refs);
      refs = local;
      goto again;
    }
    if (e < 0) goto out;
    taken(c, refs, nrefs);
  } else {  /* published whole: consumed with one store */
    pcr__wrap_out(r->data, r->cap, t + at, c->buf, len);
    c->held = NULL;
    if (h & PCR_FRAME_INDIRECT) {
      memcpy(&off, c->buf, sizeof off);
      c->held = pcr__shm_at(off, (size_t)(h >> 8));
    }
    pcr__frame_consume(&r->tail, t + at + len, refs, (size_t)nrefs,
                       c->held, &c->heldidx);
  }
  wake(c, &r->wsleep);
  *kind = PCR_FRAME_KIND(h);
  *p = c->buf;
  *n = len;
  if (h & PCR_FRAME_INDIRECT) {
    if (!c->held) { e = -EPROTO; goto out; }
    *p = c->held;
    *n = (size_t)(h >> 8);
  }
out:
  pcr__lock_unlock(&r->rlock);
  if (refs != local) free(refs);
  return e < 0 ? e : 0;
}

int pcr__conn_poll(pcr_conn *c, double deadline) {
  if (c->fd < 0 || !c->in) return -EBADF;
  int e = waitfor(c, c->in, &c->in->rsleep, avail, 1, deadline);
  if (e == -ETIMEDOUT) return 0;
  return e == -EPIPE ? 1 : (e < 0 ? e : 1);
}

void pcr__conn_done(pcr_conn *c) {
  if (c->held) {
    pcr__ledger_free(c->held, &c->heldidx);  /* unrecorded with the free */
    c->held = NULL;
  }
  if (c->bufcap > ((size_t)1 << 20)) {
    free(c->buf);
    c->buf = NULL;
    c->bufcap = 0;
  }
}

static int readable(pcr_conn *c) {
  return c->fd >= 0 && c->in && (pcr__ring_avail(c->in) || c->eof ||
                                  atomic_load(&c->in->writers) == 0);
}

int pcr__conn_select(pcr_conn **cs, int n, double deadline, double spin) {
  double until = 0;
  for (unsigned i = 1;; i++) {
    for (int k = 0; k < n; k++)
      if (readable(cs[k])) return k;
    pcr__cpu_relax();
    if ((i & 31) == 0) {
      double t = pcr__now();
      if (until == 0) until = t + spin;
      if (t >= until) break;
      sched_yield();
    }
  }
  struct pollfd ps[PCR_SELECT_MAX];
  if (n > PCR_SELECT_MAX) return -E2BIG;
  for (;;) {
    for (int i = 0; i < n; i++) {
      atomic_exchange(&cs[i]->in->rsleep, 1);
      ps[i] = (struct pollfd){.fd = cs[i]->fd, .events = POLLIN};
    }
    int ready = -1;
    for (int i = 0; i < n && ready < 0; i++)
      if (readable(cs[i])) ready = i;
    int ms = -1;
    if (deadline >= 0) {
      double left = deadline - pcr__now();
      ms = left <= 0 ? 0 : (int)(left * 1000.0 + 0.999);
    }
    int r = ready >= 0 ? 0 : poll(ps, (nfds_t)n, ms);
    int err = r < 0 ? errno : 0;
    for (int i = 0; i < n; i++) {
      atomic_store(&cs[i]->in->rsleep, 0);
      if (r > 0 && ps[i].revents) drain(cs[i]);
    }
    for (int i = 0; i < n && ready < 0; i++)
      if (readable(cs[i])) ready = i;
    if (ready >= 0) return ready;
    if (err) return err == EINTR ? -EINTR : -err;
    if (deadline >= 0 && pcr__now() >= deadline) return -ETIMEDOUT;
  }
}

void pcr__conn_close(pcr_conn *c, long *lidx) {
  int n = 0;
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  if (!c->borrowed && c->in) {  /* each unrecorded as it goes */
    if (lidx && lidx[n] >= 0) pcr__ledger_drop(&lidx[n]);
    else pcr__conn_drop(c->in, NULL);
    n++;
  }
  if (!c->borrowed && c->out) {
    if (lidx && lidx[n] >= 0) pcr__ledger_drop(&lidx[n]);
    else pcr__conn_drop(NULL, c->out);
  }
  c->in = c->out = NULL;
  pcr__conn_done(c);
  free(c->buf);
  c->buf = NULL;
  c->bufcap = 0;
}
