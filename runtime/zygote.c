/* The zygote: forked at pcr_open while the host is still single-threaded,
** it holds a copy of the fresh Lua state and forks export workers when
** the host asks over a socket, so a host with threads never forks. It
** reaps its workers, and dies with the host (PR_SET_PDEATHSIG). */
#include "zygote.h"
#include "futex.h"
#include "pcrdef.h"
#include "pcrun.h"
#include "proc.h"

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { Z_FORK = 1, Z_REGISTER, Z_QUIT };

typedef struct zmsg {
  uint32_t op;
  pcr__xsrv *srv;             /* Z_FORK: an arena address, the same here */
  void (*fn)(void);           /* Z_REGISTER: valid in the zygote, a fork */
  char name[64];
  char sig[PCR_SIG_TEXT];
} zmsg;

static int zreply(int fd, int32_t r) {
  ssize_t k;
  PCR_EINTR_LOOP(k, send(fd, &r, sizeof r, MSG_NOSIGNAL));
  return k == sizeof r ? 0 : -1;
}

static void handle(int fd, const zmsg *m, lua_State *L, pcr__native **nat) {
  char err[512];
  if (m->op == Z_FORK) {
    pid_t pid = pcr__proc_spawn(NULL, NULL);
    if (pid == 0) {
      close(fd);
      pcr__export_serve(L, m->srv, 1);
    }
    zreply(fd, pid);
  } else if (m->op == Z_REGISTER) {
    zreply(fd, pcr__native_add(L, nat, m->name, m->fn, m->sig, err,
                               sizeof err));
  }
}

/* Keep only stdio and fd (moved to 3): the host's other fds (sockets,
** pipes, files open at pcr_open) must not live on in the zygote and its
** workers. Returns the new fd. */
static int closefds(int fd) {
  if (fd != 3) {
    if (dup2(fd, 3) < 0) return fd;
    close(fd);
  }
#ifdef SYS_close_range
  if (syscall(SYS_close_range, 4u, ~0u, 0u) == 0) return 3;
#endif
  long max = sysconf(_SC_OPEN_MAX);
  for (long k = 4; k < (max > 0 && max < 65536 ? max : 65536); k++)
    close((int)k);
  return 3;
}

static void zmain(int fd, lua_State *L, pcr__native **nat) {
  /* The host's SIGTERM handler or mask must not outlive it here: the
  ** host's exit reaper stops the zygote (a daemon) with SIGTERM. */
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  signal(SIGTERM, SIG_DFL);
  sigprocmask(SIG_UNBLOCK, &term, NULL);
  fd = closefds(fd);
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, 200);
    pcr__proc_sweep();  /* reap workers that died */
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) continue;
    zmsg m;
    ssize_t k;
    PCR_EINTR_LOOP(k, recv(fd, &m, sizeof m, 0));
    if (k != (ssize_t)sizeof m || m.op == Z_QUIT) break;  /* 0: host gone */
    handle(fd, &m, L, nat);
  }
  pcr__proc_reap_all(0.5);
  _exit(0);
}

int pcr__zygote_start(pcr__zygote *z, lua_State *L, pcr__native **natives) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return -errno;
  pid_t pid = pcr__proc_spawn(NULL, NULL);
  if (pid < 0) {
    close(sv[0]);
    close(sv[1]);
    return pid;
  }
  if (pid == 0) {
    close(sv[0]);
    zmain(sv[1], L, natives);
  }
  close(sv[1]);
  pcr__proc_set_daemon(pid, 1);  /* an exit without pcr_close: SIGTERM it,
                                    and its workers die with it */
  z->pid = pid;
  z->fd = sv[0];
  pthread_mutex_init(&z->mu, NULL);
  return 0;
}

/* One request and its reply, under the lock. With pidfd, a positive
** reply is a worker's pid and *pidfd receives a pidfd on it (or -1),
** opened before the lock is released. */
static int32_t ask(pcr__zygote *z, const zmsg *m, int *pidfd) {
  int32_t r = -EPIPE;
  ssize_t k;
  pthread_mutex_lock(&z->mu);
  if (z->fd >= 0) {
    PCR_EINTR_LOOP(k, send(z->fd, m, sizeof *m, MSG_NOSIGNAL));
    if (k == (ssize_t)sizeof *m) {
      PCR_EINTR_LOOP(k, recv(z->fd, &r, sizeof r, 0));
      if (k != sizeof r) r = -EPIPE;
    }
  }
  /* The worker is the zygote's child, so its pid stays its own until the
  ** zygote reaps it, and the zygote reaps only in its loop: after our next
  ** request (none while we hold the lock) or its 200 ms poll timeout. A
  ** new worker waits for requests and exits on its own only at close, so
  ** it is alive (or at worst unreaped) now, and the pid cannot name an
  ** unrelated process yet. */
  if (pidfd) *pidfd = r > 0 ? pcr__pidfd_open((pid_t)r) : -1;
  if (pidfd && *pidfd < 0) *pidfd = -1;
  pthread_mutex_unlock(&z->mu);
  return r;
}

pid_t pcr__zygote_fork(pcr__zygote *z, pcr__xsrv *srv, int *pidfd) {
  zmsg m = {.op = Z_FORK, .srv = srv};
  return ask(z, &m, pidfd);
}

int pcr__zygote_register(pcr__zygote *z, const char *name, void (*fn)(void),
                         const char *sig) {
  zmsg m = {.op = Z_REGISTER, .fn = fn};
  snprintf(m.name, sizeof m.name, "%s", name);
  snprintf(m.sig, sizeof m.sig, "%s", sig);
  return ask(z, &m, NULL);
}

void pcr__zygote_forget(pcr__zygote *z) {
  if (z->pid <= 0) return;
  if (z->fd >= 0) close(z->fd);  /* this process's copy only */
  z->fd = -1;
  z->pid = 0;
}

void pcr__zygote_stop(pcr__zygote *z) {
  if (z->pid <= 0) return;
  zmsg m = {.op = Z_QUIT};
  ssize_t k;
  pthread_mutex_lock(&z->mu);
  PCR_EINTR_LOOP(k, send(z->fd, &m, sizeof m, MSG_NOSIGNAL));
  close(z->fd);
  z->fd = -1;
  pthread_mutex_unlock(&z->mu);
  int st;
  if (pcr__proc_wait(z->pid, pcr__now() + 5.0, &st) == 0) {
    pcr__proc_signal(z->pid, SIGKILL);
    pcr__proc_wait(z->pid, -1, &st);
  }
  z->pid = 0;
  pthread_mutex_destroy(&z->mu);
}
