"""Per-cell linear probes: how much does ONE grid cell of a trunk's layer3 feature map know about each attribute?

    python scripts/cell_probe.py --data data/synthetic --trunk RUN/warmup-resnet18-*.pth --size 64

For every attribute and every cell of the layer3 grid (4x4 at 64 px), a linear classifier is trained
on that cell's feature vector alone (train split, at most --train images) and its value accuracy is
measured on the test split.  If cells far from an attribute's region (the background corners)
predict it almost as well as the cells on it, the features are global (every cell sees the whole
image) and nothing pushes an attention map towards the region; the scores of
``agman.engine.localization`` then stay near chance.  Prints, per attribute, the accuracy grid and
the mean accuracy of the cells on the region (mean box coverage >= half the best cell's), of the
cells off it (coverage < 5%) and of the four corners.  A diagnostic, not part of the package.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from agman.data.crop import crop_frame
from agman.data.images import ImageListDataset
from agman.data.layouts import open_dataset
from agman.data.regions import read_regions_file, regions_path
from agman.data.transforms import build_transform
from agman.engine.localization import cell_coverage
from agman.models.backbone import ResNetTrunk, load_pretrained


def layer3_features(trunk, spec, split: str, size: int, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    data = spec.split(split)
    images = ImageListDataset(data.paths[:limit], spec.root, build_transform(size, crop_ratio=1.0))
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), 100):
            chunks.append(trunk(torch.stack([images[i][0] for i in range(start, min(start + 100, len(images)))]))[1])
    return torch.cat(chunks), torch.as_tensor(data.labels[:limit], dtype=torch.long)


def probe(x_train, y_train, x_test, y_test, n_values: int, steps: int = 150) -> float:
    """Test accuracy of a linear classifier (Adam, weight decay) on one cell's features."""
    linear = torch.nn.Linear(x_train.shape[1], n_values)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-3)
    known = y_train >= 0
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(linear(x_train[known]), y_train[known]).backward()
        optimizer.step()
    known = y_test >= 0
    with torch.no_grad():
        return float((linear(x_test[known]).argmax(1) == y_test[known]).float().mean())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a dataset with regions_test.jsonl (the synthetic set)")
    parser.add_argument("--trunk", default="none", help="trunk weights (.pth, e.g. a warm-up trunk) or none")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="input size (crop_ratio 1)")
    parser.add_argument("--train", type=int, default=1600, help="train images for the probes (default 1600)")
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    trunk = ResNetTrunk(args.backbone, with_layer4=False)
    load_pretrained(trunk, args.trunk, args.backbone)
    trunk.eval()
    spec = open_dataset(args.data)
    x_train, y_train = layer3_features(trunk, spec, "train", args.size, args.train)
    x_test, y_test = layer3_features(trunk, spec, "test", args.size, None)
    mean, std = x_train.mean((0, 2, 3), keepdim=True), x_train.std((0, 2, 3), keepdim=True) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    h, w = x_train.shape[-2:]
    test = spec.split("test")
    regions = read_regions_file(regions_path(args.data, "test"), test, spec.attribute_names)
    frames = {}
    for image in regions:
        with Image.open(spec.root / test.paths[image]) as im:
            frames[image] = crop_frame(im.width, im.height, args.size, 1.0)
    results = {}
    for a, attr in enumerate(spec.attributes):
        acc = np.array([[probe(x_train[:, :, i, j], y_train[:, a], x_test[:, :, i, j], y_test[:, a], attr.n_values)
                         for j in range(w)] for i in range(h)])
        coverage = np.zeros((h, w))
        for image, record in regions.items():
            if attr.name in record.boxes:
                visible = [v for v in (frames[image].visible(b) for b in record.boxes[attr.name]) if v is not None]
                coverage += cell_coverage(visible, (h, w), args.size) if visible else 0
        coverage /= max(1, len(regions))
        on, off = coverage >= 0.5 * coverage.max(), coverage < 0.05
        corners = acc[[0, 0, -1, -1], [0, -1, 0, -1]]
        results[attr.name] = {"accuracy": acc.round(3).tolist(), "on_region": float(acc[on].mean()),
                              "off_region": float(acc[off].mean()) if off.any() else None,
                              "corners": float(corners.mean()), "best": float(acc.max()),
                              "chance": 1 / attr.n_values}
        r = results[attr.name]
        off_text = "n/a" if r["off_region"] is None else f"{r['off_region']:.2f}"
        print(f"{attr.name}: on region {r['on_region']:.2f}, off region {off_text}, corners {r['corners']:.2f}, "
              f"best cell {r['best']:.2f} (chance {r['chance']:.2f})")
        print(np.array2string(acc, precision=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
