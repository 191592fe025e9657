"""How often the saliency peak falls inside the nodule: Grad-CAM against occlusion.

On the demo model's held-out synthetic positives (odd seeds from 20262725, the model card's
test seeds; the frames made by the default preprocessing chain, as tests/test_saliency.py
makes them, whose helpers this reuses), for the nodule class: the map's peak, in frame
pixels, inside the nodule's disc or not, and the seconds per frame of each method (one torch
thread; forward passes of 16 rows as on CPU in medspark). Not a test: the tests assert bounds
on fewer frames.

Usage: ``python bench/saliency_accuracy.py [--n 100] [--patch 16] [--stride 16] [--first SEED]
[--methods gradcam,occlusion]`` (seeds ``first``, ``first + 2``, ...; every frame is drawn
with a nodule).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_saliency import HELD_OUT, _frames, _inputs  # noqa: E402

from medspark.config import ModelConfig  # noqa: E402
from medspark.inference.model import load_model  # noqa: E402
from medspark.inference.saliency import gradcam, occlusion, saliency_fields  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--first", type=int, default=HELD_OUT.start + 1, help="first seed")
    parser.add_argument("--methods", default="gradcam,occlusion")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, nodules = _frames(range(args.first, args.first + 2 * args.n, 2))
    model = load_model(ModelConfig())
    x = _inputs(rows)
    target = torch.ones(len(rows), dtype=torch.long)
    out = {"n": len(rows), "first_seed": args.first, "patch": args.patch, "stride": args.stride}
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        if method == "gradcam":
            maps, cell = gradcam(model, x, target, chunk=16).numpy(), None
        else:
            maps = occlusion(model, x, target, args.patch, args.stride, chunk=16).numpy()
            cell = args.stride
        seconds = time.perf_counter() - t0
        inside = 0
        for row, where, cam in zip(rows, nodules, maps, strict=True):
            f = saliency_fields(cam, row["thumbnail_png"], 256, 256, (224, 224), 128, cell)
            inside += where.contains(f["peak"][0] + 0.5, f["peak"][1] + 0.5)
        out[method] = {"inside": inside, "ms_per_frame": seconds * 1000 / len(rows)}
        print(
            f"{method}: peak inside the nodule {inside}/{len(rows)}, "
            f"{seconds * 1000 / len(rows):.0f} ms/frame",
            flush=True,
        )
    out["load"] = os.getloadavg()
    print(f"load {out['load'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
