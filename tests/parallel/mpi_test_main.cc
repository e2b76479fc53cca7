// main() for GoogleTest suites run under mpirun: starts MPI through comm_init, lets rank 0 print the
// usual progress and every other rank only its failures (prefixed with its rank), and makes the job
// fail when any rank failed.
#include <gtest/gtest.h>

#include <cstdio>

extern "C" {
#include "parallel/comm.h"
}

namespace {

// Prints failed assertions with the rank, and nothing else.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
  public:
    explicit RankFailurePrinter(int rank) : rank_(rank) {}
    void OnTestPartResult(const ::testing::TestPartResult &r) override {
        if (!r.failed()) return;
        std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                     r.line_number(), r.summary());
    }

  private:
    int rank_;
};

}  // namespace

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    // A test that leaves a collective unmatched fails in a minute instead of hanging CI.
    comm_set_timeout(60);
    ::testing::InitGoogleTest(&argc, argv);
    Comm *w = comm_world();
    if (w->rank != 0) {
        ::testing::TestEventListeners &l = ::testing::UnitTest::GetInstance()->listeners();
        delete l.Release(l.default_result_printer());
        l.Append(new RankFailurePrinter(w->rank));
    }
    int failed = RUN_ALL_TESTS() != 0;
    comm_allreduce(w, &failed, 1, COMM_I32, COMM_MAX);
    comm_finalize();
    return failed;
}
