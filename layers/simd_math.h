// Vector versions of libm's expf for the CPU layers' loops marked `#pragma omp simd`. glibc's
// libmvec holds them (_ZGVbN4v_expf and its AVX variants; a result may differ from expf's in its
// last bits, which the suite's tolerances and the PyTorch reference stage absorb); GCC calls them
// where a declaration says they exist, which glibc's <math.h> does only under -ffast-math, whose
// other licences (no NaNs, no infinities) the layers cannot take: their NaNs must propagate. So this
// header declares expf's vector variants itself, and the layers build with -fno-math-errno (a
// call that sets errno cannot be vectorized) and link libmvec (layers/BUILD).
// The sigmoid, softmax and cross-entropy loops spent 7 % of the quickstart's CPU step in scalar
// expf (perf, 2026-12-04). A loop's last few elements (its length modulo the vector) take scalar
// expf, so an element's bits depend on its place in the row, never on the thread or the layout.
#ifndef MOELAB_LAYERS_SIMD_MATH_H
#define MOELAB_LAYERS_SIMD_MATH_H

#include <math.h>

#pragma omp declare simd notinbranch
float expf(float x);

#endif
