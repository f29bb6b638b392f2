"""Train a ControlNet (or the parts of a small latent diffusion model) on paired data.

    python train.py --config models/cldm_v15.yaml --resume models/control_sd15_ini.safetensors \
        --data training/fill50k --batch-size 4 --out runs/fill50k

The dataset is the release's layout: `prompt.json` (one {"source", "target", "prompt"} object per line),
`source/` (hints) and `target/` (images); or, with `--annotator canny` (any annotator), a folder of plain
pictures with optional captions beside them (photo.jpg + photo.txt), made into pairs as they are read.
Non-square data trains in aspect buckets with `--buckets`.
Datasets of millions of pairs stream from WebDataset tar shards: `--data 'shards/{000000..000099}.tar'`.
`--resume` takes initial weights (from tool_add_control.py) or a `step-*.ckpt` written by this script,
which continues exactly where it stopped.
"""

import argparse
from pathlib import Path

from ldm.errors import add_debug_argument, run_main
from ldm.files import check_checkpoint_file, check_config_file


def add_file_arguments(p, required=True):
    """The flags that name files (checked before Lightning and the models are imported, which takes seconds)."""
    p.add_argument("--config", default="models/cldm_v15.yaml")
    p.add_argument("--data", required=required, help="dataset folder with prompt.json, source/, target/ (or, with "
                   "--annotator, a folder of plain pictures), or WebDataset tar shards, e.g. "
                   "'shards/{000000..000099}.tar' (image, hint.png and txt per sample; python -m training.shards "
                   "writes them from a folder)")
    p.add_argument("--resume", nargs="*", default=[], help="initial weights (one or more files), or a step-*.ckpt")


def check_files(args):
    check_config_file(args.config)
    for path in args.resume:
        check_checkpoint_file(path)
    shards = args.data.endswith(".tar") or "{" in args.data or "://" in args.data
    if not shards and not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data} is not a folder: give a dataset folder (prompt.json, source/, "
                                "target/), a folder of pictures with --annotator, or tar shards")


def check_command_line(argv=None):
    p = argparse.ArgumentParser(add_help=False)
    add_file_arguments(p, required=False)  # --help, or a missing --data, is the full parser's to answer
    args, _ = p.parse_known_args(argv)
    if args.data is not None:
        check_files(args)


if __name__ == "__main__":  # before the slow imports below: a wrong file fails in a moment, not after them
    run_main(check_command_line)

# ruff: noqa: E402
import logging
import warnings

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader

