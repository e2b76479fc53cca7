// SVG drawing of a pipeline timeline (simulated or measured), in the style of the DualPipe paper's
// figure: one row per rank, one cell per op coloured by kind (F, B, W, F&B) and pipe (down lighter,
// up darker), the micro-batch id in each cell, a legend and a title.
#ifndef MOELAB_PARALLEL_SCHEDULE_SVG_H
#define MOELAB_PARALLEL_SCHEDULE_SVG_H

#include "parallel/simulator.h"

#ifdef __cplusplus
extern "C" {
#endif

// Writes tl to path. Every op is one <rect class="op"> (an F&B adds a <rect class="fb-half"> for its
// backward half); unit names the time axis ("cost units", "µs"). Returns 0, or 1 with a message in
// err (SCHED_ERR_LEN bytes).
int sched_svg_write(const SimTimeline *tl, const char *title, const char *unit, const char *path,
                    char *err);

#ifdef __cplusplus
}
#endif
#endif
