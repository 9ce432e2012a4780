"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one intra-op thread.

    The test machine's 2 cores are shared with DataLoader workers and other processes; torch's
    default of one thread per core then slows small models down tenfold.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's standalone S3 server on 127.0.0.1, shared by the session (tests make their own buckets)."""
    pytest.importorskip("moto.server", reason="moto[server] is part of the test extra")
    from servers import s3_server

    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """The standard AWS_* variables pointing boto3, s3fs and GDAL at the loopback endpoint, for one test."""
    for name, value in s3_endpoint.env().items():
        monkeypatch.setenv(name, value)
    return s3_endpoint


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory):
    """The generated demo region (seed 0), once per session: its inputs folder."""
    from reben_tools.builder.demo_region.region import generate_region

    root = tmp_path_factory.mktemp("demo") / "inputs"
    generate_region(root, seed=0)
    return root


@pytest.fixture(scope="session")
def demo_reference(demo_inputs, tmp_path_factory):
    """The demo region built from local disk (2 workers), once per session: the archive folder."""
    from cloud_demo import demo_config

    from reben_tools.builder.pipeline.run import build_archive

    out = tmp_path_factory.mktemp("demo-local") / "archive"
    build_archive(demo_config(demo_inputs), out=out, workers=2, progress=False, echo=lambda _: None)
    return out
