#!/usr/bin/env bash
# Rebuilds the shipped default models (models/toy_sd.safetensors, models/toy_control.safetensors) from
# nothing but this repository: data generation, VAE, text-conditioned base, ControlNet. See TOY_MODEL.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

$PY -m toy.shapes --out data/shapes64 --count 5000 --seed 1 --size 64
$PY -m toy.shapes --out data/shapes128 --count 10000 --seed 0 --size 128

# 1. The VAE: first at 64x64 (cheap), then at 128x128 (the base's resolution).
$PY train.py --config models/toy_sd.yaml --stage vae --data data/shapes64 --out runs/toy_vae \
    --max-steps 1500 --batch-size 16 --learning-rate 1e-3 --ckpt-every 500 --log-every 50
$PY train.py --config models/toy_sd.yaml --stage vae --data data/shapes128 --out runs/toy_vae2 \
    --resume runs/toy_vae/checkpoints/vae-001500.safetensors --max-steps 1000 --batch-size 8 \
    --learning-rate 5e-4 --ckpt-every 500 --log-every 50 --seed 2

# 2. The text-conditioned base (UNet and text encoder), on cached VAE latents.
$PY train.py --config models/toy_sd.yaml --stage base --data data/shapes128 --out runs/toy_base \
    --resume runs/toy_vae2/checkpoints/vae-001000.safetensors --max-steps 4500 --batch-size 16 \
    --learning-rate 3e-4 --prompt-dropout 0.1 --cache --ckpt-every 500 --log-every 50 --seed 3 --log-images-every 1000

# 3. The ControlNet: added to the base, then trained with the base locked.
$PY tool_add_control.py runs/toy_base/checkpoints/base-004500.safetensors runs/toy_control_ini.safetensors \
    --config models/toy_cldm.yaml --force
$PY train.py --config models/toy_cldm.yaml --data data/shapes128 --out runs/toy_control \
    --resume runs/toy_control_ini.safetensors --max-steps 3000 --batch-size 16 --learning-rate 3e-4 \
    --prompt-dropout 0.1 --cache --ckpt-every 500 --log-every 50 --seed 4 --log-images-every 1000

# 4. Sharper, truer colours: the VAE decoder fine-tuned alone (the encoder, so the latent space the base and
#    the control were trained in, stays as it was), and the control trained on at a lower learning rate.
$PY train.py --config models/toy_sd.yaml --stage decoder --data data/shapes128 --out runs/toy_decoder \
    --resume runs/toy_base/checkpoints/base-004500.safetensors --max-steps 1500 --batch-size 8 \
    --learning-rate 3e-4 --ckpt-every 500 --log-every 50 --seed 5
$PY train.py --config models/toy_cldm.yaml --data data/shapes128 --out runs/toy_control2 \
    --resume runs/toy_base/checkpoints/base-004500.safetensors runs/toy_control/checkpoints/control-003000.safetensors \
    --max-steps 3000 --batch-size 16 --learning-rate 1e-4 \
    --prompt-dropout 0.1 --cache --ckpt-every 500 --log-every 50 --seed 6 --log-images-every 1000

# 5. Colours from the prompt, not from the starting noise: the base fine-tuned with offset noise (SD's schedule
#    leaves enough of a flat background's colour in x_T for the base to read it from the noise), then the
#    control trained on over it with the same noise.
$PY train.py --config models/toy_sd.yaml --stage base --data data/shapes128 --out runs/toy_base_offset \
    --resume runs/toy_decoder/checkpoints/decoder-001500.safetensors --max-steps 3000 --batch-size 16 \
    --learning-rate 2e-4 --prompt-dropout 0.1 --noise-offset 0.1 --cache --ckpt-every 500 --log-every 50 --seed 7
$PY train.py --config models/toy_cldm.yaml --data data/shapes128 --out runs/toy_control3 \
    --resume runs/toy_base_offset/checkpoints/base-003000.safetensors \
    runs/toy_control2/checkpoints/control-003000.safetensors --max-steps 3000 --batch-size 16 \
    --learning-rate 2e-4 --prompt-dropout 0.1 --noise-offset 0.1 --cache --ckpt-every 500 --log-every 50 \
    --seed 8 --eval-every 1000 --eval-count 40

# 6. Ship: fp16, without the noise schedule (the yaml recomputes it).
$PY -m training.export runs/toy_base_offset/checkpoints/base-003000.safetensors models/toy_sd.safetensors --half
$PY -m training.export runs/toy_control3/checkpoints/control-003000.safetensors \
    models/toy_control.safetensors --half --prefix control_model.
