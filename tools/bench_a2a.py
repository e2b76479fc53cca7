# PyTorch's NCCL all_to_all_single moving the bytes of one EP dispatch + combine: the baseline that
# tests/gpu/ep_bench.cc's `a2a` mode is compared with (tools/gpu_run.sh, stage ep_bench). Each rank
# sends tokens x top_k rows of d_model bf16 values, split evenly over the ranks, out and back.
#   usage: torchrun --nproc_per_node=P tools/bench_a2a.py [--tokens N] [--d-model D] [--top-k K] [--reps R]
import argparse
import os
import time

import torch
import torch.distributed as dist


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=6)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = a.tokens * a.top_k
    assert rows % world == 0, "rows must split evenly over the ranks"
    x = torch.randn(rows, a.d_model, dtype=torch.bfloat16, device="cuda")
    there = torch.empty_like(x)
    back = torch.empty_like(x)
    times = []
    for r in range(-2, a.reps):  # r < 0: warm-up
        torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_to_all_single(there, x)     # dispatch
        dist.all_to_all_single(back, there)  # combine
        torch.cuda.synchronize()
        if r >= 0:
            times.append(time.perf_counter() - t0)
    # The slowest rank's time of each repetition, then the median.
    t = torch.tensor(times, dtype=torch.float64, device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    med = sorted(t.tolist())[len(times) // 2]
    nbytes = rows * a.d_model * x.element_size()
    if rank == 0:
        print(f"torch all_to_all_single: {world} ranks | {nbytes / 1e6:.1f} MB each way per rank | "
              f"out and back {med * 1e3:.3f} ms = {2 * nbytes / med / 1e9:.1f} GB/s per rank "
              f"(torch {torch.__version__}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))})",
              flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
