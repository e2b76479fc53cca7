// Timers: a monotonic wall clock in seconds.
#ifndef MOELAB_CORE_TIMER_H
#define MOELAB_CORE_TIMER_H

#ifdef __cplusplus
extern "C" {
#endif

double core_now(void);  // seconds since an arbitrary fixed point, monotonic

#ifdef __cplusplus
}
#endif
#endif