from annotators.util import MAX_SIDE
from cldm.model import load_model
from cldm.settings import number_flag
from cldm.union import ANNOTATOR_TYPES, UNION_TYPES, UnionControlNet
from evaluation.conditions import CONDITIONS
from evaluation.harness import default_settings
from ldm.sdxl import DiffusionEngine
from ldm.threads import add_threads_argument, use_threads
from ldm.unet import set_gradient_checkpointing
from training.buckets import BucketBatchSampler, bucket_sizes
from training.cache import CachedPairs, LatentCache, ModelEncoders, build_cache
from training.callbacks import AtomicCheckpoint, ControllabilityEval, ImageLogger
from training.cases import cases_from
from training.checkpoint_io import CheckpointSpaceError, DirectCheckpointIO
from training.data import AnnotatedFolder, PairDataset, as_hint, collate, read_rgb
from training.module import (
    LR_SCHEDULES,
    OPTIMIZERS,
    STAGES,
    TIMESTEP_SAMPLINGS,
    Trainee,
    TrainingOptions,
    drop_what_a_cache_replaces,
)
from training.progress import StepProgress
from training.reward import REWARDS
from training.sampler import ResumableSampler
from training.shards import ShardStream, is_shards


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_file_arguments(p)
    p.add_argument("--check-files", action="store_true", help="look for every file prompt.json lists before "
                   "training (default: a spread of 1000; the others are reported, with their line, when read)")
    p.add_argument("--annotator", help="make pairs from plain pictures (captions from photo.txt beside photo.jpg) "
                                       "with this annotator, e.g. canny, hed")
    p.add_argument("--resolution", type=number_flag(int, 64, MAX_SIDE), default=512,
                   help="square crop size for --annotator folders and shards; the buckets' size with --buckets")
    p.add_argument("--control-types", nargs="+", metavar="MAP[=TYPE]",
                   help="ControlNet-Union training: the maps of training.prepare's shards to train on (annotator "
                        "names, e.g. canny openpose_mediapipe), each sample a random subset of them; a map's "
                        "control type is its annotator's (canny: thin_lines) unless given as canny=thin_lines")
    p.add_argument("--buckets", action="store_true",
                   help="non-square data: scale and crop each pair to the aspect bucket (sides multiples of 64, "
                        "about resolution² pixels) nearest its shape; a batch holds one bucket")
    p.add_argument("--out", default="runs/train", help="folder for checkpoints and image logs")
    p.add_argument("--stage", choices=STAGES, default="control", help="what to train (default: the ControlNet)")
    p.add_argument("--sd-locked", action=argparse.BooleanOptionalAction, default=True,
                   help="train only the control (default) or also the UNet decoder")
    p.add_argument("--only-mid-control", action="store_true")
    p.add_argument("--learning-rate", type=number_flag(float, 0.0, 1.0), default=1e-5)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="constant, or cosine: from --learning-rate down to 0 at --max-steps")
    p.add_argument("--warmup-steps", type=number_flag(int, 0), default=0, help="raise the learning rate linearly over these steps")
    p.add_argument("--batch-size", type=number_flag(int, 1), default=4)
    p.add_argument("--accumulate", type=number_flag(int, 1), default=1, help="gradient accumulation: micro-batches per step")
    p.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"],
                   help="mixed precision computes in bf16/fp16 and holds the frozen weights in it; what is trained "
                        "stays fp32")
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                   help="adamw8bit (bitsandbytes) keeps AdamW's moments in 8 bits: 2 bytes a trained weight, not 8")
    p.add_argument("--step-in-backward", action="store_true",
                   help="update each weight as soon as its gradient is complete and free the gradient: no set of "
                        "gradients is held (saves 4 bytes a trained weight); one process, no --accumulate, not "
                        "with 16-mixed")
    p.add_argument("--quantize-frozen", choices=["int8"],
                   help="hold the locked UNet's linear layers in int8 (torchao, a scale per output channel): half "
                        "of bf16's memory for them (SDXL: 2 GiB less); the loss moves by under 1e-3 of itself")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute activations in backward (default: the yaml's use_checkpoint)")
    p.add_argument("--cache", action="store_true",
                   help="cache VAE latents (and text encodings, if the text encoder is frozen) on disk, in shards "
                        "read as needed; built once for all processes, extended (not rebuilt) when data is added. "
                        "With shards: the cache python -m training.prepare --latents wrote beside them")
    p.add_argument("--cache-dir", help="the cache's folder (implies --cache; default: OUT/cache, or the shards' "
                                       "folder's cache/): runs on the same data with the same VAE and text encoder "
                                       "can share one")
    p.add_argument("--prompt-dropout", type=number_flag(float, 0.0, 1.0), default=0.0, help="probability of training on the empty prompt")
    p.add_argument("--noise-offset", type=number_flag(float, 0.0, 1.0), default=0.0, help="offset noise: add this times a per-image, "
                   "per-channel constant to the training noise, so flat colours follow the prompt (0.1 is usual)")
    p.add_argument("--timesteps", choices=TIMESTEP_SAMPLINGS,
                   help="how training timesteps are drawn: uniform (as SD was trained; the default but for a "
                        "control), or cubic, biased to the noisiest, where a control settles the layout (the "
                        "default for --stage control: it learns to follow its condition several times sooner)")
    p.add_argument("--reward", choices=sorted(REWARDS),
                   help="ControlNet++'s consistency reward: at low noise, decode the one-step prediction, detect "
                        "this condition on it and add the mismatch with the hint to the loss (a control only)")
    p.add_argument("--reward-weight", type=number_flag(float, 0.0), default=0.5, help="the reward's weight in the loss")
    p.add_argument("--reward-timesteps", type=number_flag(int, 1, 1000), default=200,
                   help="rewarded timesteps are drawn below this (one-step predictions are sharp there)")
    p.add_argument("--max-steps", type=number_flag(int, 1), default=10_000)
    p.add_argument("--ckpt-every", type=number_flag(int, 1), default=1000)
    p.add_argument("--log-every", type=number_flag(int, 1), default=10, help="write the loss to the CSV log every N steps")
    p.add_argument("--log-images-every", type=number_flag(int, 0), default=0, help="0: no image logging")
    p.add_argument("--log-images", type=number_flag(int, 1), default=4, help="how many dataset items the image grid shows")
    p.add_argument("--validation-prompt", action="append", default=[],
                   help="log this prompt instead of dataset items (repeatable; pair each with --validation-hint)")
    p.add_argument("--validation-hint", action="append", default=[], help="the condition image of a validation prompt")
    p.add_argument("--eval-every", type=number_flag(int, 0), default=0, help="every N steps, measure how well generated images "
                   "follow held-out conditions, as bench/controllability.py does (0: never)")
    p.add_argument("--eval-condition", default="shapes", choices=sorted(CONDITIONS),
                   help="the condition measured (its annotator re-detects it on the images)")
    p.add_argument("--eval-data", help="held-out cases for a condition other than shapes: a release-layout folder "
                                       "or photos with captions (default for shapes: held-out outlines)")
    p.add_argument("--eval-count", type=number_flag(int, 1), default=20, help="held-out cases per evaluation (the first N)")
    p.add_argument("--eval-steps", type=number_flag(int, 1, 1000), default=20, help="sampling steps per evaluated image")
    p.add_argument("--eval-images", type=number_flag(int, 1), default=1, help="images per case")
    p.add_argument("--devices", default="auto", help="devices (processes) per machine")
    p.add_argument("--num-nodes", type=number_flag(int, 1), default=1,
                   help="machines, each launched by torchrun or SLURM's srun (see the README)")
    p.add_argument("--strategy", default="auto", help="e.g. ddp, fsdp, deepspeed_stage_2")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--workers", type=number_flag(int, 0), default=0)
    add_threads_argument(p)  # the image logs and evaluations then sample as generate.py and the apps do
    p.add_argument("--seed", type=number_flag(int, 0, 2**32 - 1), default=0)
    add_debug_argument(p)
    return p.parse_args(argv)


class _NoTips(logging.Filter):
    def filter(self, record):
        return not record.getMessage().startswith("\N{ELECTRIC LIGHT BULB} Tip:")


_NO_TIPS = _NoTips()  # one instance: adding it again (main runs more than once in a process) adds nothing


def quiet_lightning():
    """Keep Lightning's output to what concerns this run."""
    # the frozen parts (VAE, text encoder, a locked UNet) are in eval mode on purpose: dropout and the like off
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # Lightning's own use of a torch API that torch has deprecated: nothing a user of this script can change
    warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
    # Lightning advertises its cloud services ("Tip: ... try installing litlogger") on every run, with no
    # switch to turn that off; its rank-zero messages go through this logger
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NO_TIPS)


