"""Peak memory of each step on N and 10·N demo images: it should not grow with the dataset.

Each step runs in a fresh Python process (so one step's peak cannot hide another's) on the
same run folder, as the notebooks would; the process reports its own peak resident set
size. Training runs a few steps only: what is measured is what the input pipeline and the
validation pass hold, not how long training takes.

    python bench/memory.py [--n 300] [--factor 10] [--out runs/bench_memory]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STEP = """
import resource, sys
from seglab.config import load_config
from seglab.rundir import RunDir
cfg = load_config(sys.argv[2], sys.argv[3:])
run = RunDir(cfg.run_dir)
step = sys.argv[1]
if step == "01":
    from seglab import data_loading
    data_loading.prepare_dataset(cfg, run)
elif step == "02":
    from seglab import class_weights
    class_weights.write_class_weights(run, cfg)
elif step == "03":
    from seglab import training
    step, weights = training.begin(run, cfg)
    training.record(step, {"unet": training.train_model("unet", cfg, step, weights.weights, log=lambda line: None)})
elif step == "04":
    from seglab import evaluation
    evaluation.evaluate_all(cfg, run, log=lambda line: None)
print("peak_mib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def measure(images: int, out: Path) -> dict:
    run_dir = out / f"n{images}"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [f"run_dir={run_dir}", f"data.download_dir={out / 'downloads'}", f"data.demo.num_images={images}",
                 "data.demo.image_size=96", "data.image_size=96", "model.architectures=[unet]", "train.epochs=1",
                 "train.steps_per_epoch=5", "train.batch_size=8"]
    peaks = {}
    for step in ("01", "02", "03", "04"):
        result = subprocess.run([sys.executable, "-c", STEP, step, str(REPO / "configs" / "demo.yaml"), *overrides],
                                capture_output=True, text=True, cwd=REPO)
        if result.returncode:
            raise SystemExit(f"step {step} on {images} images failed:\n{result.stderr[-3000:]}")
        peaks[step] = float(result.stdout.strip().splitlines()[-1].split()[1])
        print(f"  {images:>6} images, step {step}: peak {peaks[step]:7.0f} MiB", flush=True)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_memory"))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    small, large = measure(args.n, out), measure(args.n * args.factor, out)
    print(f"\n| step | peak RSS, {args.n} images | peak RSS, {args.n * args.factor} images | growth |")
    print("|---|---|---|---|")
    for step in small:
        print(f"| {step} | {small[step]:.0f} MiB | {large[step]:.0f} MiB | {100 * (large[step] / small[step] - 1):+.1f}% |")


if __name__ == "__main__":
    main()
