#!/usr/bin/env python3
"""torch.distributed (gloo, CPU) all-reduce, the peer of `fleet bench collective`.

Starts `--ranks` processes on this machine (one thread each), all-reduces float32 tensors of
each size, and prints, per size, the median over `--iters` runs as `name value unit` lines:

    gloo_allreduce_us_<n>r_same_node_<size> <microseconds> us
    gloo_allreduce_busbw_<n>r_same_node_<size> <GB/s> GB/s

with busbw = algbw * 2(n-1)/n, as `fleet bench collective` prints its own.

Usage: bench/torch_allreduce.py [--ranks 2] [--sizes 1KiB,64KiB,1MiB,16MiB,256MiB]
(needs PyTorch: python3 -m venv /work/torch-venv && /work/torch-venv/bin/pip install torch numpy)
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "B": 1}


def parse_size(text):
    for unit, factor in UNITS.items():
        if text.endswith(unit) and unit != "B":
            return int(text[: -len(unit)]) * factor
    return int(text.rstrip("B"))


def iterations(size):
    # About 0.5 GB moved per size, at least 5 runs and at most 200.
    return max(5, min(200, (512 << 20) // max(size, 1)))


def worker(rank, world, port, sizes, out):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = []
    for label, size in sizes:
        tensor = torch.ones(size // 4, dtype=torch.float32)
        for _ in range(2):
            dist.all_reduce(tensor)
        times = []
        for _ in range(iterations(size)):
            dist.barrier()
            started = time.perf_counter()
            dist.all_reduce(tensor)
            times.append(time.perf_counter() - started)
        results.append((label, size, statistics.median(times)))
    if rank == 0:
        out.put(results)
    dist.barrier()
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--sizes", default="1KiB,64KiB,1MiB,16MiB,256MiB")
    parser.add_argument("--port", type=int, default=29531)
    args = parser.parse_args()
    sizes = [(s, parse_size(s)) for s in args.sizes.split(",")]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(r, args.ranks, args.port, sizes, out))
        for r in range(args.ranks)
    ]
    for p in procs:
        p.start()
    results = out.get(timeout=1800)
    for p in procs:
        p.join()
    n = args.ranks
    for label, size, seconds in results:
        busbw = size / seconds * 2 * (n - 1) / n / 1e9
        print(f"gloo_allreduce_us_{n}r_same_node_{label} {seconds * 1e6:.1f} us")
        print(f"gloo_allreduce_busbw_{n}r_same_node_{label} {busbw:.4f} GB/s")
    return 0 if all(p.exitcode == 0 for p in procs) else 1


if __name__ == "__main__":
    sys.exit(main())