def is_training_checkpoint(paths):
    return len(paths) == 1 and Path(paths[0]).suffix == ".ckpt" and Path(paths[0]).name.startswith("step-")


def frozen_sources(checkpoint):
    """The files a step-*.ckpt's frozen weights come from (it holds only what is trained); none for a checkpoint
    that holds them all."""
    sources = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True).get("frozen_sources", [])
    missing = [s for s in sources if not Path(s).exists()]
    if missing:
        raise SystemExit(f"{checkpoint} holds the trained weights only; the frozen ones come from {missing[0]}, "
                         "which is gone: put it back at that path to resume")
    return sources


def default_timesteps(stage):
    """A control learns to follow its condition where the layout is decided (models/TOY_MODEL.md measures it)."""
    return "cubic" if stage == "control" else "uniform"


def build(args):
    if args.step_in_backward and args.accumulate > 1:
        raise SystemExit("--step-in-backward applies each gradient as soon as it is complete: it cannot accumulate "
                         "gradients over batches; drop --accumulate (or --step-in-backward)")
    # a step-*.ckpt is restored by Lightning, over the files its frozen weights come from
    initial = frozen_sources(args.resume[0]) if is_training_checkpoint(args.resume) else args.resume
    model = load_model(args.config, *initial, strict=args.stage != "vae", for_training=True)
    if args.stage == "control":
        model.sd_locked = args.sd_locked
        model.only_mid_control = args.only_mid_control
    if args.gradient_checkpointing is not None:
        set_gradient_checkpointing(model, args.gradient_checkpointing)
    try:
        options = TrainingOptions(
            stage=args.stage, learning_rate=args.learning_rate, lr_schedule=args.lr_schedule,
            warmup_steps=args.warmup_steps, max_steps=args.max_steps, prompt_dropout=args.prompt_dropout,
            noise_offset=args.noise_offset, timesteps=args.timesteps or default_timesteps(args.stage), seed=args.seed,
            reward=args.reward, reward_weight=args.reward_weight, reward_timesteps=args.reward_timesteps,
            optimizer=args.optimizer, precision=args.precision, step_in_backward=args.step_in_backward,
            quantize_frozen=args.quantize_frozen,
            # loaded strictly, every frozen weight is those files': checkpoints need not copy them
            frozen_sources=[Path(p).resolve() for p in initial] if args.stage != "vae" else [])
    except ValueError as error:
        raise SystemExit(str(error)) from None
    return Trainee(model, options)


