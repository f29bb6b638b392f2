"""Weights whole on every process, for what runs outside a training step under a sharding strategy.

FSDP and DeepSpeed ZeRO-3 leave each process a shard of the weights; sampling with them (image logs, the
controllability evaluation) is collective, so every process enters this context and runs it.
"""

import contextlib

import pytorch_lightning as pl


def whole_weights(trainer):
    """A context in which every process holds all the weights, for sampling with them outside a training step."""
    strategy = trainer.strategy
    if isinstance(strategy, pl.strategies.FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(strategy.model, writeback=False)
    if isinstance(strategy, pl.strategies.DeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(strategy.model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()
