/* Processes: fork with the hygiene the runtime relies on, waits with
** deadlines through pidfds, and the registry of children this process
** must reap. Free of Lua. */
#ifndef PCR_PROC_H
#define PCR_PROC_H

#include <signal.h>
#include <sys/types.h>

/* Fork a child. In the child: SIGINT ignored, killed when the parent dies,
** registries reset; returns 0 there. In the parent returns the pid, which
** is registered for reaping, or a negative errno. onreap(arg), if given,
** runs in the parent once the child is reaped (whoever reaps it). */
pid_t pcr__proc_spawn(void (*onreap)(void *), void *arg);

/* Run in every child pcr__proc_spawn forks, if set (mpi.c: reset the
** crash handlers MPI installed). */
extern void (*pcr__fork_hook)(void);

/* Wait for child pid until deadline (pcr__now() seconds, < 0 forever).
** Returns 1 with *status set (as waitpid) once reaped, 0 on timeout, or a
** negative errno (-EINTR on a signal, -ECHILD if not ours). */
int pcr__proc_wait(pid_t pid, double deadline, int *status);

/* Wait until any process (not only a child) has exited. Returns 1, 0 on
** timeout or a negative errno. */
int pcr__proc_wait_any(pid_t pid, double deadline);

/* Wait until the process of pidfd fd has exited (1), the deadline passed
** (0; < 0 waits forever) or a signal came (-EINTR); other errors as
** negative errnos. Any process, not only a child. */
int pcr__pidfd_wait(int fd, double deadline);

/* A pidfd for pid (any process), or -1 with errno set (ESRCH: gone;
** ENOSYS: a kernel without pidfd_open). The one place that opens them. */
int pcr__pidfd_open(pid_t pid);

/* Whether pid is a child this process registered and has not reaped. */
int pcr__proc_is_child(pid_t pid);

/* Mark a child as a daemon: terminated, not joined, at exit. */
void pcr__proc_set_daemon(pid_t pid, int on);

/* Send sig to pid; returns 0 or a negative errno (0 if already reaped). */
int pcr__proc_signal(pid_t pid, int sig);

/* Reap every registered child: wait for each until `grace` seconds have
** passed, then SIGTERM, then SIGKILL after another short grace. Used at
** exit and on teardown. Parent only. */
void pcr__proc_reap_all(double grace);

/* Reap children that already exited (no waiting). */
void pcr__proc_sweep(void);

/* Number of CPUs this process may run on (affinity mask). */
int pcr__proc_cpu_count(void);

/* Exit code for a wait status: the code, or minus the signal. */
int pcr__proc_exitcode(int status);

/* Pid of the process that created the runtime's children registry. */
pid_t pcr__proc_owner(void);

/* Ctrl-C, sticky: pcr__interrupt_flag is set by the CLI's SIGINT handler
** and stays set until the script returns to the top or clears it (a child
** starts with it clear); pcr__interrupt_count counts the SIGINTs, so the
** pools notice one even after it was cleared. */
extern volatile sig_atomic_t pcr__interrupt_flag, pcr__interrupt_count;

/* SIGKILL and reap every registered child now: async-signal-safe (for a
** second Ctrl-C, which then _exits). */
void pcr__proc_kill_now(void);

#endif