def validation_items(args):
    """Logged samples from --validation-prompt / --validation-hint pairs (none given: an empty list)."""
    if len(args.validation_prompt) != len(args.validation_hint):
        raise SystemExit(f"{len(args.validation_prompt)} --validation-prompt but {len(args.validation_hint)} "
                         "--validation-hint: give one hint per prompt")
    items = []
    for prompt, path in zip(args.validation_prompt, args.validation_hint):
        hint = read_rgb(path)
        if hint.shape[0] % 64 or hint.shape[1] % 64:
            raise SystemExit(f"{path} is {hint.shape[1]}x{hint.shape[0]}; validation hints need sides that are "
                             "multiples of 64")
        items.append({"txt": prompt, "hint": as_hint(hint)})
    return items


class DataModule(pl.LightningDataModule):
    """Builds the latent cache (with `cache_dir`) on the process's device, and the loader when training starts,
    after a resumed checkpoint has restored the step count."""

    def __init__(self, dataset, trainee, args, cache_dir=None, samples=False):
        super().__init__()
        self.dataset, self.trainee, self.args, self.cache_dir = dataset, trainee, args, cache_dir
        self.samples = samples  # images are sampled (logs, evaluations): the text encoder and decoder are needed

    def setup(self, stage):
        if self.cache_dir is None or isinstance(self.dataset, CachedPairs) or getattr(self.dataset, "cache", None):
            return
        model = self.trainee.model
        text_frozen = not any(p.requires_grad for p in model.cond_stage_model.parameters())
        if isinstance(self.dataset, ShardStream):  # training.prepare --latents wrote the cache with the shards
            self.dataset.cache = prepared_cache(self.cache_dir, ModelEncoders(model), text_frozen, self.args)
        else:
            for encoder in (model.first_stage_model, model.cond_stage_model):
                encoder.to(self.trainer.strategy.root_device)
            build_cache(ModelEncoders(model), self.dataset, self.cache_dir, with_text=text_frozen)
            self.dataset = CachedPairs(self.dataset, self.cache_dir, with_text=text_frozen,
                                       with_size_ids=isinstance(model, DiffusionEngine))
        if self.trainee.stage == "control" and text_frozen:  # what the cache replaces is not held at all
            drop_what_a_cache_replaces(model, self.samples, decoding=self.trainee.options.reward is not None)

    def train_dataloader(self):
        trainer, args = self.trainer, self.args
        if self.trainee.batches_seen is None:  # saved before the position was: assume the same process count
            self.trainee.batches_seen = self.trainee.micro_steps * trainer.world_size
        batches_done = self.trainee.batches_seen
        loader = {"num_workers": args.workers, "persistent_workers": args.workers > 0}
        if isinstance(self.dataset, ShardStream):  # batches are made by the stream
            self.dataset.place(batches_done * args.batch_size, trainer.global_rank, trainer.world_size)
            return DataLoader(self.dataset, batch_size=None, **loader)
        loader["collate_fn"] = collate
        if self.dataset.sizes is not None:
            sampler = BucketBatchSampler(self.dataset.sizes, args.batch_size, args.seed, batches_done,
                                         trainer.global_rank, trainer.world_size)
            return DataLoader(self.dataset, batch_sampler=sampler, **loader)
        sampler = ResumableSampler(len(self.dataset), args.seed, batches_done * args.batch_size,
                                   trainer.global_rank, trainer.world_size)
        return DataLoader(self.dataset, batch_size=args.batch_size, sampler=sampler, **loader)


