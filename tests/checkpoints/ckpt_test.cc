// Checkpoint save and load: round trip of every tensor and state field, bit-exact resume of training,
// resharding between expert-parallel layouts (EP 2 halves -> one process and back, and an EPLB plan
// with replicas), the EPLB group, and pruning old checkpoints.
#include "tests/checkpoints/ckpt_test_util.h"

#include <string>
#include <vector>

using namespace ckpt_test;

namespace {

CkptState some_state() {
    CkptState st;
    st.step = 11;  // within tiny()'s steps (12), as a run's saves are
    st.data.epoch = 3;
    st.data.index = 17;
    st.rng = rng_stream(1234, 7);
    st.rng.counter = 99;
    st.lineage = 7;
    return st;
}

// Saves a (with some_state(), no EPLB) as test_tmp_dir("ckpt")/name; returns the path.
std::string save_plain(State &a, const CkptShard &sh, const char *name) {
    const std::string path = test_tmp_dir("ckpt") + "/" + name;
    const CkptState st = some_state();
    ckpt_save(path.c_str(), &sh, view(a), &st, nullptr);
    return path;
}

TEST(Checkpoint, RoundTripRestoresEveryTensorAndState) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    State a = make_state(c, 0, 1);
    std::vector<long> counts((size_t)c.L * c.E);
    std::vector<long> load((size_t)c.L * c.E);
    for (size_t i = 0; i < counts.size(); i++) counts[i] = (long)(i * 37 % 11), load[i] = (long)(i * 13 % 7);
    CkptEplb eplb = {0, nullptr, counts.data(), load.data()};
    const std::string path = test_tmp_dir("ckpt") + "/a.h5";
    CkptShard sh = shard_of(a.m);
    const CkptState st = some_state();
    ckpt_save(path.c_str(), &sh, view(a), &st, &eplb);
    ASSERT_TRUE(file_exists(path));
    EXPECT_FALSE(file_exists(path + ".tmp-" + std::to_string(getpid())));

    State b = blank_state(c, 0, 1);
    CkptState got;
    memset(&got, 0, sizeof got);
    ckpt_load(path.c_str(), &sh, view(b), &got);
    expect_same(a, b);
    EXPECT_EQ(got.step, 11);
    EXPECT_EQ(got.data.epoch, 3u);
    EXPECT_EQ(got.data.index, 17u);
    EXPECT_EQ(got.rng.seed, 1234u);
    EXPECT_EQ(got.rng.stream, 7u);
    EXPECT_EQ(got.rng.counter, 99u);

    CkptEplb e;
    ASSERT_EQ(ckpt_load_eplb(path.c_str(), &c, &e), 1);
    EXPECT_EQ(e.phy2log, nullptr);  // no plan saved: identity placement
    ASSERT_NE(e.counts, nullptr);
    ASSERT_NE(e.load, nullptr);
    for (size_t i = 0; i < counts.size(); i++) EXPECT_EQ(e.counts[i], counts[i]);
    for (size_t i = 0; i < load.size(); i++) EXPECT_EQ(e.load[i], load[i]);
    ckpt_eplb_free(&e);

    MoeConfig rc;
    ckpt_read_config(path.c_str(), &rc);
    EXPECT_EQ(rc.D, c.D);
    EXPECT_EQ(rc.E, c.E);
    EXPECT_EQ(rc.seed, c.seed);
    EXPECT_EQ(rc.lr, c.lr);
    free_state(a);
    free_state(b);
}

// Tensors larger than one chunk (2^20 floats) whose rows do not fill their last chunk: the
// embedding and lm_head of V 70 000 x D 16 are chunks of 65 536 rows and one of 4 464. Every tensor
// round-trips. A save that copied the last chunk whole read past lm_head, the buffer's last tensor
// (a mutant the suite missed; AddressSanitizer's run of this test sees it).
TEST(Checkpoint, RoundTripOfATensorWithAPartialLastChunk) {
    core_set_quiet(1);
    MoeConfig c = tiny();
    c.V = 70000;
    State a = make_state(c, 0, 1);
    const CkptShard sh = shard_of(a.m);
    const std::string path = save_plain(a, sh, "big.h5");
    State b = blank_state(c, 0, 1);
    CkptState got;
    ckpt_load(path.c_str(), &sh, view(b), &got);
    expect_same(a, b);
    free_state(a);
    free_state(b);
}

