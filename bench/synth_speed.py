"""Benchmark: synthetic garments rendered and written per second, on one core.

    python bench/synth_speed.py                 # 128 px, 400 images, best of 3: about 10 s
    python bench/synth_speed.py --size 96 --images 1000
    python bench/synth_speed.py --mode fashionai  # the FashionAI-like garments

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

from agman.data.synthetic import MODES, PNG_COMPRESS_LEVEL, image_params, minimum_images, plan_dataset, render_image

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
    parser.add_argument("--mode", choices=MODES, default="all", help="annotation mode: which garments (default all)")
    args = parser.parse_args(argv)

    plan = plan_dataset(max(args.images, minimum_images(args.mode)), seed=0, mode=args.mode)[: args.images]
    size = args.size
    images = [render_image(image_params(0, item), size).image for item in plan]

    def full() -> None:  # what generate() does per image
        for item in plan:
            _encode(render_image(image_params(0, item), size).image)

    def aliased() -> None:
        for item in plan:
            _encode(render_image(image_params(0, item), size, supersample=1).image)

    def png_only() -> None:
        for image in images:
            _encode(image)

    def rate(fn) -> float:
        # CPU time of this process: the rate of one core even when other jobs share the machine
        return args.images / min(timeit.Timer(fn, timer=time.process_time).repeat(repeat=args.repeats, number=1))

    r_full, r_png, r_aliased = rate(full), rate(png_only), rate(aliased)
    mean_bytes = np.mean([_encode(im) for im in images[:100]])
    print(f"synthetic garments (mode {args.mode}): {size} px, {args.images} images, 1 process (CPU time), "
          f"best of {args.repeats}")
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
