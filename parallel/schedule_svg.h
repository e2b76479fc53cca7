// SVG drawing of a pipeline timeline (simulated or measured), in the style of the DualPipe paper's
// figure: one row per rank, one cell per op coloured by kind (F, B, W, F&B) and pipe (down lighter,
// up darker), the micro-batch id in each cell, a legend and a title.
#ifndef MOELAB_PARALLEL_SCHEDULE_SVG_H
#define MOELAB_PARALLEL_SCHEDULE_SVG_H

#include "parallel/simulator.h"

#ifdef __cplusplus
extern "C" {
#endif

// Writes tl to f (the caller checks the stream, e.g. core_out_close). Every op is one
// <rect class="op"> (an F&B adds a <rect class="fb-half"> for its backward half); unit names the time
// axis ("cost units", "µs").
void sched_svg_write(const SimTimeline *tl, const char *title, const char *unit, FILE *f);

#ifdef __cplusplus
}
#endif
#endif