// The checkpoint code reads and writes only the view's buffers, never the registry's own (which are
// device memory for a model on a GPU): a save and a load through host copies, with the registry's
// buffers gone, round-trip every tensor, and AdamW's t through the view.
TEST(Checkpoint, ViewOfHostCopiesLeavesTheRegistryBuffersAlone) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    State a = make_state(c, 0, 1);
    const size_t n = a.m->reg.total;
    std::vector<float> data(a.m->reg.data, a.m->reg.data + n), m(a.o.m, a.o.m + n), v(a.o.v, a.o.v + n);
    ParamRegistry names = a.m->reg;  // the tensor table only
    names.data = names.grad = nullptr;
    long t = a.o.t;
    const CkptView out = {&c, &names, data.data(), m.data(), v.data(), &t};
    const std::string path = test_tmp_dir("ckpt") + "/host.h5";
    CkptShard sh = shard_of(a.m);
    const CkptState st = some_state();
    ckpt_save(path.c_str(), &sh, &out, &st, nullptr);

    State b = blank_state(c, 0, 1);
    std::vector<float> bd(n, 0.0f), bm(n, 0.0f), bv(n, 0.0f);
    long bt = 0;
    const CkptView in = {&c, &names, bd.data(), bm.data(), bv.data(), &bt};
    ckpt_load(path.c_str(), &sh, &in, nullptr);
    memcpy(b.m->reg.data, bd.data(), n * sizeof(float));
    memcpy(b.o.m, bm.data(), n * sizeof(float));
    memcpy(b.o.v, bv.data(), n * sizeof(float));
    b.o.t = bt;
    expect_same(a, b);
    free_state(a);
    free_state(b);
}

TEST(Checkpoint, WeightsOnlyLoadLeavesOptimizerAlone) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    State a = make_state(c, 0, 1);
    CkptShard sh = shard_of(a.m);
    const std::string path = save_plain(a, sh, "w.h5");
    Model *m = model_create(&c, 0, 1);
    const CkptView weights = {&m->cfg, &m->reg, m->reg.data, nullptr, nullptr, nullptr};
    ckpt_load(path.c_str(), &sh, &weights, nullptr);
    EXPECT_EQ(0, memcmp(m->reg.data, a.m->reg.data, m->reg.total * sizeof(float)));
    CkptEplb e;
    EXPECT_EQ(ckpt_load_eplb(path.c_str(), &c, &e), 0);  // no /eplb group at all
    model_free(m);
    free_state(a);
}

// The settings that take new values at a resume are listed in CkptState.changed (512 bytes); where
// they do not all fit, the list ends in ", ..." instead of stopping mid-word without a mark.
TEST(Checkpoint, ChangedSettingsBeyondTheBufferEndInAMark) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    State a = make_state(c, 0, 1);
    CkptShard sh = shard_of(a.m);
    const std::string path = save_plain(a, sh, "changed.h5");

    MoeConfig few = c;  // two changes: listed whole, no mark
    few.lr *= 2;
    few.steps += 1000;
    CkptView v = *view(a);
    v.cfg = &few;
    CkptState got;
    memset(&got, 0, sizeof got);
    ckpt_load(path.c_str(), &sh, &v, &got);
    EXPECT_NE(strstr(got.changed, "steps "), nullptr) << got.changed;
    EXPECT_NE(strstr(got.changed, "lr "), nullptr) << got.changed;
    EXPECT_EQ(strstr(got.changed, "..."), nullptr) << got.changed;

    MoeConfig many = few;  // every training setting a resume may change, with long values
    many.min_lr = 1.2345678e-7f, many.warmup_steps = 123456, many.weight_decay = 0.0123456f;
    many.grad_clip = 12.345678f, many.beta1 = 0.8765432f, many.beta2 = 0.9876543f;
    many.adam_eps = 1.2345678e-9f, many.seed = 987654321u, many.batch_size += 1, many.grad_accum = 7;
    many.bias_rate = 0.00123456f, many.balance_alpha = 0.000123456f, many.norm_eps = 1.2345678e-6f;
    many.rope_theta = 123456.78f, many.route_scale = 2.3456789f, many.comm_timeout = 123456;
    many.router_skew = 1.2345678f;
    v.cfg = &many;
    memset(&got, 0, sizeof got);
    ckpt_load(path.c_str(), &sh, &v, &got);
    const size_t n = strlen(got.changed);
    ASSERT_LT(n, sizeof got.changed);
    ASSERT_GT(n, sizeof got.changed - 64) << got.changed;  // it did fill up
    EXPECT_STREQ(got.changed + n - 5, ", ...") << got.changed;
    free_state(a);
}

