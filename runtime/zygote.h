/* The zygote: a small single-threaded process forked at pcr_open, before
** the host starts threads, which forks the export workers on request so
** that a multi-threaded host never forks itself. */
#ifndef PCR_ZYGOTE_H
#define PCR_ZYGOTE_H

#include "export.h"
#include "native.h"

#include <pthread.h>
#include <sys/types.h>

struct pcr__zygote {
  pid_t pid;               /* 0 when not running */
  int fd;                  /* our end of a SOCK_SEQPACKET pair */
  pthread_mutex_t mu;      /* one request at a time, from any host thread */
};

/* Fork the zygote. It keeps a copy of L and of *natives as they are now.
** Returns 0 or a negative errno. Parent, before it starts threads. */
int pcr__zygote_start(pcr__zygote *z, lua_State *L, pcr__native **natives);

/* Ask the zygote to fork a worker serving srv. Returns its pid or a
** negative errno; *pidfd receives a pidfd on the worker (opened before the
** zygote can reap it), or -1 if none could be opened. Any host thread. */
pid_t pcr__zygote_fork(pcr__zygote *z, pcr__xsrv *srv, int *pidfd);

/* Register a native function in the zygote's copy as well. Returns 0,
** PCR_E* or a negative errno. Any host thread. */
int pcr__zygote_register(pcr__zygote *z, const char *name, void (*fn)(void),
                         const char *sig);

/* In a process forked from the zygote's parent: close this copy's socket
** and forget the zygote, leaving it to its parent. */
void pcr__zygote_forget(pcr__zygote *z);

/* Tell the zygote to stop its workers and exit, and reap it. Parent. */
void pcr__zygote_stop(pcr__zygote *z);

#endif
