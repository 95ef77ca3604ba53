"""Benchmark: synthetic garments rendered and written per second, on one core.

    python bench/synth_speed.py                 # 128 px, 400 images, best of 3: about 10 s
    python bench/synth_speed.py --size 96 --images 1000

Times what ``agman data synth`` does per image (sample the nuisances, render with 2x supersampling,
encode the PNG) in one process, and two baselines measured in the same run on the same images:
encoding the PNG alone (the floor any image generator pays) and rendering without antialiasing.
"""
from __future__ import annotations

import argparse
import io
import time
import timeit

import numpy as np

from agman.data.synthetic import PNG_COMPRESS_LEVEL, image_params, plan_dataset
from agman.data.synthetic_render import render

TARGET = 300  # images/s at 128 px on one core (issue #3)


def _encode(image) -> int:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.tell()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--images", type=int, default=400, help="images per timed run (default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the fastest is kept (default 3)")
    args = parser.parse_args(argv)

    plan = plan_dataset(max(args.images, 100), seed=0)[: args.images]
    size = args.size
    images = [render(image_params(0, item), size).image for item in plan]

    def full() -> None:  # what generate() does per image
        for item in plan:
            _encode(render(image_params(0, item), size).image)

    def aliased() -> None:
        for item in plan:
            _encode(render(image_params(0, item), size, supersample=1).image)

    def png_only() -> None:
        for image in images:
            _encode(image)

    def rate(fn) -> float:
        # CPU time of this process: the rate of one core even when other jobs share the machine
        return args.images / min(timeit.Timer(fn, timer=time.process_time).repeat(repeat=args.repeats, number=1))

    r_full, r_png, r_aliased = rate(full), rate(png_only), rate(aliased)
    mean_bytes = np.mean([_encode(im) for im in images[:100]])
    print(f"synthetic garments: {size} px, {args.images} images, 1 process (CPU time), best of {args.repeats}")
    print(f"  sample + render (2x supersampled) + PNG : {r_full:7.0f} images/s  ({1000 / r_full:.2f} ms/image)")
    print(f"  baseline, PNG encoding only             : {r_png:7.0f} images/s  ({mean_bytes / 1024:.1f} KiB/image)")
    print(f"  render without antialiasing + PNG       : {r_aliased:7.0f} images/s")
    print(f"  ratio full / PNG-only time              : {r_png / r_full:7.2f}x  (an image costs this many PNG encodes)")
    print(f"  ratio antialiased / aliased time        : {r_aliased / r_full:7.2f}x")
    if size == 128:
        verdict = "met" if r_full >= TARGET else "NOT met"
        print(f"  target >= {TARGET} images/s at 128 px       : {verdict}")


if __name__ == "__main__":
    main()
