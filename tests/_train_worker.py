"""Subprocess entry for the kill/resume and torchrun tests (not collected by pytest).

python tests/_train_worker.py cli BLOCK_STEP MARKER -- <visattn train options>
    runs `visattn train` (argument parsing included) with the test model registered;
    after the checkpoint of optimizer step BLOCK_STEP it writes MARKER and sleeps,
    so the test can SIGKILL it at a known point (BLOCK_STEP 0: never block).
python -m torch.distributed.run ... tests/_train_worker.py ddp OUT PER_RANK_BATCH
    one step of DDP training on a fixed 32-image digits subset; rank 0 saves the
    gradients after backward to OUT/grads.safetensors (the final weights land in
    OUT/model.safetensors).
python -m torch.distributed.run ... tests/_train_worker.py freeze OUT TIMEOUT_S
    2-process training in which rank 1 stops answering after optimizer step 2; the
    other rank must give up after TIMEOUT_S seconds (--dist-timeout) with a one-line
    error naming rank 1 (printed by the CLI's error handler) and exit code 1.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _tiny_model import ensure_registered


class BlockAfterCheckpoint:
    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def after_checkpoint(self, trainer, folder):
        if trainer.step == self.step:
            with open(self.marker, "w") as f:
                f.write(str(folder))
            time.sleep(120)  # the test kills us here


class SaveGrads:
    def __init__(self, path: str):
        self.path = path

    def after_backward(self, trainer):
        if trainer.step == 0 and trainer.dist.rank == 0:
            from safetensors.torch import save_file

            save_file({n: p.grad.detach().clone().contiguous() for n, p in trainer.model.named_parameters()}, self.path)


class FreezeAfterStep:
    def __init__(self, step: int, rank: int):
        self.step, self.rank = step, rank

    def after_step(self, trainer):
        if trainer.step == self.step and trainer.dist.rank == self.rank:
            time.sleep(120)  # a frozen peer: alive, silent


def tiny_digits(n_train: int = 32, n_test: int = 16):
    from visattn.data import DataBundle, ImageDataset, load_data

    b = load_data("digits", image_size=8)
    tr = ImageDataset(b.train.images[:n_train].clone(), b.train.labels[:n_train].clone())
    te = ImageDataset(b.test.images[:n_test].clone(), b.test.labels[:n_test].clone())
    return DataBundle("digits-subset", tr, te, b.classes, 8, b.mean, b.std, augment="crop")


def main() -> int:
    name = ensure_registered()
    mode = sys.argv[1]
    if mode == "cli":
        import argparse

        from visattn.commands.train_cmd import add_train_arguments, config_from_args
        from visattn.train import train

        step, marker = int(sys.argv[2]), sys.argv[3]
        p = argparse.ArgumentParser()
        add_train_arguments(p)
        cfg = config_from_args(p.parse_args(sys.argv[5:]))
        train(cfg, callbacks=[BlockAfterCheckpoint(step, marker)] if step else [])
        return 0
    if mode == "ddp":
        from visattn.train import TrainConfig, train

        out, batch = sys.argv[2], int(sys.argv[3])
        cfg = TrainConfig(
            model=name,
            epochs=1,
            batch_size=batch,
            warmup_steps=0,
            output=out,
            progress=False,
            verbose=False,
            plot=False,
            device="cpu",
            deterministic=True,
            seed=3,
        )
        train(cfg, data=tiny_digits(), callbacks=[SaveGrads(os.path.join(out, "grads.safetensors"))])
        return 0
    if mode == "freeze":
        from visattn.cli import run_command
        from visattn.train import TrainConfig, train

        out, timeout = sys.argv[2], float(sys.argv[3])
        cfg = TrainConfig(
            model=name,
            epochs=1,
            batch_size=4,
            warmup_steps=0,
            output=out,
            progress=False,
            verbose=False,
            plot=False,
            device="cpu",
            seed=3,
            dist_timeout=timeout,
        )
        rc = run_command("train", lambda _: train(cfg, data=tiny_digits(), callbacks=[FreezeAfterStep(2, 1)]), None)
        sys.stderr.flush()
        os._exit(rc)  # do not wait for the frozen peer in process-group teardown
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    raise SystemExit(main())