// Trains `steps` steps from `first` with train_step_tokens; returns the losses.
std::vector<float> train(State &s, const MoeConfig &c, int first, int steps) {
    std::vector<float> losses;
    for (int k = first; k < first + steps; k++) {
        std::vector<int> tok = step_tokens(c, k);
        losses.push_back(train_step_tokens(s.m, &s.o, &c, k, tok.data()).loss);
    }
    return losses;
}

TEST(Checkpoint, ResumeIsBitIdenticalToAnUninterruptedRun) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    const int N = 4, M = 5;
    State full = blank_state(c, 0, 1);
    model_init_weights(full.m);
    std::vector<float> want = train(full, c, 0, N + M);

    State first = blank_state(c, 0, 1);
    model_init_weights(first.m);
    std::vector<float> got = train(first, c, 0, N);
    const std::string path = test_tmp_dir("ckpt") + "/step_4.h5";
    CkptShard sh = shard_of(first.m);
    CkptState st = some_state();
    st.step = N;
    ckpt_save(path.c_str(), &sh, view(first), &st, nullptr);

    // A fresh process: different initial weights, so everything must come from the file.
    MoeConfig c2 = c;
    c2.seed = 777;
    State resumed = blank_state(c2, 0, 1);
    model_init_weights(resumed.m);
    resumed.m->cfg.seed = c.seed;
    CkptState rs;
    ckpt_load(path.c_str(), &sh, view(resumed), &rs);
    ASSERT_EQ(rs.step, N);
    std::vector<float> rest = train(resumed, c, (int)rs.step, M);
    got.insert(got.end(), rest.begin(), rest.end());
    ASSERT_EQ(got.size(), want.size());
    for (size_t k = 0; k < want.size(); k++) EXPECT_EQ(got[k], want[k]) << "step " << k;
    expect_same(full, resumed);
    free_state(full);
    free_state(first);
    free_state(resumed);
}

// Saves the two EP halves of `c` as parts + index at path.
void save_halves(const std::string &path, const MoeConfig &c, State h[2], const CkptState &st) {
    for (int r = 0; r < 2; r++) {
        CkptShard sh = shard_of(h[r].m);
        ckpt_save_part(path.c_str(), &sh, view(h[r]));
    }
    ckpt_save_index(path.c_str(), 2, &h[0].m->cfg, h[0].o.t, &st, nullptr);
}

TEST(Checkpoint, ReshardTwoHalvesIntoOneProcess) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    State h[2] = {make_state(c, 0, 2), make_state(c, 1, 2)};
    const std::string dir = test_tmp_dir("ckpt"), path = dir + "/step_1.h5";
    const CkptState st = some_state();
    save_halves(path, c, h, st);
    EXPECT_TRUE(file_exists(path + ".part-0-of-2"));
    EXPECT_TRUE(file_exists(path + ".part-1-of-2"));

    State want = make_state(c, 0, 1), got = blank_state(c, 0, 1);
    CkptShard sh = shard_of(got.m);
    CkptState gs;
    ckpt_load(path.c_str(), &sh, view(got), &gs);
    expect_same(want, got);
    EXPECT_EQ(gs.step, st.step);

    // And back into two halves, from the same index.
    for (int r = 0; r < 2; r++) {
        State back = blank_state(c, r, 2);
        CkptShard bs = shard_of(back.m);
        ckpt_load(path.c_str(), &bs, view(back), nullptr);
        expect_same(h[r], back);
        free_state(back);
    }
    // The index still loads from another working directory (parts are found next to it).
    char cwd[4096];
    ASSERT_NE(getcwd(cwd, sizeof cwd), nullptr);
    ASSERT_EQ(0, chdir("/"));
    State again = blank_state(c, 0, 1);
    ckpt_load(path.c_str(), &sh, view(again), nullptr);
    ASSERT_EQ(0, chdir(cwd));
    expect_same(want, again);
    free_state(again);
    free_state(want);
    free_state(got);
    free_state(h[0]);
    free_state(h[1]);
}

