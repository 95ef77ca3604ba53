"""Indexing speed: images/s of the one-backbone-pass path (``embed_all``) against one pass per attribute.

Writes ``--images`` JPEG files (random texture, 256x256), builds a randomly initialised model and
measures, in the same run and on the same files:

* ``one-pass``   ``engine.embed.iter_embeddings`` (what ``agman index`` runs): load + transform each
  image once, ``model.embed_all`` -> ``[b, A, D]``;
* ``per-attribute``  the naive way: for each of the A attributes, a full pass over the images with
  ``model(images, attribute_ids)``;
* ``agman index``  the whole product path (``build_index``: one-pass embedding, shards, vector
  files, FAISS flat) for the same images.

It checks that both paths give the same embeddings (max |difference| <= 1e-5) and prints the speed-up.

    python bench/index_speed.py --quick                     # resnet18 at 112 px, 16 images
    python bench/index_speed.py                             # AG-MAN ResNet-50 at 224 px, 8 attributes, 32 images
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        base = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((256, 256), Image.Resampling.BICUBIC)
        path = folder / f"{i:05d}.jpg"
        img.save(path, quality=90)
        paths.append(str(path))
    return paths


def per_attribute_pass(model, paths, *, input_size, crop_ratio, batch_size) -> np.ndarray:
    """A full pass over the images for each attribute (images decoded again every time)."""
    from torch.utils.data import DataLoader

    from agman.data.images import ImageListDataset
    from agman.data.transforms import build_transform

    transform = build_transform(input_size, train=False, crop_ratio=crop_ratio)
    out = np.zeros((len(paths), model.n_attributes, model.embedding_dim), np.float32)
    with torch.inference_mode():
        for a in range(model.n_attributes):
            loader = DataLoader(ImageListDataset(paths, None, transform), batch_size=batch_size, shuffle=False)
            for images, index in loader:
                ids = torch.full((len(images),), a, dtype=torch.long)
                out[index.numpy(), a] = model(images, ids).embedding.numpy()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 at 112 px, 16 images")
    parser.add_argument("--model", default="agman")
    parser.add_argument("--backbone", default=None, help="default resnet50 (resnet18 with --quick)")
    parser.add_argument("--attributes", type=int, default=8, help="attributes (FashionAI: 8)")
    parser.add_argument("--images", type=int, default=None, help="images (default 32, 16 with --quick)")
    parser.add_argument("--input-size", type=int, default=None, help="default 224 (112 with --quick)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    backbone = args.backbone or ("resnet18" if args.quick else "resnet50")
    n_images = args.images or (16 if args.quick else 32)
    input_size = args.input_size or (112 if args.quick else 224)
    if args.threads:
        torch.set_num_threads(args.threads)

    from agman.data.spec import Attribute
    from agman.engine.checkpoint import save_checkpoint
    from agman.engine.embed import embed_images
    from agman.models import build_model
    from agman.retrieval.build import build_index
    from agman.retrieval.imagesets import from_directory

    torch.manual_seed(0)
    model = build_model(args.model, args.attributes, backbone=backbone).eval()
    attributes = [Attribute(f"attr{a}", ("v0", "v1")) for a in range(args.attributes)]
    print(
        f"{args.model} / {backbone}, {args.attributes} attributes, D={model.embedding_dim}, {input_size} px, "
        f"{n_images} images, batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_images(tmp / "images", n_images)
        common = {"input_size": input_size, "crop_ratio": 224 / 256, "batch_size": args.batch_size}
        embed_images(model, paths[: args.batch_size], None, **common)  # warm-up

        t = time.perf_counter()
        one = embed_images(model, paths, None, **common)
        one_s = time.perf_counter() - t

        t = time.perf_counter()
        per = per_attribute_pass(model, paths, **common)
        per_s = time.perf_counter() - t

        ckpt = save_checkpoint(tmp / "model.pt", model=model, model_name=args.model, attributes=attributes,
                               input_size=input_size, crop_ratio=224 / 256)
        t = time.perf_counter()
        summary = build_index(tmp / "index", from_directory(tmp / "images"), ckpt, batch_size=args.batch_size)
        index_s = time.perf_counter() - t

    diff = float(np.abs(one - per).max())
    rows = [
        ("one-pass (embed_all)", n_images / one_s, one_s),
        ("per-attribute passes", n_images / per_s, per_s),
        ("agman index (end to end)", n_images / index_s, index_s),
    ]
    print(f"{'path':<26} {'images/s':>9} {'seconds':>8}")
    for name, rate, secs in rows:
        print(f"{name:<26} {rate:9.2f} {secs:8.2f}")
    print(f"  (agman index: {summary.images_per_second:.2f} images/s while embedding; the rest loads the "
          f"checkpoint and writes the index)")
    print(f"one-pass / per-attribute speed-up: {per_s / one_s:.2f}x for {args.attributes} attributes; "
          f"max |embedding difference| = {diff:.2e}")
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
