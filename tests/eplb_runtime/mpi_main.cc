// main() for this package's GoogleTest suites under mpirun: MPI through comm_init, a 60 s timeout on
// every collective (an unmatched one fails instead of hanging CI), rank 0's usual progress and the
// other ranks' failures only (with their rank), and a job-wide verdict.
#include <gtest/gtest.h>

#include <cstdio>

extern "C" {
#include "parallel/comm.h"
}

namespace {

class RankFailures : public ::testing::EmptyTestEventListener {
  public:
    explicit RankFailures(int rank) : rank_(rank) {}
    void OnTestPartResult(const ::testing::TestPartResult &r) override {
        if (r.failed())
            std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                         r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
    }

  private:
    int rank_;
};

}  // namespace

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    comm_set_timeout(60);
    ::testing::InitGoogleTest(&argc, argv);
    Comm *w = comm_world();
    if (w->rank != 0) {
        ::testing::TestEventListeners &l = ::testing::UnitTest::GetInstance()->listeners();
        delete l.Release(l.default_result_printer());
        l.Append(new RankFailures(w->rank));
    }
    int failed = RUN_ALL_TESTS() != 0;
    comm_allreduce(w, &failed, 1, COMM_I32, COMM_MAX);
    comm_finalize();
    return failed;
}
