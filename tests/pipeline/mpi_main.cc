// main() of this package's GoogleTest binaries under mpirun: MPI through comm_init, a 60 s comm
// timeout (a test that leaves a message unmatched fails instead of hanging), rank 0 prints the
// usual progress, other ranks only their failed assertions, and the job fails when any rank failed.
#include <gtest/gtest.h>

#include <cstdio>

extern "C" {
#include "parallel/comm.h"
}

namespace {

class FailuresOnly : public ::testing::EmptyTestEventListener {
    void OnTestPartResult(const ::testing::TestPartResult &r) override {
        if (r.failed())
            std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", comm_world()->rank,
                         r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
    }
};

}  // namespace

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    comm_set_timeout(60);
    ::testing::InitGoogleTest(&argc, argv);
    if (comm_world()->rank != 0) {
        ::testing::TestEventListeners &l = ::testing::UnitTest::GetInstance()->listeners();
        delete l.Release(l.default_result_printer());
        l.Append(new FailuresOnly);
    }
    int failed = RUN_ALL_TESTS() != 0;
    comm_allreduce(comm_world(), &failed, 1, COMM_I32, COMM_MAX);
    comm_finalize();
    return failed;
}
