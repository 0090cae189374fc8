"""Useful tokens/s and val loss, sweeplab vs TRL's SFTTrainer: same 4-bit model, LoRA, chats, batch, epoch.

    .venv/bin/python bench/bench_trl.py --out BENCHMARKS.md              # smollm2-135m; `make bench-trl`
    .venv/bin/python bench/bench_trl.py --model toy --steps 20 --rounds 3   # seconds per arm: overhead only

Every arm of a round trains one epoch over the same chats (steps x batch of them, drawn and shuffled by
the round's seed), in that order, so all arms process the same useful tokens and their val losses compare
like for like: padded and padding-free arms of both trainers take the same `batch` chats at each step,
packed arms as many rows as finish the epoch in `steps` steps. Each
arm-round runs in its own process (no arm inherits another's allocations or warm caches); the arms
rotate their order every round so machine drift hits all of them, and each arm reports the median over
rounds. Useful tokens are the non-pad tokens of a batch; timing runs from the start of the second
optimizer step to the end of the last (the first pays one-off allocation costs), data loading included
the same way for both trainers. Val loss: the same assistant-token cross-entropy on the same val chats.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timed_trainer import training_only_trainer  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_trl:start -->", "<!-- bench_trl:end -->"
LAYOUTS = ("padded", "padding-free", "packed")  # TRL: padding_free=True, packing=True; sweeplab: data.*
ARMS = tuple(f"{trainer}-{layout}" for trainer in ("trl", "sweeplab") for layout in LAYOUTS)


# --- one arm, in a child process ---------------------------------------------------------------------
def setup(args):
    """Config, tokenizer, this round's training chats and the val chats, as `python -m sweeplab.train`
    tokenizes them; the round's seed draws the chats and seeds LoRA's init."""
    import torch
    from hydra import compose, initialize_config_dir

    from sweeplab.config import validate
    from sweeplab.data import build_datasets
    from sweeplab.models.build import load_tokenizer, resolve_model_dir

    overrides = [
        f"model={args.model}",
        "logger=none",
        f"data.batch_size={args.batch}",
        f"data.max_seq_len={args.max_seq_len}",
        f"data.n_val={args.n_val}",
        f"optim.lr={args.lr}",
        "optim.warmup_steps=1",  # a handful of steps: the loss must move in them
        f"trainer.max_steps={args.steps}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        rc = validate(compose("train", overrides=overrides))
    model_dir = resolve_model_dir(rc.model, rc.paths.cache_dir)
    tokenizer = load_tokenizer(model_dir)
    train_set, val_set, _ = build_datasets(rc.data, tokenizer, Path(rc.paths.cache_dir))
    seed = rc.seed + args.round
    chats = random.Random(seed).sample(list(train_set), args.steps * args.batch)
    torch.manual_seed(seed)
    return rc, model_dir, tokenizer, chats, list(val_set), seed


def rows_per_step(rows: int, steps: int) -> int:
    """Packed rows per step that finish the epoch in `steps` steps (the last one may hold fewer)."""
    return max(1, math.ceil(rows / steps))


def val_loss(model, val: list[dict], pad_id: int) -> float:
    """Token-weighted assistant-token cross-entropy, the val/loss sweeplab logs, for any peft model."""
    import torch
    import torch.nn.functional as F

    from sweeplab.data import PadCollator
    from sweeplab.models.label_head import LabelLogits

    model.eval()
    logits_at = LabelLogits(model)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val), 8):
            logits, targets = logits_at(PadCollator(pad_id)(val[i : i + 8]))
            total += float(F.cross_entropy(logits, targets, reduction="sum"))
            count += len(targets)
    return total / count


def run_sweeplab(args, mode: str) -> dict:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from sweeplab.data import PadCollator
    from sweeplab.data.packing import PackCollator, PaddingFreeCollator, pack_examples, real_tokens
    from sweeplab.models.build import build_model
    from sweeplab.training.module import QLoRAModule

    rc, model_dir, tokenizer, train, val, _ = setup(args)
    rows, collate, batch = train, PadCollator(tokenizer.pad_token_id), args.batch
    if mode == "padding-free":  # data.padding_free: the padded batches, each one row
        collate = PaddingFreeCollator(tokenizer.pad_token_id)
    if mode == "packed":
        rows = pack_examples(train, args.max_seq_len)
        collate, batch = PackCollator(tokenizer.pad_token_id), rows_per_step(len(rows), args.steps)
    loader = DataLoader(rows, batch_size=batch, collate_fn=collate)  # in order, as TRL's arms take them
    model = build_model(model_dir, rc.model, rc.lora, torch.float32)
    module = QLoRAModule(model, rc.optim, len(loader))
    clock = StepClock()

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            clock.begin(batch_idx, real_tokens(batch), batch["input_ids"].numel())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            clock.end(float(outputs["loss"]))

    trainer = training_only_trainer(len(loader), [Timer()], rc.trainer.grad_clip)  # one epoch
    trainer.fit(module, loader)
    return clock.result() | {"val_loss": val_loss(model, val, tokenizer.pad_token_id)}


def run_trl(args, mode: str) -> dict:
    import torch
    from datasets import Dataset
    from pyarrow import table
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from sweeplab.data.packing import pack_examples
    from sweeplab.models.build import load_quantized, peft_lora_config

    rc, model_dir, tokenizer, train, val, seed = setup(args)
    # Built from an Arrow table with a fingerprint given: Dataset.from_dict hashes its features with dill to
    # make one, which fails on pyarrow types with these pins ("Can't pickle <class 'MonthDayNano'>").
    data = Dataset(
        table({"input_ids": [ex["input_ids"] for ex in train], "labels": [ex["labels"] for ex in train]}),
        fingerprint=f"sweeplab-bench-trl-{args.model}-{len(train)}",
    )
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out:
        # TRL packs the same chats itself (bfd, as sweeplab): as many rows per step as sweeplab takes.
        rows = len(pack_examples(train, args.max_seq_len))
        batch = rows_per_step(rows, args.steps) if mode == "packed" else args.batch
        steps = math.ceil(rows / batch) if mode == "packed" else args.steps
        config = SFTConfig(
            output_dir=out,  # nothing is saved there (save_strategy="no")
            per_device_train_batch_size=batch,
            num_train_epochs=1,  # one epoch over the round's chats, as the sweeplab arms
            learning_rate=rc.optim.lr,
            weight_decay=rc.optim.weight_decay,
            adam_beta1=rc.optim.betas[0],
            adam_beta2=rc.optim.betas[1],
            adam_epsilon=rc.optim.eps,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": rc.optim.min_lr_ratio},
            warmup_steps=rc.optim.warmup_for(steps),  # an int: a float < 1 would be a ratio
            max_grad_norm=rc.trainer.grad_clip,
            gradient_checkpointing=rc.model.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            use_cpu=True,
            bf16=False,
            seed=seed,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            # The round's chats come shuffled; both trainers take them in that order, so the padded and
            # padding-free arms of both see the very same batches, step by step.
            train_sampling_strategy="sequential",
            padding_free=mode == "padding-free",
            packing=mode == "packed",
            # padding_free without packing refuses a max_length; packing cuts rows at it.
            max_length=args.max_seq_len if mode == "packed" else None,
            # Chats come tokenized with assistant-only labels; only packing needs TRL's preparation.
            dataset_kwargs={"skip_prepare_dataset": mode != "packed"},
        )
        base = load_quantized(model_dir, rc.model, torch.float32)
        trainer = SFTTrainer(
            model=base,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=peft_lora_config(base, rc.lora),
        )
        # TRL casts a 4-bit model's adapters to bf16 (the QLoRA paper's GPU recipe); sweeplab keeps fp32 on
        # the CPU (bf16 matmuls are up to 20x slower on some of these CPUs): the same arithmetic for both.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()

        clock = StepClock()
        collate = trainer.data_collator

        def counting_collate(examples):
            batch = collate(examples)
            mask = batch.get("attention_mask")  # none when padding-free or packed: every token is real
            useful = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            clock.batches.append((useful, batch["input_ids"].numel()))
            return batch

        class Timer(TrainerCallback):
            def on_step_begin(self, targs, state, control, **kwargs) -> None:
                clock.begin(state.global_step, *clock.batches[state.global_step])

            def on_step_end(self, targs, state, control, **kwargs) -> None:
                clock.end(None)

            def on_log(self, targs, state, control, logs=None, **kwargs) -> None:
                if logs and "loss" in logs:
                    clock.losses.append(float(logs["loss"]))

        trainer.data_collator = counting_collate
        trainer.add_callback(Timer())
        trainer.train()
        return clock.result() | {"val_loss": val_loss(trainer.model, val, tokenizer.pad_token_id)}


class StepClock:
    """Useful and processed tokens and seconds of every step but the first (one-off allocations)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []  # (useful, processed) per collated batch, in order
        self.losses: list[float] = []
        self.useful = self.processed = 0
        # useful tokens of every step, the first included: equal for all arms of a round
        self.epoch_tokens = 0
        self.start = self.stop = 0.0

    def begin(self, step: int, useful: int, processed: int) -> None:
        self.epoch_tokens += useful
        if step == 1:
            self.start = time.perf_counter()
        if step >= 1:
            self.useful += useful
            self.processed += processed

    def end(self, loss: float | None) -> None:
        self.stop = time.perf_counter()
        if loss is not None:
            self.losses.append(loss)

    def result(self) -> dict:
        seconds = self.stop - self.start
        return {
            "useful_tokens": self.useful,
            "processed_tokens": self.processed,
            "epoch_tokens": self.epoch_tokens,
            "seconds": seconds,
            "tokens_per_s": self.useful / seconds if seconds > 0 else 0.0,
            "train_loss": self.losses[-1] if self.losses else math.nan,
        }


