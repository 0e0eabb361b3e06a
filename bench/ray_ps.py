#!/usr/bin/env python3
"""ray_ps.py - the Ray peer of `fleet bench ps`: the same sparse parameter server as Ray's
documented parameter-server pattern (server actors holding numpy arrays, workers as Ray
tasks pulling weights and pushing gradients), on the same machine and the same data.

It prints `name value unit` lines:
    ray_ps_keys_per_s_<W>w_<S>s      keys pulled+pushed per second, W workers, S shards
    ray_ps_time_to_target_s_asp      seconds until the held-out log-loss is within --gap
                                     of the optimum (asynchronous workers: Ray's pattern)
    ray_ps_final_gap_asp             the relative gap at the end

Usage (fleet bench ps --peer PYTHON runs it; the data comes from fleet_ps::bench::export):
    python3 bench/ray_ps.py --data DIR --workers 1,2,4 --shards 1,2 --calls 200 \
        --keys-per-call 1000 --batch 200 --epochs 3 --gap 0.01 --target-workers 4 \
        --target-shards 2

The server applies FTRL-proximal as fleet-ps does (same formulas, same hyper-parameters);
keys are hashed into --buckets slots and each shard holds a contiguous range of them.
"""

import argparse
import os
import sys
import time

import numpy as np
import ray

ALPHA, BETA, L1, L2 = 0.1, 1.0, 1.0, 1.0


@ray.remote(num_cpus=0)
class Shard:
    """One server shard: FTRL's z and n for a contiguous range of slots."""

    def __init__(self, size):
        self.z = np.zeros(size, np.float32)
        self.n = np.zeros(size, np.float32)

    def _weights(self, slots):
        z = self.z[slots]
        n = self.n[slots]
        w = -(z - np.sign(z) * L1) / ((BETA + np.sqrt(n)) / ALPHA + L2)
        return np.where(np.abs(z) <= L1, 0.0, w).astype(np.float32)

    def pull(self, slots):
        return self._weights(slots)

    def push(self, slots, grads):
        w = self._weights(slots)
        n = self.n[slots]
        sigma = (np.sqrt(n + grads * grads) - np.sqrt(n)) / ALPHA
        self.z[slots] += grads - sigma * w
        self.n[slots] += grads * grads
        return True


class ShardMap:
    def __init__(self, buckets, shards):
        self.buckets = buckets
        self.bounds = np.linspace(0, buckets, shards + 1).astype(np.int64)

    def split(self, keys):
        """Per shard: (positions in keys, local slots)."""
        slots = (keys % self.buckets).astype(np.int64)
        shard_of = np.searchsorted(self.bounds, slots, side="right") - 1
        out = []
        for s in range(len(self.bounds) - 1):
            where = np.nonzero(shard_of == s)[0]
            out.append((where, slots[where] - self.bounds[s]))
        return out


def pull(shards, shard_map, keys):
    parts = shard_map.split(keys)
    refs = [shards[s].pull.remote(local) for s, (_, local) in enumerate(parts)]
    values = ray.get(refs)
    out = np.zeros(len(keys), np.float32)
    for (where, _), vals in zip(parts, values):
        out[where] = vals
    return out, parts


def push(shards, parts, grads):
    """Sends the gradients without waiting (Ray's parameter-server pattern); the shard
    actors apply them in order, before the same worker's next pull."""
    return [shards[s].push.remote(local, grads[where]) for s, (where, local) in enumerate(parts)]


@ray.remote(num_cpus=1)
def keys_worker(shards, buckets, keys_per_call, calls, seed):
    shard_map = ShardMap(buckets, len(shards))
    rng = np.random.default_rng(seed)
    keys_moved = 0
    started = time.perf_counter()
    in_flight = []
    for call in range(calls + 1):
        keys = np.unique(rng.integers(0, 1 << 24, keys_per_call, dtype=np.int64))
        weights, parts = pull(shards, shard_map, keys)
        ray.get(in_flight)
        in_flight = push(shards, parts, (0.01 * (weights + 1.0)).astype(np.float32))
        if call == 0:
            started = time.perf_counter()
        else:
            keys_moved += 2 * len(keys)
    ray.get(in_flight)
    return keys_moved, time.perf_counter() - started


