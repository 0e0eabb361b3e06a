#!/usr/bin/env python3
"""ray_actors.py - the Ray peer of `fleet bench actors`: N actors created at once, until every
one answered a ping (Ray's `actor creation` shape), on a local Ray instance started here.

Prints `name value unit` lines:
    actor_creation_<N>     actors/s
Usage (fleet bench actors --peer PYTHON runs it):  python3 bench/ray_actors.py N
Ray starts one Python worker process per actor, so keep N small on a small machine.
"""

import sys
import time

import ray


@ray.remote(num_cpus=0)
class Idle:
    def __init__(self, index):
        self.index = index

    def ping(self):
        return self.index


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    ray.init(include_dashboard=False, logging_level="ERROR")
    started = time.perf_counter()
    actors = [Idle.remote(i) for i in range(count)]
    answers = ray.get([a.ping.remote() for a in actors])
    seconds = time.perf_counter() - started
    assert answers == list(range(count)), "an actor answered out of turn"
    print(f"actor_creation_{count} {count / seconds:.2f} actors/s", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
