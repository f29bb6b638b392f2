"""User-editable defaults for the apps and generate.py. Importing this file changes nothing; the apps read it.

Command-line flags override these values (run any app with --help).
"""

CONFIG = None  # the yaml for real SD checkpoints; None: the one beside the control file, else the base's family's
BASE = None  # an SD checkpoint for control-only files (ControlNet 1.1); None: models/v1-5-pruned.ckpt if present
VAE = None  # a VAE file used instead of the base's (SDXL's fp16-fix VAE); None: the base's
PRECISION = "auto"  # fp32, fp16, bf16, or auto: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32
COMPILE = False  # torch.compile the UNet and ControlNet (faster steps on GPUs; the first request compiles)
BACKEND = "torch"  # or "openvino": the UNet and ControlNet run by OpenVINO on the CPU (pip install -e ".[openvino]")
SAVE_MEMORY = False  # low-VRAM mode: only the running part of the model is on the GPU
ANNOTATOR_CKPTS = None  # a folder of annotator weights; None: annotators/ckpts (downloaded there when online)
OUTPUT_DIR = "outputs"  # every generated image is saved here with its parameters
HOST = "127.0.0.1"  # --host 0.0.0.0 (or --share) to let other machines in
PORT = 7860
QUEUE_SIZE = 16  # requests waiting beyond this are refused with "queue full" instead of piling up
THREADS = None  # CPU threads for the model; None: all cores but one, which the web server needs
