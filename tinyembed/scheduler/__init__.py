"""Continuous batching between the server and the engine: tier queues, batch former, runners."""

from tinyembed.scheduler.continuous import Scheduler
from tinyembed.scheduler.runner import DeadlineExceeded, DirectRunner, Overloaded, Runner

__all__ = ["Scheduler", "DirectRunner", "Runner", "Overloaded", "DeadlineExceeded"]
