"""Which CPU runtime runs a sampling step fastest: torch, OpenVINO, ONNX Runtime, on the same graph.

    python bench/cpu_runtimes.py [--sd] [--size 256] [--repeats 7] [--threads 1]

The step is a UNet with its ControlNet on a classifier-free-guidance batch (2 x 4 x size/8 x size/8 latents, the
text context, the condition's features, which a generation computes once), as a generation calls it: the shipped
model's, or with `--sd` SD 1.5's size (random weights). The one graph is handed to each runtime: OpenVINO converts
it from torch (openvino.convert_model), ONNX Runtime reads it exported by torch.onnx; each is compiled for this
machine's CPU in fp32 with torch's thread count. The shipped model's runtimes are timed interleaved; SD's one at a
time, each freed before the next (three copies of SD's networks do not fit in 24 GB), torch before and after them.
Median after a warm-up; the error is the largest difference to torch's output relative to its largest value. The
peer is torch. ONNX Runtime is not a dependency of the project: pip install onnxruntime onnx onnxscript (onnx 1.17
keeps the protobuf mediapipe needs).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import print_command, print_machine, torch_details  # noqa: E402
from bench.sampling import timed_interleaved  # noqa: E402
from ldm.conditioning import Conditioning  # noqa: E402
from ldm.threads import add_threads_argument, use_threads  # noqa: E402
from toy.model import load_default_model  # noqa: E402


class Step(nn.Module):
    """The UNet and ControlNet of one sampling step, as a function of tensors; the condition's features come in
    computed, as a generation computes them once for all its steps."""

    def __init__(self, model):
        super().__init__()  # the networks alone: the model around them is a LightningModule, which tracing trips on
        self.control_model, self.diffusion = model.control_model, model.model
        self.scales = list(model.control_scales)

    def forward(self, x, t, context, hint_features):
        context = Conditioning.of([context])
        control = self.control_model(x, None, t, context, hint_features=hint_features, weights=self.scales)
        return self.diffusion(x, t, c_crossattn=[context], control=control)


def inputs(model, size):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, size // 8, size // 8, generator=gen)
    t = torch.tensor([500, 500])
    context = torch.randn(2, 77, model.model.diffusion_model.config.context_dim, generator=gen)
    with torch.no_grad():
        hint_features = model.control_model.encode_hint(torch.rand(2, 3, size, size, generator=gen))
    return x, t, context, hint_features


def openvino_step(step, example):
    import openvino

    converted = openvino.convert_model(step, example_input=example)
    core = openvino.Core()
    compiled = core.compile_model(converted, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                                     "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    return lambda *args: torch.from_numpy(compiled([a.numpy() for a in args])[0])


def onnxruntime_step(step, example, folder):
    import onnxruntime

    path = Path(folder) / "step.onnx"
    torch.onnx.export(step, example, str(path), input_names=["x", "t", "context", "hint_features"],
                      output_names=["eps"], dynamo=True, external_data=True)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda *args: torch.from_numpy(session.run(None, dict(zip(names, [a.numpy() for a in args])))[0])


def sd_model():
    from bench.sampling import CONFIG, randomize
    from cldm.model import create_model

    torch.manual_seed(0)
    model = create_model(CONFIG).eval()
    randomize(model)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd", action="store_true", help="SD 1.5's size with random weights, not the shipped model")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    add_threads_argument(parser)
    args = parser.parse_args()
    use_threads(args.threads)
    print_command()
    print_machine(*torch_details())
    model = sd_model() if args.sd else load_default_model().eval()
    step = Step(model).eval()
    example = inputs(model, args.size)
    makers = [("OpenVINO", lambda folder: openvino_step(step, example)),
              ("ONNX Runtime", lambda folder: onnxruntime_step(step, example, folder))]
    rows = []
    with torch.no_grad(), tempfile.TemporaryDirectory() as folder:
        exact = step(*example)
        error = lambda run: float((run(*example) - exact).abs().max() / exact.abs().max())  # noqa: E731
        if args.sd:  # one at a time
            rows.append(("torch", timed_interleaved([lambda: step(*example)], args.repeats)[0], 0.0))
            for name, make in makers:
                run = make(folder)
                rows.append((name, timed_interleaved([lambda: run(*example)], args.repeats)[0], error(run)))
                del run
            rows.append(("torch, again", timed_interleaved([lambda: step(*example)], args.repeats)[0], 0.0))
        else:
            runs = [("torch", step)] + [(name, make(folder)) for name, make in makers]
            times = timed_interleaved([lambda run=run: run(*example) for _, run in runs], args.repeats)
            rows = [(name, seconds, error(run)) for (name, run), seconds in zip(runs, times)]
    what = "SD 1.5's size, random weights" if args.sd else "the shipped model"
    print(f"\n{what}: UNet + ControlNet, batch 2 (guidance), {args.size}x{args.size}, fp32, median of {args.repeats}\n")
    print("| runtime | seconds per step | / torch | largest difference to torch (relative) |")
    print("|---|---|---|---|")
    for name, seconds, difference in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / rows[0][1]:.2f} | {difference:.1e} |")


if __name__ == "__main__":
    main()
