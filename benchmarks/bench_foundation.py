"""Speed of the foundation: dense projection and PNCC + mask + depth rendering of the default face model.

Run: python benchmarks/bench_foundation.py [--threads 2] [--repeats 10]
Prints a Markdown table (median wall time over the repeats, after one warm-up run).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from cprfa.model.face_model import default_face_model
from cprfa.model.projection import ParamLayout, image_vertices, pose_from_box
from cprfa.model.render import render_pncc


def random_params(model, batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Faces filling ~60 % of a size × size crop, yaw ±80°, pitch ±30°, roll ±20°, random identity/expression."""
    g = torch.Generator().manual_seed(seed)
    layout = ParamLayout.of(model)
    angles = (torch.rand(batch, 3, generator=g) * 2 - 1) * torch.tensor([math.radians(a) for a in (30, 80, 20)])
    box = torch.tensor([0.2, 0.2, 0.8, 0.8]).expand(batch, -1) * size
    params = layout.initial(batch)
    params[:, layout.pose] = pose_from_box(model, box, angles)
    params[:, layout.identity] = torch.randn(batch, layout.n_identity, generator=g)
    params[:, layout.expression] = torch.rand(batch, layout.n_expression, generator=g) * 0.3
    return params


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = default_face_model()

    rows = []
    params = random_params(model, 256, args.size)
    seconds = median_seconds(lambda: image_vertices(model, params), args.repeats)
    rows.append(("project 256 dense meshes", seconds / 256))
    for batch in (1, 32):
        vertices = image_vertices(model, random_params(model, batch, args.size))
        seconds = median_seconds(lambda v=vertices: render_pncc(model, v, args.size, args.size), args.repeats)
        rows.append((f"render PNCC+mask+depth+visibility {args.size}², batch {batch}", seconds / batch))

    print(f"{model.n_vertices} vertices, {len(model.triangles)} triangles; {args.threads} threads; "
          f"torch {torch.__version__}; {platform.processor() or platform.machine()}")
    print("\n| operation | ms per face |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1000:.2f} |")


if __name__ == "__main__":
    main()