def run_arm(args) -> dict:
    trainer, _, mode = args.arm.partition("-")
    return run_trl(args, mode) if trainer == "trl" else run_sweeplab(args, mode)


# --- the race, in the parent process -----------------------------------------------------------------
def child(args, arm: str, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--arm", arm, "--result", str(out), *forwarded(args)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return json.loads(out.read_text())


def forwarded(args) -> list[str]:
    keys = ("model", "steps", "batch", "max_seq_len", "n_val", "lr", "round")
    return [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in keys]


def race(args) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = args.arms[r % len(args.arms) :] + args.arms[: r % len(args.arms)]
            for arm in order:
                args.round = r
                res = child(args, arm, Path(tmp) / f"{arm}-{r}.json")
                results[arm].append(res)
                print(
                    f"round {r + 1} {arm:17s} {res['tokens_per_s']:8.1f} useful tokens/s  "
                    f"val loss {res['val_loss']:.4f}",
                    flush=True,
                )
    return results


def summary(results: dict[str, list[dict]]) -> dict[str, dict]:
    return {
        arm: {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "val_loss": statistics.median(r["val_loss"] for r in runs),
            "useful_fraction": sum(r["useful_tokens"] for r in runs)
            / sum(r["processed_tokens"] for r in runs),
        }
        for arm, runs in results.items()
    }


def table(results: dict[str, list[dict]], med: dict[str, dict]) -> str:
    rows = [
        "| arm | useful tokens/s per round | median | useful fraction | val loss (median) |",
        "|---|---|---|---|---|",
    ]
    for arm, runs in results.items():
        per_round = " / ".join(f"{r['tokens_per_s']:.1f}" for r in runs)
        m = med[arm]
        speed, frac, loss = m["tokens_per_s"], m["useful_fraction"], m["val_loss"]
        rows.append(f"| {arm} | {per_round} | {speed:.1f} | {frac:.2f} | {loss:.4f} |")
    return "\n".join(rows)


LOSS_TOLERANCE = 0.01  # nats: "equal" val loss, the same chats seen in another order


def loss_gap(results: dict[str, list[dict]], ours: str, theirs: str) -> float:
    """Mean over rounds of ours' val loss minus theirs' (paired: a round's arms saw the same chats)."""
    pairs = zip(results[ours], results[theirs], strict=True)
    return statistics.mean(a["val_loss"] - b["val_loss"] for a, b in pairs)


def verdict(results: dict[str, list[dict]], med: dict[str, dict]) -> str:
    """sweeplab's fastest arm at a val loss no worse than TRL's fastest arm's, over that arm."""
    fastest = lambda arms: max(arms, key=lambda a: med[a]["tokens_per_s"], default=None)  # noqa: E731
    theirs = fastest([a for a in med if a.startswith("trl")])
    sweeplab = [a for a in med if a.startswith("sweeplab")]
    if theirs is None or not sweeplab:
        return ""
    fair = [a for a in sweeplab if loss_gap(results, a, theirs) <= LOSS_TOLERANCE]
    lines = []
    if fair:
        ours = fastest(fair)
        lines.append(
            f"**sweeplab / TRL best at equal or better loss: "
            f"{med[ours]['tokens_per_s'] / med[theirs]['tokens_per_s']:.2f}x** ({ours} "
            f"{med[ours]['tokens_per_s']:.1f} vs {theirs} {med[theirs]['tokens_per_s']:.1f} useful tokens/s; "
            f"val loss {loss_gap(results, ours, theirs):+.4f} against it, mean of the rounds' paired runs; "
            f"equal means within {LOSS_TOLERANCE})."
        )
    else:
        lines.append(f"**No sweeplab arm reached the val loss of TRL's fastest arm ({theirs}).**")
    lines.append("")  # the like-for-like pairs, as a list below
    for arm in sweeplab:
        peer = "trl-" + arm.split("-", 1)[1]
        if peer in med:
            lines.append(
                f"- {arm} / {peer}: {med[arm]['tokens_per_s'] / med[peer]['tokens_per_s']:.2f}x, "
                f"val loss {loss_gap(results, arm, peer):+.4f}."
            )
    return "\n".join(lines)


def write_section(args, path: Path, body: str, line: str) -> None:
    import torch
    import trl

    from benchmarks_md import cpu_name, replace_section  # bench/ is sys.path[0] when run as a script

    section = f"""{START}
## Training step: sweeplab vs TRL's SFTTrainer

`python bench/bench_trl.py --model {args.model} --steps {args.steps} --rounds {args.rounds}`: the same 4-bit
`{args.model}` base, LoRA (the run's `lora` config), tokenized tool-call chats with assistant-only labels,
AdamW at lr {args.lr} with 1 warmup step then cosine, grad clip, fp32 on CPU. Each round draws and
shuffles {args.steps * args.batch} training chats (max {args.max_seq_len} tokens) with its own seed, and
every arm trains one epoch over exactly those, in that order: padded and padding-free arms {args.steps}
steps of the same {args.batch} chats in both trainers, packed arms as many rows of {args.max_seq_len} per
step as finish the epoch in {args.steps} steps (fewer, larger steps: their loss after one epoch is higher,
and compares with the other packed arm). So every arm of a round processes the same useful tokens, and
its val loss (the same assistant-token cross-entropy on the same {args.n_val} val chats after the epoch)
pairs with the other trainer's. One process per arm and round, arms rotating order
each round. Useful tokens/s: non-pad tokens over the time from the second step's start to the last
step's end. LoRA dropout as configured (sweeplab draws its CPU mask with `FastCPUDropout`). TRL arms:
padded, `padding_free=True`, `packing=True` (bfd); TRL's own QLoRA cast of the adapters to bf16 is undone
so both trainers compute in fp32. TRL 1.16 already runs its LM head only at labelled positions (its fused
head), as sweeplab's step does; both use gradient checkpointing.

{body}

{line}

Machine: {os.cpu_count()} cores, {cpu_name()}, shared with other jobs; torch {torch.__version__},
trl {trl.__version__}; measured {time.strftime("%Y-%m-%d")}.
{END}"""
    replace_section(path, START, END, section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="smollm2-135m", help="model config choice (smollm2-135m, toy, tiny)"
    )
    parser.add_argument("--steps", type=int, default=8, help="padded steps per epoch (the first is untimed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="chats per step")
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--n-val", type=int, default=32, help="val chats the final loss is measured on")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--out", type=Path, default=None, help="BENCHMARKS.md to update")
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)  # seeds the round's chats
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # child mode: run one arm
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.arm:
        args.result.write_text(json.dumps(run_arm(args)))
        return
    results = race(args)
    med = summary(results)
    body, line = table(results, med), verdict(results, med)
    print(body, line, sep="\n")
    if args.out:
        write_section(args, args.out, body, line)


if __name__ == "__main__":
    main()
