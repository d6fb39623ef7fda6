/* Shared by the C tests: the failure count, CHECK, and a count of this
** process's descendants read from /proc (no process may outlive a test). */
#ifndef PCR_TESTLIB_H
#define PCR_TESTLIB_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;

#define CHECK(cond) do { \
  if (!(cond)) { \
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    failures++; \
  } } while (0)
#define HAS(s, sub) CHECK(strstr((s), (sub)) != NULL)

/* State letter and parent of process pid from /proc/<pid>/stat; 0, or -1
** when there is no such process. */
static int proc_stat(const char *pid, char *state, int *ppid) {
  char path[300], buf[512];
  snprintf(path, sizeof path, "/proc/%s/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t k = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[k] = 0;
  char *p = strrchr(buf, ')');  /* the command name may hold anything */
  return p && sscanf(p + 2, "%c %d", state, ppid) == 2 ? 0 : -1;
}

/* End a test program: report and return its exit status. */
static int finish(const char *name) {
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("%s: all checks passed\n", name);
  return 0;
}

/* Processes descended from this one, by walking /proc's ppid links (the
** zygote's workers are our grandchildren). */
static int descendants(void) {
  int pid[4096], ppid[4096], n = 0, count = 0;
  DIR *d = opendir("/proc");
  struct dirent *e;
  char state;
  while ((e = readdir(d)) && n < 4096) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    if (proc_stat(e->d_name, &state, &ppid[n]) == 0) pid[n++] = atoi(e->d_name);
  }
  closedir(d);
  int mark[4096] = {0}, grew = 1;
  while (grew) {
    grew = 0;
    for (int i = 0; i < n; i++) {
      if (mark[i]) continue;
      int up = ppid[i] == getpid();
      for (int j = 0; j < n && !up; j++) up = mark[j] && pid[j] == ppid[i];
      if (up) { mark[i] = 1; count++; grew = 1; }
    }
  }
  return count;
}

#endif
