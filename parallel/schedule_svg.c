// SVG timeline of a SimTimeline: ranks as rows, ops as coloured cells with micro-batch ids, idle
// time per rank at the row's end, a time axis, a legend and a title. Self-contained SVG 1.1 that
// browsers and docs viewers render without scripts or external fonts.
#include "parallel/schedule_svg.h"

#include <math.h>
#include <string.h>

#include "framework/core/json.h"

// Colours by op kind (F, B, W) and pipe (down lighter, up darker).
static const char *COLOR[3][2] = {
    {"#fcd5a4", "#ef9a3c"},   // F: orange
    {"#a9cff2", "#4a8fd6"},   // B: blue
    {"#bfe3b4", "#5caf55"},   // W: green
};

// Layout in pixels.
enum { LEFT = 70, TOP = 48, ROW_H = 26, ROW_GAP = 6, RIGHT = 110, MIN_CELL = 26 };

// Text as XML 1.0 character data: & < > escaped; control characters (which XML does not allow) and
// bytes that are no UTF-8 (a file name's) written as U+FFFD, so that the file stays well-formed
// (sweep, 2026-12-06: a trace named with a control character or a cut UTF-8 character made an SVG no
// viewer opened).
static void xml_text(FILE *f, const char *text) {
    const unsigned char *end = (const unsigned char *)text + strlen(text);
    for (const unsigned char *s = (const unsigned char *)text; *s;) {
        // (U+FFFE and U+FFFF are UTF-8 but no XML characters.)
        const int n = json_utf8_len(s, (size_t)(end - s));
        if (n == 0 || (*s < 0x20 && *s != '\t' && *s != '\n') || *s == 0x7F ||
            (n == 3 && s[0] == 0xEF && s[1] == 0xBF && s[2] >= 0xBE)) {
            fputs("\xEF\xBF\xBD", f);
            s++;
            continue;
        }
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        default: fwrite(s, 1, (size_t)n, f);
        }
        s += n;
    }
}

// The micro-batch text inside a cell: "3", "3*" (W deferred), or "4|1" for F&B.
static void cell_text(const SchedOp *op, char *buf, size_t len) {
    switch (op->kind) {
    case SCHED_F: snprintf(buf, len, "%d", op->f.mb); break;
    case SCHED_B: snprintf(buf, len, "%d%s", op->b.mb, op->b.defer_w ? "*" : ""); break;
    case SCHED_W: snprintf(buf, len, "%d", op->b.mb); break;
    default: snprintf(buf, len, "%d|%d", op->f.mb, op->b.mb);
    }
}

// A round tick spacing (1, 2 or 5 × 10^k) giving about ten ticks over span.
static double tick_step(double span) {
    double raw = span / 10, p = pow(10, floor(log10(raw)));
    return raw <= p ? p : raw <= 2 * p ? 2 * p : raw <= 5 * p ? 5 * p : 10 * p;
}

// A time interval dt in pixels, where the span takes plot_w of them. Divided first: the pixels per
// time unit (plot_w / span) overflow to infinity for spans under about 1e-306, and 0 · ∞ wrote NaN
// coordinates into the SVG (sweep, 2026-12-06: subnormal costs and durations).
static double to_px(double dt, double span, double plot_w) { return span > 0 ? dt / span * plot_w : dt; }

