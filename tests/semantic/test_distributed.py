"""Two real processes (torch.distributed, gloo) extracting into one cache: slices, rank shards, merged index."""
from __future__ import annotations

import json
import os
import socket
import sys

import torch
import pytest
import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, port: int, paths: list[str], cache_dir: str) -> None:
    import torch.distributed as dist

    sys.path.insert(0, os.path.dirname(__file__))
    from _tiny import tiny_qwen2_vl

    from agiqa.semantic import HFVLMEncoder, extract_features

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        enc = HFVLMEncoder(*tiny_qwen2_vl(0), name="tiny-qwen2-vl", precision="fp32", device="cpu")
        report = extract_features(paths, enc, cache_dir, batch_size=2, progress=False)  # rank/world from dist
        assert report.world_size == world_size and report.done == len(paths[rank::world_size])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gloo_two_processes(image_files, tmp_path, qwen_encoder):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache_dir = str(tmp_path / "cache")
    mp.spawn(_worker, args=(2, port, image_files, cache_dir), nprocs=2, join=True)
    assert sorted({name[:4] for name in os.listdir(os.path.join(cache_dir, "shards"))}) == ["r000", "r001"]
    assert json.loads(open(os.path.join(cache_dir, "index.json")).read())["count"] == 7
    from agiqa.data.images import load_image
    from agiqa.semantic import load_features

    torch.testing.assert_close(load_features(cache_dir, image_files),
                               qwen_encoder.encode([load_image(p) for p in image_files]), rtol=1e-5, atol=1e-5)