TEST(Checkpoint, ReshardOneProcessIntoTwoHalves) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    State full = make_state(c, 0, 1);
    const std::string path = test_tmp_dir("ckpt") + "/full.h5";
    CkptShard sh = shard_of(full.m);
    const CkptState st = some_state();
    ckpt_save(path.c_str(), &sh, view(full), &st, nullptr);
    for (int r = 0; r < 2; r++) {
        State want = make_state(c, r, 2), got = blank_state(c, r, 2);
        CkptShard hs = shard_of(got.m);
        ckpt_load(path.c_str(), &hs, view(got), nullptr);
        expect_same(want, got);
        free_state(want);
        free_state(got);
    }
    free_state(full);
}

// Pipeline stages: each stage Model holds only its own tensors, so its part holds only those. Saved
// as stages [0, 2) and [2, 3) under EP 2 (four parts whose tensor sets differ, as `moelab train`
// numbers them: part = stage·2 + EP rank), the index loads into one process, and into another cut
// ([0, 1) and [1, 3) under EP 4); a one-process file loads into stages too.
TEST(Checkpoint, ReshardPipelineStagesIntoAnyCut) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    const int cut[2][3] = {{0, 2, 3}, {0, 1, 3}};  // [layout] stage bounds
    const std::string dir = test_tmp_dir("ckpt"), path = dir + "/pp.h5", single = dir + "/one.h5";
    const CkptState st = some_state();
    std::vector<State> parts;
    for (int s = 0; s < 2; s++)
        for (int r = 0; r < 2; r++) {
            parts.push_back(make_state(c, r, 2, cut[0][s], cut[0][s + 1]));
            CkptShard sh = shard_of(parts.back().m);
            sh.part = s * 2 + r;
            sh.parts = 4;
            ckpt_save_part(path.c_str(), &sh, view(parts.back()));
        }
    ckpt_save_index(path.c_str(), 4, &parts[0].m->cfg, parts[0].o.t, &st, nullptr);

    State want = make_state(c, 0, 1), got = blank_state(c, 0, 1);
    CkptShard sh = shard_of(got.m);
    CkptState gs;
    ckpt_load(path.c_str(), &sh, view(got), &gs);
    expect_same(want, got);
    EXPECT_EQ(gs.step, st.step);
    ckpt_save(single.c_str(), &sh, view(want), &st, nullptr);

    for (const std::string &from : {path, single})
        for (int s = 0; s < 2; s++)
            for (int r = 0; r < 4; r++) {
                State w = make_state(c, r, 4, cut[1][s], cut[1][s + 1]);
                State g = blank_state(c, r, 4, cut[1][s], cut[1][s + 1]);
                CkptShard gsh = shard_of(g.m);
                ckpt_load(from.c_str(), &gsh, view(g), nullptr);
                expect_same(w, g);
                free_state(w);
                free_state(g);
            }

    char *buf = nullptr;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    verify(path.c_str(), f);
    fclose(f);
    EXPECT_NE(std::string(buf, len).find("sound"), std::string::npos) << buf;
    free(buf);
    for (State &p : parts) free_state(p);
    free_state(want);
    free_state(got);
}

