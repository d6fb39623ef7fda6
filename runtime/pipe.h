/* Connections: the two ends of a pcrun pipe. Data flows through rings in
** the arena; a socketpair between the ends only carries wake-ups (when the
** other side sleeps) and tells, through the kernel's fd counting, when
** every copy of the peer's end is closed. Free of Lua. */
#ifndef PCR_PIPE_H
#define PCR_PIPE_H

#include "ring.h"

typedef struct pcr_conn {
  pcr_ring *in;      /* ring this end reads, NULL if write-only */
  pcr_ring *out;     /* ring this end writes, NULL if read-only */
  int fd;            /* our socket end; -1 once closed */
  int eof;           /* peer's every copy is closed */
  int borrowed;      /* inherited through fork: the parent drops its
                        ring references when it reaps this process */
  int exclusive;     /* one process per end: sleep without a recheck. An
                        end shared by processes that read and write it at
                        once can lose a wake-up; they recheck each second */
  char *buf;         /* receive buffer, owned */
  void *held;        /* arena block of the last large frame received */
  long heldidx;      /* its ledger entry (frame.h), -1 for none */
  size_t bufcap;
} pcr_conn;

#define PCR_RING_DEFAULT ((size_t)1 << 20)

/* Frame kinds: what the payload of a frame is. */
enum { PCR_FRAME_VALUE = 1, PCR_FRAME_BYTES = 2, PCR_FRAME_STRING = 3 };

/* Create the two ends. duplex = 0 makes a read-only, b write-only. Each
** end's ring references (its reader's, then its writer's) are recorded
** in the ledger at alidx[0..1] and blidx[0..1] (NULL: unrecorded), the
** rings from their allocation on. Returns 0, -ENOSPC (arena full) or a
** negative errno. */
int pcr__pipe_open(pcr_conn *a, pcr_conn *b, int duplex, size_t cap,
                   long *alidx, long *blidx);

/* Send one frame of n bytes carrying nrefs references (tagged offsets,
** frame.h: a ring destroyed with the frame unread drops them). Returns 0,
** -EPIPE (peer closed), -ETIMEDOUT or -EINTR (nothing sent: a frame that
** had started is withdrawn), -EMSGSIZE (the list does not fit the ring). */
int pcr__conn_send(pcr_conn *c, unsigned kind, const void *p, size_t n,
                   const uint64_t *refs, size_t nrefs, double deadline);

/* Receive one frame into c->buf. *kind, *p, *n describe it, valid until the
** next call on c (which first does pcr__conn_done). The references it
** carries are this process's taken ones (frame.h) from its consuming store
** on. Returns 0, -EPIPE (peer closed, nothing left), -ETIMEDOUT or
** -EINTR. */
int pcr__conn_recv(pcr_conn *c, unsigned *kind, const char **p, size_t *n,
                   double deadline);

/* Wait until a frame can be read or the peer is gone. Returns 1, 0 on
** timeout, or -EINTR. */
int pcr__conn_poll(pcr_conn *c, double deadline);

/* Release what the last received frame held (an arena block, a large
** buffer) once its payload was consumed. */
void pcr__conn_done(pcr_conn *c);

#define PCR_SELECT_MAX 1024

/* Wait until one of n readable connections has a frame or lost its peer,
** polling them for `spin` seconds before sleeping. Returns its index,
** -ETIMEDOUT, -EINTR or a negative errno. */
int pcr__conn_select(pcr_conn **cs, int n, double deadline, double spin);

/* Count one more handle of c's ends (a copy in another process, or one
** in flight inside a message); pcr__conn_drop undoes it. */
void pcr__conn_hold(pcr_ring *in, pcr_ring *out);
void pcr__conn_drop(pcr_ring *in, pcr_ring *out);

/* Close this end in this process (drops its ring references, each
** unrecorded from the ledger entries lidx[0..1] right before; NULL for
** unrecorded ones). */
void pcr__conn_close(pcr_conn *c, long *lidx);

#endif
