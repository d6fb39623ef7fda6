/* fork(), waits and reaping. Children are killed by the kernel if the
** parent dies (PR_SET_PDEATHSIG); the parent keeps a registry of its
** children and reaps each one, at the latest when it exits. */
#include "proc.h"
#include "futex.h"
#include "pcrdef.h"
#include "frame.h"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* The registry is per process (a child starts with an empty one). */
typedef struct kid {
  pid_t pid;
  int daemon;
  void (*onreap)(void *);
  void *arg;
} kid;
static kid *kids;
static int nkids, capkids;

/* Statuses of children reaped by a sweep, kept for a later wait. */
#define NDEAD 1024
typedef struct corpse { pid_t pid; int status; } corpse;
static corpse dead[NDEAD];
static unsigned ndead;

static void bury(pid_t pid, int status) {
  dead[ndead++ % NDEAD] = (corpse){pid, status};
}

static int exhume(pid_t pid, int *status) {
  unsigned n = ndead < NDEAD ? ndead : NDEAD;
  for (unsigned i = 0; i < n; i++)
    if (dead[i].pid == pid) {
      *status = dead[i].status;
      dead[i].pid = 0;
      return 1;
    }
  return 0;
}
static pid_t owner;
static int atexit_done;

volatile sig_atomic_t pcr__interrupt_flag, pcr__interrupt_count;

void pcr__proc_kill_now(void) {
  if (owner != getpid()) return;
  int n = nkids;
  for (int i = 0; i < n; i++) kill(kids[i].pid, SIGKILL);
  for (int i = 0; i < n; i++) waitpid(kids[i].pid, NULL, 0);
}

pid_t pcr__proc_owner(void) { return owner; }

static void forget(int i) {
  kid k = kids[i];
  kids[i] = kids[--nkids];
  pcr__frame_reap((uint32_t)k.pid);  /* what a killed child still owned */
  if (k.onreap) k.onreap(k.arg);
}

static int find(pid_t pid) {
  for (int i = 0; i < nkids; i++)
    if (kids[i].pid == pid) return i;
  return -1;
}

int pcr__proc_is_child(pid_t pid) {
  if (find(pid) >= 0) return 1;
  unsigned n = ndead < NDEAD ? ndead : NDEAD;
  for (unsigned i = 0; i < n; i++)
    if (dead[i].pid == pid) return 1;
  return 0;
}

void pcr__proc_set_daemon(pid_t pid, int on) {
  int i = find(pid);
  if (i >= 0) kids[i].daemon = on;
}

static void onexit(void) {
  if (getpid() == owner) pcr__proc_reap_all(-1);
}

static int remember(pid_t pid) {
  if (nkids == capkids) {
    int cap = capkids ? capkids * 2 : 16;
    kid *k = realloc(kids, sizeof(kid) * (size_t)cap);
    if (!k) return -ENOMEM;
    kids = k;
    capkids = cap;
  }
  kids[nkids++] = (kid){pid, 0, NULL, NULL};
  return 0;
}

void (*pcr__fork_hook)(void);

pid_t pcr__proc_spawn(void (*onreap)(void *), void *arg) {
  pid_t parent = getpid();
  if (owner != parent) {  /* first spawn here, or we are a child ourselves */
    owner = parent;
    nkids = 0;
    if (!atexit_done) atexit_done = atexit(onexit) == 0;
  }
  pcr__proc_sweep();
  if (nkids == capkids && remember(0) == 0) nkids--;  /* grow before fork */
  if (nkids == capkids) return -ENOMEM;
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) return -errno;
  if (pid == 0) {
    pcr__self_reset();
    nkids = 0;
    ndead = 0;
    owner = 0;
    pcr__interrupt_flag = 0;
    signal(SIGINT, SIG_IGN);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(137);  /* parent died before prctl */
    if (pcr__fork_hook) pcr__fork_hook();
    return 0;
  }
  remember(pid);
  kids[nkids - 1].onreap = onreap;
  kids[nkids - 1].arg = arg;
  return pid;
}

int pcr__proc_exitcode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1;
}

int pcr__pidfd_open(pid_t pid) {
  return (int)syscall(SYS_pidfd_open, pid, 0);
}

int pcr__pidfd_wait(int fd, double deadline) {
  for (;;) {
    int ms = -1;
    if (deadline >= 0) {
      double left = deadline - pcr__now();
      ms = left <= 0 ? 0 : (int)(left * 1000.0 + 0.999);
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, ms);
    if (r < 0) return -errno;
    if (r > 0) return 1;
    if (deadline >= 0 && pcr__now() >= deadline) return 0;
  }
}

/* Poll a pidfd until the process exits or the deadline passes. */
static int pollpid(pid_t pid, double deadline) {
  int fd = pcr__pidfd_open(pid);
  if (fd < 0) return errno == ESRCH ? 1 : -errno;
  int r = pcr__pidfd_wait(fd, deadline);
  close(fd);
  return r;
}

int pcr__proc_wait(pid_t pid, double deadline, int *status) {
  int i = find(pid);
  if (i < 0) return exhume(pid, status) ? 1 : -ECHILD;
  for (;;) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid) { forget(find(pid)); return 1; }
    if (r < 0 && errno != EINTR) { forget(find(pid)); return -errno; }
    if (r < 0) continue;
    int e = pollpid(pid, deadline);
    if (e <= 0) return e;
  }
}

int pcr__proc_wait_any(pid_t pid, double deadline) {
  return pollpid(pid, deadline);
}

int pcr__proc_signal(pid_t pid, int sig) {
  if (kill(pid, sig) == 0) return 0;
  return errno == ESRCH ? 0 : -errno;
}

void pcr__proc_sweep(void) {
  for (int i = 0; i < nkids;) {
    int st;
    pid_t r = waitpid(kids[i].pid, &st, WNOHANG);
    if (r == kids[i].pid) bury(r, st);
    if (r == kids[i].pid || (r < 0 && errno == ECHILD)) forget(i);
    else i++;
  }
}

void pcr__proc_reap_all(double grace) {
  if (owner != getpid()) return;
  for (int i = 0; i < nkids; i++)
    if (kids[i].daemon) kill(kids[i].pid, SIGTERM);
  double until = grace < 0 ? -1 : pcr__now() + grace;
  for (int stage = 0; nkids > 0 && stage < 3; stage++) {
    if (stage > 0)
      for (int i = 0; i < nkids; i++)
        kill(kids[i].pid, stage == 1 ? SIGTERM : SIGKILL);
    if (stage == 1) until = pcr__now() + 1.0;
    if (stage == 2) until = -1;
    while (nkids > 0) {
      int st;
      if (pcr__proc_wait(kids[nkids - 1].pid, until, &st) == 0) break;
    }
  }
}

int pcr__proc_cpu_count(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}