def prepared_cache(folder, encoders, with_text, args):
    """The latent cache training.prepare --latents wrote beside the shards, checked to be this model's and to hold
    the crops this run takes."""
    try:
        cache = LatentCache(folder, with_text)
    except FileNotFoundError:
        raise SystemExit(f"--cache with shards reads the latents training.prepare --latents wrote beside them; "
                         f"{folder} holds none (give --cache-dir, or prepare the shards with --latents)") from None
    if cache.manifest["fingerprint"] != encoders.fingerprint():
        raise SystemExit(f"{folder} holds latents made with another VAE or text encoder than this model's: prepare "
                         "them with this model's --config and --checkpoint, or train without --cache")
    prepared = cache.manifest.get("prepared") or {}
    if prepared and (prepared["resolution"], prepared["buckets"]) != (args.resolution, args.buckets):
        raise SystemExit(f"{folder} holds latents for --resolution {prepared['resolution']}"
                         f"{' with --buckets' if prepared['buckets'] else ''}: train with that, or prepare again")
    return cache


def read_dataset(args):
    try:
        buckets = bucket_sizes(args.resolution) if args.buckets else None
    except ValueError as error:
        raise SystemExit(f"--resolution: {error}") from None
    if is_shards(args.data):
        if args.annotator:
            raise SystemExit("--annotator takes a folder of pictures; shards carry their conditions")
        return ShardStream(args.data, args.resolution, args.batch_size, args.seed, buckets,
                           union_maps(args.control_types))
    if args.annotator:
        return AnnotatedFolder(args.data, args.annotator, args.resolution, buckets=buckets)
    return PairDataset(args.data, buckets=buckets, check_all=args.check_files)


def union_maps(control_types):
    """--control-types as [(map name, control type index)] (None when not given)."""
    if not control_types:
        return None
    maps = []
    for given in control_types:
        name, _, kind = given.partition("=")
        kind = kind or ANNOTATOR_TYPES.get(name)
        if kind not in UNION_TYPES:
            raise SystemExit(f"--control-types {given}: say its control type as {name}=TYPE, one of "
                             f"{', '.join(UNION_TYPES)}")
        maps.append((name, UNION_TYPES.index(kind)))
    return maps