// An EPLB placement with replicas: 8 slots over 2 ranks for 4 experts, a different plan per MoE
// layer. Each "rank" is a one-process model (4 local rows) whose slots hold copies of the experts'
// logical rows; only the lowest slot of each expert writes it.
TEST(Checkpoint, ReshardThroughAnEplbPlanWithReplicas) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    const int R = 8;
    std::vector<int> phy2log((size_t)c.L * R, -1);
    const int plan[2][8] = {{2, 0, 1, 2, 3, 0, 1, 3}, {3, 3, 1, 0, 2, 1, 0, 2}};
    for (int l = 1; l < c.L; l++)
        for (int p = 0; p < R; p++) phy2log[(size_t)l * R + p] = plan[l - 1][p];
    State ref = make_state(c, 0, 1);  // logical values
    State ranks[2] = {blank_state(c, 0, 1), blank_state(c, 0, 1)};
    CkptShard sh[2];
    for (int r = 0; r < 2; r++) {
        sh[r] = CkptShard{r, 2, r, 2, r == 0, 1, R, phy2log.data()};
        // Place copies of the logical rows into this rank's slots.
        for (int i = 0; i < ref.m->reg.n; i++) {
            const ParamInfo *p = &ref.m->reg.p[i];
            const size_t row = p->numel / (size_t)p->local_rows;
            for (int g = 0; g < 3; g++) {
                const float *src = (g == 0 ? ref.m->reg.data : g == 1 ? ref.o.m : ref.o.v) + p->offset;
                float *dst = (g == 0 ? ranks[r].m->reg.data : g == 1 ? ranks[r].o.m : ranks[r].o.v) + p->offset;
                if (p->kind != PARAM_EXPERT) {
                    memcpy(dst, src, p->numel * sizeof(float));
                    continue;
                }
                for (int s = 0; s < 4; s++)
                    memcpy(dst + s * row, src + (size_t)phy2log[(size_t)p->layer * R + r * 4 + s] * row,
                           row * sizeof(float));
            }
        }
        ranks[r].o.t = ref.o.t;
    }
    const std::string path = test_tmp_dir("ckpt") + "/eplb.h5";
    for (int r = 0; r < 2; r++) ckpt_save_part(path.c_str(), &sh[r], view(ranks[r]));
    std::vector<long> counts((size_t)c.L * c.E, 5);
    CkptEplb e = {R, phy2log.data(), counts.data(), nullptr};
    const CkptState st = some_state();
    ckpt_save_index(path.c_str(), 2, &ranks[0].m->cfg, ranks[0].o.t, &st, &e);

    State got = blank_state(c, 0, 1);
    CkptShard id = shard_of(got.m);
    ckpt_load(path.c_str(), &id, view(got), nullptr);
    expect_same(ref, got);

    // Loading back into the replica layout fills every slot, replicas included.
    for (int r = 0; r < 2; r++) {
        State back = blank_state(c, 0, 1);
        ckpt_load(path.c_str(), &sh[r], view(back), nullptr);
        expect_same(ranks[r], back);
        free_state(back);
    }
    CkptEplb le;
    ASSERT_EQ(ckpt_load_eplb(path.c_str(), &c, &le), 1);
    ASSERT_EQ(le.R, R);
    for (size_t i = (size_t)R; i < phy2log.size(); i++) EXPECT_EQ(le.phy2log[i], phy2log[i]);
    ckpt_eplb_free(&le);
    free_state(got);
    free_state(ref);
    free_state(ranks[0]);
    free_state(ranks[1]);
}

// Saves step_<k>.h5 in dir for each k with the given lineage.
void save_steps(const std::string &dir, State &s, std::initializer_list<int> steps, uint64_t lineage) {
    CkptShard sh = shard_of(s.m);
    CkptState st = some_state();
    st.lineage = lineage;
    for (int k : steps) {
        char path[512];
        ckpt_step_path(dir.c_str(), k, path, sizeof path);
        st.step = k;
        ckpt_save(path, &sh, view(s), &st, nullptr);
    }
}

TEST(Checkpoint, PruneKeepsTheNewestOfItsLineage) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    State s = make_state(c, 0, 1);
    const std::string dir = test_tmp_dir("ckpt");
    save_steps(dir, s, {5, 10, 15, 20}, 7);
    save_steps(dir, s, {12}, 8);  // another run's checkpoint in the same folder
    // A multi-part checkpoint at step 2 (older than all): its parts must go with it.
    State h[2] = {make_state(c, 0, 2), make_state(c, 1, 2)};
    CkptState st = some_state();
    save_halves(dir + "/step_2.h5", c, h, st);
    // A stray file with a large step number is no checkpoint of this run.
    FILE *f = fopen((dir + "/step_999.h5").c_str(), "w");
    fputs("not a checkpoint\n", f);
    fclose(f);
    const long own[] = {2, 5, 10, 15, 20};
    ckpt_prune(dir.c_str(), 2, 7, 20, -1, own, 5);
    EXPECT_FALSE(file_exists(dir + "/step_2.h5"));
    EXPECT_FALSE(file_exists(dir + "/step_2.h5.part-0-of-2"));
    EXPECT_FALSE(file_exists(dir + "/step_2.h5.part-1-of-2"));
    EXPECT_FALSE(file_exists(dir + "/step_5.h5"));
    EXPECT_FALSE(file_exists(dir + "/step_10.h5"));
    EXPECT_TRUE(file_exists(dir + "/step_12.h5"));
    EXPECT_TRUE(file_exists(dir + "/step_15.h5"));
    EXPECT_TRUE(file_exists(dir + "/step_20.h5"));
    EXPECT_TRUE(file_exists(dir + "/step_999.h5"));
    ckpt_prune(dir.c_str(), 0, 7, 20, -1, own, 5);  // keep all
    EXPECT_TRUE(file_exists(dir + "/step_15.h5"));
    free_state(s);
    free_state(h[0]);
    free_state(h[1]);
}

