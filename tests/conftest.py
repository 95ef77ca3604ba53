"""Shared fixtures: small on-disk datasets of real image files in the three layouts."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("AGMAN_OFFLINE", "1")  # tests never download

import torch  # noqa: E402

# One intra-op thread per test process: on small VMs the tiny tensors of unit tests run many times
# slower with several threads, and CI spreads test files over processes (pytest-xdist) instead.
torch.set_num_threads(1)

REAL_FASHIONAI_SPLIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashionai_split"
#: For tests that read the real split files (``../shared`` beside the checkout; CI has it).
needs_real_split = pytest.mark.skipif(not REAL_FASHIONAI_SPLIT.is_dir(), reason="shared FashionAI split files not present")


def write_image(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def make_asen(root: Path, n_per_split=(24, 10, 10), values=(3, 2), single=False, with_images=True) -> Path:
    """An ASEN-layout dataset: ``values[a]`` values per attribute; each value gets >= 2 images per split."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"attr{a}" for a in range(len(values))]
    (root / "meta.json").write_text(
        json.dumps(
            {
                "ATTRIBUTES": names,
                "ATTRIBUTES_NUM": dict(zip(names, values)),
                "ATTRIBUTES_VALUES": {n: [f"{n}_v{v}" for v in range(k)] for n, k in zip(names, values)},
            }
        )
    )
    for s_idx, (split, n) in enumerate(zip(("train", "valid", "test"), n_per_split)):
        paths = [f"images/{split}/{i:04d}.png" for i in range(n)]
        (root / f"filenames_{split}.txt").write_text("".join(p + "\n" for p in paths))
        if with_images:
            for i, p in enumerate(paths):
                write_image(root / p, seed=1000 * s_idx + i)
        labels = []
        for i in range(n):
            if single:
                a = i % len(values)
                labels.append([(a, (i // len(values)) % values[a])])
            else:
                labels.append([(a, i % k) for a, k in enumerate(values)])
        if split == "train":
            (root / "label_train.txt").write_text(
                "".join(f"{i} " + " ".join(f"{a} {v}" for a, v in lab) + "\n" for i, lab in enumerate(labels))
            )
        else:
            q, c = [], []
            for i, lab in enumerate(labels):
                for a, v in lab:
                    (q if i % 5 == 0 else c).append(f"{i} {a} {v}\n")
            (root / f"query_{split}.txt").write_text("".join(q))
            (root / f"candidate_{split}.txt").write_text("".join(c))
    return root


def make_csn(root: Path, n_images=12, n_triplets=6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    paths = [f"Shoes/{i:03d}.jpg" for i in range(n_images)]
    img_root = root / "ut-zap50k-images"
    for i, p in enumerate(paths):
        write_image(img_root / p, seed=i)
    (root / "filenames.json").write_text(json.dumps(paths))
    (root / "tripletlists").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for cond in ("class", "closure", "gender", "heel"):
        for split in ("train", "val", "test"):
            rows = rng.integers(0, n_images, (n_triplets, 3))
            (root / "tripletlists" / f"{cond}_tripletlist_{split}.txt").write_text(
                "".join(f"{a} {b} {c}\n" for a, b, c in rows)
            )
    return root


def make_csv(root: Path, n=60) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,collar,pattern"]
    for i in range(n):
        p = f"img/{i:03d}.png"
        write_image(root / p, seed=1000 + i)
        collar = ["round", "v", "square"][i % 3]
        pattern = "" if i % 7 == 0 else ["solid", "stripes"][i % 2]
        lines.append(f"{p},{collar},{pattern}")
    csv_path = root / "catalog.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


@pytest.fixture
def asen_root(tmp_path):
    return make_asen(tmp_path / "ds")


@pytest.fixture
def csn_root(tmp_path):
    return make_csn(tmp_path / "zap")


@pytest.fixture
def catalog_csv(tmp_path):
    return make_csv(tmp_path / "cat")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """One real Milvus standalone server (``milvus-server`` from PyPI ``milvus`` 2.3.x) for the whole
    session, on free ports in a temporary folder (tests/milvus_server.py).  Skipped when the package
    is not installed — except under ``CI=true``, where that is a failure."""
    from milvus_server import MilvusServer, executable

    pytest.importorskip("pymilvus")
    if executable() is None:
        message = "milvus-server not installed (pip install 'milvus>=2.3,<=2.3.5', in agman's test extra)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = MilvusServer(tmp_path_factory.mktemp("milvus-server")).start()
    yield server
    server.stop()