def check_union(args, model):
    """--control-types and a ControlNet-Union go together; each type must be one the net knows."""
    net = getattr(model, "control_model", None)
    if args.control_types and not isinstance(net, UnionControlNet):
        raise SystemExit("--control-types trains a ControlNet-Union: --resume one (its keys name task_embedding)")
    if args.control_types and not is_shards(args.data):
        raise SystemExit("--control-types reads the maps of training.prepare's shards: give --data "
                         "'shards/{000000..000009}.tar'")
    if isinstance(net, UnionControlNet) and args.stage == "control":
        if not args.control_types:
            raise SystemExit("a ControlNet-Union trains on typed maps: give --control-types (e.g. canny "
                             "openpose_mediapipe) and training.prepare's shards holding them")
        for _, kind in union_maps(args.control_types):
            net.type_index(UNION_TYPES[kind], "--control-types")


def first_items(dataset, n):
    if isinstance(dataset, ShardStream):
        return dataset.first(n)
    return [dataset[i] for i in range(min(n, len(dataset)))]


def controllability_eval(args, size):
    """The --eval-every callback, its held-out cases read once (the first --eval-count of --eval-data)."""
    condition = CONDITIONS[args.eval_condition]
    try:
        cases = cases_from(condition, args.eval_data, args.eval_count, size)
    except ValueError as error:
        raise SystemExit(f"--eval-condition {condition.name}: {error}") from error
    if not cases:
        raise SystemExit(f"--eval-data {args.eval_data} holds no cases")
    settings = default_settings(condition, steps=args.eval_steps, num_samples=args.eval_images, seed=0)
    return ControllabilityEval(args.eval_every, condition, cases, settings)


def main(argv=None):
    args = parse_args(argv)
    check_files(args)
    use_threads(args.threads)
    quiet_lightning()
    pl.seed_everything(args.seed, workers=True)
    out = Path(args.out)
    dataset = read_dataset(args)
    trainee = build(args)
    check_union(args, trainee.model)
    # the bar first: it reaches a step before that step's checkpoint or image log pauses under it
    callbacks = [StepProgress(), AtomicCheckpoint(out / "checkpoints", args.ckpt_every)]
    if args.log_images_every:
        items = validation_items(args) or first_items(dataset, args.log_images)
        callbacks.append(ImageLogger(out / "images", args.log_images_every, items, seed=args.seed))
    if args.eval_every:
        if args.stage != "control":
            raise SystemExit("--eval-every measures a ControlNet: use it with --stage control")
        callbacks.append(controllability_eval(args, size=first_items(dataset, 1)[0]["hint"].shape[0]))
    cache_dir = None
    if args.cache or args.cache_dir:
        if args.stage in ("vae", "decoder"):
            raise SystemExit("--cache stores VAE encodings and text encodings, not the images a VAE stage needs")
        beside_shards = is_shards(args.data) and Path(str(dataset.paths[0])).parent / "cache"
        cache_dir = Path(args.cache_dir or beside_shards or out / "cache")
    try:
        trainer = pl.Trainer(
            max_steps=args.max_steps, accumulate_grad_batches=args.accumulate, precision=args.precision,
            devices=args.devices, num_nodes=args.num_nodes, strategy=args.strategy, accelerator=args.accelerator,
            callbacks=callbacks,
            default_root_dir=out, enable_checkpointing=False, logger=pl.loggers.CSVLogger(out, name="logs"),
            log_every_n_steps=args.log_every, use_distributed_sampler=False,
            max_epochs=-1, num_sanity_val_steps=0, plugins=[DirectCheckpointIO()],
        )
    except MisconfigurationException as error:  # --devices, --strategy or --accelerator this machine cannot run
        raise ValueError(f"--devices {args.devices} --strategy {args.strategy} --accelerator {args.accelerator}: "
                         f"{error}") from None
    ckpt_path = args.resume[0] if is_training_checkpoint(args.resume) else None
    datamodule = DataModule(dataset, trainee, args, cache_dir, samples=bool(args.log_images_every or args.eval_every))
    try:
        trainer.fit(trainee, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except CheckpointSpaceError as error:
        raise SystemExit(f"training stopped at step {trainer.global_step}: {error.strerror}") from error
    return trainee


if __name__ == "__main__":
    run_main(main)