void sched_svg_write(const SimTimeline *tl, const char *title, const char *unit, FILE *f) {
    // Scale time so that the shortest op is still wide enough for its label, within 600..3000 px.
    double span = tl->t1 - tl->t0, shortest = span;
    for (int r = 0; r < tl->R; r++)
        for (int i = 0; i < tl->n[r]; i++) {
            double d = tl->ev[r][i].end - tl->ev[r][i].start;
            if (d > 0 && d < shortest) shortest = d;
        }
    double plot_w = span > 0 ? MIN_CELL * span / shortest : 600;
    plot_w = plot_w < 600 ? 600 : plot_w > 3000 ? 3000 : plot_w;
    int rows_h = tl->R * (ROW_H + ROW_GAP);
    int width = LEFT + (int)ceil(plot_w) + RIGHT, height = TOP + rows_h + 90;

    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"Helvetica, Arial, sans-serif\">\n", width, height, width, height);
    fputs("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n", f);
    fprintf(f, "<text x=\"%d\" y=\"28\" font-size=\"16\" font-weight=\"bold\">", LEFT);
    xml_text(f, title);
    fputs("</text>\n", f);

    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\" text-anchor=\"start\">idle</text>\n",
            LEFT + (int)ceil(plot_w) + 8, TOP - 6);
    for (int r = 0; r < tl->R; r++) {
        int y = TOP + r * (ROW_H + ROW_GAP);
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"12\" text-anchor=\"end\">rank %d</text>\n", LEFT - 8,
                y + ROW_H / 2 + 4, r);
        fprintf(f, "<rect class=\"row\" x=\"%d\" y=\"%d\" width=\"%.2f\" height=\"%d\" fill=\"#f2f2f2\"/>\n", LEFT,
                y, plot_w, ROW_H);
        for (int i = 0; i < tl->n[r]; i++) {
            const SimEvent *e = &tl->ev[r][i];
            const SchedOp *op = &e->op;
            double x = LEFT + to_px(e->start - tl->t0, span, plot_w), w = to_px(e->end - e->start, span, plot_w);
            char text[24], label[48];
            int k = op->kind == SCHED_FB ? SCHED_F : op->kind;
            const char *fill = COLOR[k][k == SCHED_F ? op->f.pipe : op->b.pipe];
            fprintf(f, "<rect class=\"op\" x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"%d\" fill=\"%s\" "
                    "stroke=\"#333\" stroke-width=\"0.6\"><title>%s %.6g–%.6g</title></rect>\n",
                    x, y, w, ROW_H, fill, sched_op_label(op, label, sizeof label), e->start - tl->t0,
                    e->end - tl->t0);
            // F&B: the right half takes the backward's colour (a plain rect, which every SVG
            // renderer draws, rather than a gradient), inside the op's outline.
            if (op->kind == SCHED_FB)
                fprintf(f, "<rect class=\"fb-half\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"%s\"/>\n",
                        x + w / 2, y + 0.3, w / 2 - 0.3, ROW_H - 0.6, COLOR[SCHED_B][op->b.pipe]);
            // The id only where it fits: about 6.5 px per character at 11 px.
            cell_text(op, text, sizeof text);
            if (w >= 6.5 * strlen(text) + 2)
                fprintf(f, "<text x=\"%.2f\" y=\"%d\" font-size=\"11\" text-anchor=\"middle\">%s</text>\n",
                        x + w / 2, y + ROW_H / 2 + 4, text);
        }
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"12\">%.6g</text>\n", LEFT + (int)ceil(plot_w) + 8,
                y + ROW_H / 2 + 4, tl->bubble[r]);
    }

    // Time axis.
    int ay = TOP + rows_h + 4;
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%.2f\" y2=\"%d\" stroke=\"#333\"/>\n", LEFT, ay, LEFT + plot_w, ay);
    if (span > 0) {
        // Ticks counted, not stepped: t += step never ends where step is lost against t or is not a
        // number. tick_step gives at most 10 steps over the span.
        const double step = tick_step(span);
        for (int i = 0; i <= 10 && i * step <= span * (1 + 1e-9); i++) {
            const double t = i * step, x = LEFT + to_px(t, span, plot_w);
            fprintf(f, "<line x1=\"%.2f\" y1=\"%d\" x2=\"%.2f\" y2=\"%d\" stroke=\"#333\"/>"
                    "<text x=\"%.2f\" y=\"%d\" font-size=\"10\" text-anchor=\"middle\">%.6g</text>\n",
                    x, ay, x, ay + 4, x, ay + 15, t);
        }
    }
    fprintf(f, "<text x=\"%.2f\" y=\"%d\" font-size=\"11\" text-anchor=\"middle\">time (", LEFT + plot_w / 2, ay + 30);
    xml_text(f, unit);
    fputs(")</text>\n", f);

    // Legend.
    static const char *NAME[3] = {"F", "B", "W"};
    int ly = ay + 44, lx = LEFT;
    for (int k = 0; k < 3; k++)
        for (int p = 0; p < 2; p++) {
            fprintf(f, "<rect class=\"legend\" x=\"%d\" y=\"%d\" width=\"16\" height=\"14\" fill=\"%s\" stroke=\"#333\" "
                    "stroke-width=\"0.6\"/><text x=\"%d\" y=\"%d\" font-size=\"11\">%s %s</text>\n",
                    lx, ly, COLOR[k][p], lx + 20, ly + 11, NAME[k], sched_pipe_name(p));
            lx += 86;
        }
    fprintf(f, "<rect class=\"legend\" x=\"%d\" y=\"%d\" width=\"16\" height=\"14\" fill=\"%s\" stroke=\"#333\" "
            "stroke-width=\"0.6\"/><rect class=\"legend\" x=\"%d\" y=\"%d\" width=\"8\" height=\"14\" fill=\"%s\"/>"
            "<text x=\"%d\" y=\"%d\" font-size=\"11\">F&amp;B (f|b ids)</text>\n",
            lx, ly, COLOR[SCHED_F][SCHED_DOWN], lx + 8, ly, COLOR[SCHED_B][SCHED_UP], lx + 20, ly + 11);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\">cell text: micro-batch id; * = W deferred; "
            "right column: idle time per rank</text>\n", LEFT, ly + 32);
    fputs("</svg>\n", f);
}
