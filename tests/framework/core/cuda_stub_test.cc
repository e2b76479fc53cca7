// The CPU build's side of cuda.h (framework/core/cuda_stub.c): no GPU, --device cuda a usage error
// (exit 2) that says how to get the CUDA backend, and every other call one clear failure (exit 1)
// instead of a crash; freeing nothing stays a no-op, as it is on the GPU.
#include <gtest/gtest.h>

extern "C" {
#include "framework/core/cuda.h"
}

namespace {

const char *const kNoCuda = "this build has no CUDA backend: rebuild with --config=cuda";

TEST(CudaStub, NoGpuAndTheCpuSelects) {
    EXPECT_EQ(core_cuda_available(), 0);
    EXPECT_EQ(core_device_select("cpu", 0), CORE_CPU);
    core_cuda_graph_free(NULL);
    core_cuda_stream_free(NULL);
}

TEST(CudaStubDeathTest, CudaIsAUsageErrorNamingTheBuild) {
    EXPECT_EXIT(core_device_select("cuda", 0), testing::ExitedWithCode(2), kNoCuda);
    EXPECT_EXIT(core_cuda_init(0), testing::ExitedWithCode(2), kNoCuda);
    EXPECT_EXIT(core_device_select("tpu", 0), testing::ExitedWithCode(2), "--device tpu: expected cpu or cuda");
}

TEST(CudaStubDeathTest, EveryOtherCallFailsWithTheSameMessage) {
    EXPECT_EXIT(core_cuda_stream(), testing::ExitedWithCode(1), kNoCuda);
    EXPECT_EXIT(core_cuda_graph_begin(), testing::ExitedWithCode(1), kNoCuda);
    EXPECT_EXIT(core_cuda_graph_launch(NULL), testing::ExitedWithCode(1), kNoCuda);
    EXPECT_EXIT(core_cuda_peak_bytes(), testing::ExitedWithCode(1), kNoCuda);
    EXPECT_EXIT(core_cuda_memset(NULL, 0, 4), testing::ExitedWithCode(1), kNoCuda);
    EXPECT_EXIT(core_cuda_check_at(3, "f.cu", 7, "cudaMalloc(&p, n)"), testing::ExitedWithCode(1),
                "cudaMalloc\\(&p, n\\) failed \\(3\\)");
}

}  // namespace
