/* An exported Lua function handed to a C numeric routine: adaptive
** Simpson integration of f(x) = 4 / (1 + x^2) over [0, 1] (= pi), split
** across 4 host threads that call the same exported pointer at once.
** Zygote mode: the host started threads, so it must not fork itself. */
#include <pcrun.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>

typedef double (*fn1)(double);

/* Adaptive Simpson: a plain C routine that knows nothing of Lua. */
static double simpson(fn1 f, double a, double b, double fa, double fm,
                      double fb, double whole, double eps, int depth) {
  double m = (a + b) / 2, lm = (a + m) / 2, rm = (m + b) / 2;
  double flm = f(lm), frm = f(rm);
  double left = (m - a) / 6 * (fa + 4 * flm + fm);
  double right = (b - m) / 6 * (fm + 4 * frm + fb);
  if (depth <= 0 || fabs(left + right - whole) <= 15 * eps)
    return left + right + (left + right - whole) / 15;
  return simpson(f, a, m, fa, flm, fm, left, eps / 2, depth - 1) +
         simpson(f, m, b, fm, frm, fb, right, eps / 2, depth - 1);
}

static double integrate(fn1 f, double a, double b, double eps) {
  double fa = f(a), fb = f(b), fm = f((a + b) / 2);
  return simpson(f, a, b, fa, fm, fb, (b - a) / 6 * (fa + 4 * fm + fb), eps,
                 40);
}

typedef struct part { fn1 f; double a, b, result; int failed; } part;

static void *work(void *arg) {
  part *p = arg;
  p->result = integrate(p->f, p->a, p->b, 1e-11);
  const char *msg;
  if (pcr_export_status(&msg) != PCR_OK || isnan(p->result)) {
    fprintf(stderr, "integrate: %s\n", msg);
    p->failed = 1;
  }
  return NULL;
}

int main(void) {
  pcr_options o;
  pcr_options_init(&o);
  o.zygote = 1;
  pcr_runtime *rt;
  int r = pcr_open(&rt, &o);
  if (r) {
    fprintf(stderr, "integrate: pcr_open: %s\n", pcr_strerror(r));
    return 1;
  }
  fn1 f;
  if (pcr_run_string(rt, "function f(x) return 4 / (1 + x * x) end",
                     "=integrand") ||
      pcr_export(rt, "f", "double(double)", &f)) {
    fprintf(stderr, "integrate: %s\n", pcr_last_error(rt));
    pcr_close(rt);
    return 1;
  }
  pthread_t th[4];
  part parts[4];
  for (int i = 0; i < 4; i++) {
    parts[i] = (part){f, i / 4.0, (i + 1) / 4.0, 0, 0};
    pthread_create(&th[i], NULL, work, &parts[i]);
  }
  double pi = 0;
  int failed = 0;
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    pi += parts[i].result;
    failed |= parts[i].failed;
  }
  pcr_close(rt);
  printf("integral of 4/(1+x^2) over [0,1] from 4 threads: %.12f "
         "(error %.1e)\n", pi, fabs(pi - M_PI));
  return failed || fabs(pi - M_PI) > 1e-9;
}