@ray.remote(num_cpus=1)
def logreg_worker(shards, buckets, features, labels, lo, hi, iterations, batch):
    shard_map = ShardMap(buckets, len(shards))
    active = features.shape[1]
    in_flight = []
    for it in range(iterations):
        idx = lo + (np.arange(batch) + it * batch) % (hi - lo)
        rows = features[idx]
        y = labels[idx]
        keys, inverse = np.unique(rows, return_inverse=True)
        inverse = inverse.reshape(rows.shape)
        weights, parts = pull(shards, shard_map, keys)
        p = 1.0 / (1.0 + np.exp(-weights[inverse].sum(axis=1)))
        grads = np.bincount(
            inverse.ravel(), weights=np.repeat(p - y, active), minlength=len(keys)
        ).astype(np.float32)
        ray.get(in_flight)
        in_flight = push(shards, parts, grads)
    ray.get(in_flight)
    return iterations


def held_out_loss(shards, shard_map, features, labels):
    keys, inverse = np.unique(features, return_inverse=True)
    weights, _ = pull(shards, shard_map, keys)
    p = 1.0 / (1.0 + np.exp(-weights[inverse.reshape(features.shape)].sum(axis=1)))
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--shards", default="1,2")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--keys-per-call", type=int, default=1000)
    parser.add_argument("--buckets", type=int, default=1 << 20)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--gap", type=float, default=0.01)
    parser.add_argument("--eval-every", type=float, default=0.5)
    parser.add_argument("--target-workers", type=int, default=4)
    parser.add_argument("--target-shards", type=int, default=2)
    args = parser.parse_args()

    with open(os.path.join(args.data, "shape.txt")) as f:
        examples, held_out, active, optimum = f.read().split()
    examples, held_out, active, optimum = int(examples), int(held_out), int(active), float(optimum)
    features = np.fromfile(os.path.join(args.data, "features.u64"), dtype="<u8").astype(np.int64)
    features = features.reshape(-1, active)
    labels = np.fromfile(os.path.join(args.data, "labels.f32"), dtype="<f4")
    if len(labels) != examples + held_out or len(features) != len(labels):
        sys.exit(f"{args.data}: {len(labels)} labels and {len(features)} rows, expected {examples + held_out}")

    workers = [int(w) for w in args.workers.split(",")]
    shard_counts = [int(s) for s in args.shards.split(",")]
    ray.init(num_cpus=max(workers + [args.target_workers]), include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    try:
        for s in shard_counts:
            for w in workers:
                bounds = np.linspace(0, args.buckets, s + 1).astype(np.int64)
                shards = [Shard.remote(int(bounds[i + 1] - bounds[i])) for i in range(s)]
                runs = [keys_worker.remote(shards, args.buckets, args.keys_per_call, args.calls, i + 1)
                        for i in range(w)]
                results = ray.get(runs)
                keys = sum(r[0] for r in results)
                seconds = max(r[1] for r in results)
                print(f"ray_ps_keys_per_s_{w}w_{s}s {keys / seconds:.0f} keys/s", flush=True)
                for shard in shards:
                    ray.kill(shard)

        w, s = args.target_workers, args.target_shards
        shard_map = ShardMap(args.buckets, s)
        bounds = shard_map.bounds
        shards = [Shard.remote(int(bounds[i + 1] - bounds[i])) for i in range(s)]
        train_features = ray.put(features[:examples])
        train_labels = ray.put(labels[:examples])
        test_features, test_labels = features[examples:], labels[examples:]
        per_worker = examples // w
        iterations = args.epochs * per_worker // args.batch
        started = time.perf_counter()
        runs = [logreg_worker.remote(shards, args.buckets, train_features, train_labels,
                                     i * per_worker, (i + 1) * per_worker, iterations, args.batch)
                for i in range(w)]
        reached = None
        pending = runs
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=args.eval_every)
            loss = held_out_loss(shards, shard_map, test_features, test_labels)
            if reached is None and (loss - optimum) / optimum <= args.gap:
                reached = time.perf_counter() - started
        ray.get(runs)
        loss = held_out_loss(shards, shard_map, test_features, test_labels)
        if reached is None and (loss - optimum) / optimum <= args.gap:
            reached = time.perf_counter() - started
        print(f"ray_ps_time_to_target_s_asp {reached if reached is not None else float('nan'):.2f} s", flush=True)
        print(f"ray_ps_final_gap_asp {(loss - optimum) / optimum:.4f} ratio", flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
