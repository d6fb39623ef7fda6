/* Queues: multi-producer, multi-consumer message queues in the arena.
** Frames go into a chain of ring segments: a writer that finds its segment
** too full links a larger one, so an unbounded queue never blocks a put;
** readers free a segment once they have drained it and moved on. Large
** payloads travel in their own arena block. Waiting uses wait queues (a
** busy producer/consumer pair makes no syscall). Free of Lua. */
#ifndef PCR_QUEUE_H
#define PCR_QUEUE_H

#include "futex.h"
#include "shm.h"

typedef struct pcr_qseg pcr_qseg;

typedef struct pcr_queue {
  pcr_obj hdr;                   /* flags: 1 for a joinable queue */
  int64_t maxsize;               /* 0: unbounded; constant */
  _Atomic uint32_t closed;
  /* Writers' line: readers touch it only to look at nput. */
  _Alignas(64) pcr_lock wlock;
  _Atomic(pcr_qseg *) wseg;      /* segment writers fill; under wlock */
  _Atomic(pcr_qseg *) wprev;     /* its predecessor while a writer links a
                                    new one, to repair a dead writer's link;
                                    readers do not free it meanwhile */
  uint64_t tailseen;             /* wseg's tail as last read */
  uint64_t wnew;                 /* offset of a segment being linked, from
                                    its allocation on: a dead writer's is
                                    freed or kept by wrepair and the dtor */
  _Atomic int64_t nput;          /* frames put, ever */
  /* Readers' line, mirror image. */
  _Alignas(64) pcr_lock rlock;
  pcr_qseg *rseg;                /* segment readers drain; under rlock */
  uint64_t headseen;             /* rseg's head as last read */
  _Atomic int64_t nget;          /* frames taken, ever */
  _Alignas(64) _Atomic int64_t unfinished;  /* joinable: puts not yet
                                               task_done */
  _Alignas(64) pcr_waitq getq;   /* readers waiting for a frame */
  _Alignas(64) pcr_waitq putq;   /* writers waiting for room (maxsize) */
  pcr_waitq joinq;               /* join() waiting for unfinished == 0 */
} pcr_queue;

/* Frame kinds (PCR_FRAME_KIND, frame.h). Numbers, booleans and nil
** skip the serializer. */
enum { PCR_QF_VALUE = 1, PCR_QF_STRING, PCR_QF_NUMBER, PCR_QF_TRUE,
       PCR_QF_FALSE, PCR_QF_NIL };

/* Items queued: exact while no put or get is under way. */
static inline int64_t pcr__queue_size(pcr_queue *q) {
  int64_t n = atomic_load_explicit(&q->nput, memory_order_relaxed) -
              atomic_load_explicit(&q->nget, memory_order_relaxed);
  return n < 0 ? 0 : n;
}

/* A new queue; NULL when the arena is full. Its reference is recorded in
** the ledger at *idx (pcr__frame_obj_new). Freed by pcr__obj_unref. */
pcr_queue *pcr__queue_new(int64_t maxsize, long *idx);

/* Append one frame. refs (arena offsets of nrefs objects) are the
** references the frame carries to its reader: a queue freed before the
** frame is read drops them. Returns 0, -ETIMEDOUT (full until the
** deadline; deadline 0 never waits), -EPIPE (closed), -ENOSPC (arena
** full) or -EINTR. */
int pcr__queue_put(pcr_queue *q, unsigned kind, const void *p, size_t n,
                   const uint64_t *refs, size_t nrefs, double deadline);

/* A received frame: data lies in buf (grown with realloc, owned by the
** caller) or, for a large one, in an arena block the caller frees with
** pcr__shm_free once done (blk). */
typedef struct pcr_qmsg {
  unsigned kind;
  const char *p;
  size_t n;
  void *blk;
  long blkidx;      /* blk's ledger entry (pcr__ledger_free) */
  char *buf;
  size_t bufcap;
} pcr_qmsg;

/* Take the oldest frame. Its block and the references it carries are
** this process's taken ones (frame.h) from its consuming store on; free
** the block with pcr__ledger_free(m->blk, &m->blkidx). Returns 0,
** -ETIMEDOUT, -EPIPE (closed and drained), -ENOMEM or -EINTR. spin:
** seconds to poll before sleeping.
** The deadline also bounds the wait for the readers' lock. */
int pcr__queue_get(pcr_queue *q, pcr_qmsg *m, double deadline, double spin);

/* Take the oldest frame only if it is a number, without waiting: 0 with
** *v set, -ETIMEDOUT (none ready or the readers' lock busy), -EAGAIN (the
** oldest is not a number) or another negative errno. */
int pcr__queue_get_number(pcr_queue *q, double *v);

/* Whether a get would not block (a frame waits, or the queue is closed). */
int pcr__queue_ready(pcr_queue *q);

void pcr__queue_close(pcr_queue *q);

/* Joinable queues: every put counts one unfinished task. task_done
** returns 0 or -EINVAL when called more times than puts; join waits for
** the count to reach zero (0, -ETIMEDOUT or -EINTR). */
int pcr__queue_task_done(pcr_queue *q);
int pcr__queue_join(pcr_queue *q, double deadline);

/* Set the destructor for queues; once, before any fork. */
void pcr__queue_init(void);

#endif
