"""`tinyembed embed INPUT -o OUTPUT --ray [ADDRESS]`: the block run of jobs/bulk_blocks.py with
Ray actors doing the embedding.

This process reads the input, cuts it into blocks, and writes each finished block and the
manifest; the actors (one engine each, loaded once) only compute, so the input and output need
to be visible here only, and ADDRESS may be a remote cluster (`ray://head:10001`). Without
ADDRESS, Ray's own rule applies: RAY_ADDRESS or a cluster started on this machine by `ray
start`, else a local one for this run. Each actor gets at most two blocks at a time, so memory
stays bounded whatever the corpus size; a crash loses at most the blocks in flight.
"""

from __future__ import annotations

import argparse
import os
import sys

import ray

from tinyembed.jobs.bulk_blocks import BlockJob, embed_block
from tinyembed.jobs.bulk_chunk import ChunkEmbedder
from tinyembed.jobs.bulk_io import BulkError

IN_FLIGHT_PER_ACTOR = 2  # one computing, one waiting: the actor is never idle between blocks


class BlockWorker:
    """One Ray actor: an engine, loaded once, and the chunk logic of the local run."""

    def __init__(self, args: argparse.Namespace, output_format: str, tag: str, device: str):
        from tinyembed.engine import load_engine

        engine = load_engine(args.model, device=device, dtype=args.dtype)
        self.work = ChunkEmbedder(engine, args, output_format, tag)

    def embed(self, index, records):
        return embed_block(self.work, index, records)


class RayBlocks:
    """Blocks spread over `actors` actors; results yielded as they finish."""

    def __init__(self, job: BlockJob, actors: int, gpus_per_actor: float, cpus_per_actor: float):
        device = "cuda" if gpus_per_actor else job.args.device
        if device == "auto":
            device = "cpu"  # an actor Ray gave no GPU computes on the CPU
        remote = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)(BlockWorker)
        self.actors = [remote.remote(job.args, job.output_format, job.tag, device) for _ in range(actors)]

    def run(self, blocks):
        pending: dict = {}  # ObjectRef -> actor
        free = [actor for actor in self.actors for _ in range(IN_FLIGHT_PER_ACTOR)]
        blocks = iter(blocks)
        try:
            while True:
                while free:
                    block = next(blocks, None)
                    if block is None:
                        break
                    actor = free.pop(0)
                    pending[actor.embed.remote(*block)] = actor
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                free.append(pending.pop(ready[0]))
                yield _result(ready[0])
        finally:
            for ref in pending:
                ray.cancel(ref, force=False)


def _result(ref):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BulkError):
            raise BulkError(str(cause)) from None
        raise BulkError(f"a worker failed: {cause or exc}") from None
    except ray.exceptions.RayActorError as exc:
        raise BulkError(f"a worker died ({exc}); run the same command again to embed the rest") from None


def run(args: argparse.Namespace) -> int:
    """The --ray entry, called by the CLI."""
    try:
        job = BlockJob(args)
        address = args.ray or None
        if not ray.is_initialized():
            # The workers import this tinyembed (a checkout on PYTHONPATH included).
            path = os.environ.get("PYTHONPATH")
            env = {"env_vars": {"PYTHONPATH": path}} if path else None
            ray.init(address=address, runtime_env=env, log_to_driver=False, include_dashboard=False,
                     logging_level="WARNING")
        resources = ray.cluster_resources()
        wants_gpu = args.device == "auto" or args.device.startswith("cuda")  # any GPU form: one per actor
        gpus = float(resources.get("GPU", 0)) if wants_gpu else 0.0
        if args.device != "auto" and wants_gpu and not gpus:
            raise BulkError(f"--device {args.device}: this Ray cluster has no GPU")
        cpus = float(resources.get("CPU", 1))
        actors = args.actors or int(gpus or max(1, cpus))
        # Leave a CPU's worth for Ray's own tasks on a small cluster; GPU actors ask for one CPU.
        cpus_per_actor = 1.0 if gpus else min(1.0, max(cpus - 0.5, 0.5) / actors)
        executor = RayBlocks(job, actors, 1.0 if gpus else 0.0, cpus_per_actor)
        if not args.quiet:
            print(f"tinyembed embed: {actors} Ray actors ({'1 GPU' if gpus else f'{cpus_per_actor:g} CPU'} each)",
                  file=sys.stderr)
        return job.run(executor)
    except BulkError as exc:
        print(f"tinyembed embed: error: {exc}", file=sys.stderr)
        return 1
