/* Macros shared by the runtime's C files; not part of the public API. */
#ifndef PCRDEF_H
#define PCRDEF_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#define PCR_LIKELY(x) __builtin_expect(!!(x), 1)
#define PCR_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define PCR_ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((size_t)(a) - 1))
#define PCR_CACHELINE 64

/* Retry a syscall expression while it fails with EINTR. */
#define PCR_EINTR_LOOP(r, expr) \
  do { (r) = (expr); } while ((r) == -1 && errno == EINTR)

#if defined(__x86_64__) || defined(__i386__)
#define pcr__cpu_relax() __builtin_ia32_pause()
#else
#define pcr__cpu_relax() ((void)0)
#endif

#endif