// Resumed from step 2 of a run that had gone on to step 6, into the same folder, the run saves steps
// 3 and 4 with keep 2: its own two newest stay, its ancestors go, the abandoned steps 5 and 6 stay.
TEST(Checkpoint, PruneAfterAResumeKeepsWhatTheRunWrote) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    State s = make_state(c, 0, 1);
    const std::string dir = test_tmp_dir("ckpt");
    save_steps(dir, s, {1, 2, 5, 6}, 7);
    save_steps(dir, s, {3}, 7);
    const long own[] = {3, 4};
    ckpt_prune(dir.c_str(), 2, 7, 3, 2, own, 1);
    EXPECT_FALSE(file_exists(dir + "/step_1.h5"));
    EXPECT_TRUE(file_exists(dir + "/step_2.h5"));
    save_steps(dir, s, {4}, 7);
    ckpt_prune(dir.c_str(), 2, 7, 4, 2, own, 2);
    EXPECT_FALSE(file_exists(dir + "/step_2.h5"));
    for (int k : {3, 4, 5, 6}) EXPECT_TRUE(file_exists(dir + "/step_" + std::to_string(k) + ".h5")) << k;
    free_state(s);
}

TEST(Checkpoint, VerifyAndInspectASoundCheckpoint) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    State h[2] = {make_state(c, 0, 2), make_state(c, 1, 2)};
    const std::string path = test_tmp_dir("ckpt") + "/v.h5";
    save_halves(path, c, h, some_state());
    char *buf = nullptr;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    verify(path.c_str(), f);
    inspect(path.c_str(), f);
    fclose(f);
    std::string out(buf, len);
    free(buf);
    EXPECT_NE(out.find("sound"), std::string::npos) << out;
    EXPECT_NE(out.find("all part files present"), std::string::npos) << out;
    EXPECT_NE(out.find("index of 2 part files"), std::string::npos) << out;
    EXPECT_NE(out.find("layers.1.experts.w13"), std::string::npos) << out;
    EXPECT_NE(out.find("(4, 16, 16)"), std::string::npos) << out;
    EXPECT_NE(out.find("step        11"), std::string::npos) << out;
    EXPECT_NE(out.find("d_model = 16"), std::string::npos) << out;
    free_state(h[0]);
    free_state(h[1]);
}

// The count inspect prints under the tensor table is every float of the stored config's model: the
// sum of its tensors' element counts (a whole model: one process holding every expert).
TEST(Checkpoint, InspectCountsEveryParameter) {
    core_set_quiet(1);
    const MoeConfig c = tiny();
    State h[2] = {make_state(c, 0, 2), make_state(c, 1, 2)};
    const std::string path = test_tmp_dir("ckpt") + "/count.h5";
    save_halves(path, c, h, some_state());
    Model *whole = model_create(&c, 0, 1);
    double n = 0;
    for (int i = 0; i < whole->reg.n; i++) n += (double)whole->reg.p[i].numel;
    model_free(whole);
    char want[64];
    snprintf(want, sizeof want, "\n%.0f parameters (%.2fM)\n", n, n / 1e6);
    char *buf = nullptr;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    inspect(path.c_str(), f);
    fclose(f);
    std::string out(buf, len);
    free(buf);
    EXPECT_GT(n, 0);
    EXPECT_NE(out.find(want), std::string::npos) << want << " in\n" << out;
    free_state(h[0]);
    free_state(h[1]);
}

}  // namespace
