"""Trials share one copy of the data per node: the bundle travels through Ray's object store as
numpy buffers that every reader maps zero-copy instead of unpickling its own."""

from __future__ import annotations

from pathlib import Path

import ray
import torch

from trainables.core.data import DataConfig, load_data


@ray.remote(num_cpus=0)
def reads_share_memory(refs: list) -> bool:
    """In a worker (where trials run): two reads of the object map the same buffer."""
    first, second = ray.get(refs[0]), ray.get(refs[0])
    return first.train_x.data_ptr() == second.train_x.data_ptr()


def test_the_data_bundle_is_mapped_from_the_object_store_not_copied(tiny_fashion_root: Path) -> None:
    data = load_data(DataConfig("fashion_mnist", root=str(tiny_fashion_root), subset=400, val=100))
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        ref = ray.put(data)
        first, second = ray.get(ref), ray.get(ref)
        assert first.train_x.data_ptr() == second.train_x.data_ptr(), "two reads share one buffer"
        assert first.train_x.data_ptr() != data.train_x.data_ptr()
        for name in data.tensor_names:
            assert torch.equal(getattr(first, name), getattr(data, name))
        assert ray.get(reads_share_memory.remote([ref]))
    finally:
        ray.shutdown()
