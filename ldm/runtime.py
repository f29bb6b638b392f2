"""OpenVINO as the CPU runtime of the networks a generation runs (the UNet and the ControlNets at every step, the
VAE's decoder at the end), an optional extra (`pip install -e ".[openvino]"`) chosen with `--backend openvino`.

A network given a `Runtime` hands it the tensor-only part of its call; the runtime converts that part to an
OpenVINO model once per structure (which conditioning parts and residuals it takes), with its shapes left free,
compiles it for latency, in fp32 and on torch's thread count, and returns its outputs. It declines (returns
None, and the network runs it in torch) where the converted weights would not be the network's: while they are
changed (a LoRA merged for a generation; once it is taken out, bit for bit, the runtime serves again), or while
hooks reach inside it (reference-only, IP-Adapter).
"""

from functools import lru_cache

import torch
from torch import nn

BACKENDS = ("torch", "openvino")


def backend_precision(backend, precision):
    """The precision to run in: the one asked for, else (None or "auto") OpenVINO's fp32 under it."""
    return "fp32" if backend == "openvino" and precision in (None, "auto") else precision


class Core(nn.Module):
    """A function of tensors computed by `network` as a module, the form OpenVINO's converter traces (the
    network's weights its parameters)."""

    def __init__(self, network, fn):
        super().__init__()
        self.network, self.fn = network, fn

    def forward(self, *inputs):
        return self.fn(*inputs)


def hooked(module):
    """Whether code reaches inside the module's computation: forward hooks, or attention additions."""
    return any(m._forward_hooks or m._forward_pre_hooks or getattr(m, "added_attention", None)
               for m in module.modules())


@lru_cache(maxsize=1)
def openvino_core():
    """The process's one OpenVINO Core, kept for as long as any model it compiled."""
    import openvino

    return openvino.Core()


class Runtime:
    """OpenVINO running parts of one network (`module`)."""

    def __init__(self, module):
        try:
            import openvino
        except ImportError:
            raise RuntimeError('--backend openvino needs OpenVINO: pip install -e ".[openvino]"') from None
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in module.parameters()):
            raise ValueError("--backend openvino runs the networks in fp32 on the CPU: pass --precision fp32, and "
                             "leave the GPU to torch")
        self.openvino, self.module = openvino, module
        self.parameters = list(module.parameters())
        self.versions, self.fingerprint = self.weight_versions(), self.weight_fingerprint()
        self.checked = (self.versions, True)  # the versions last checked, and whether the weights were the same
        self.compiled = {}  # structure -> the compiled model

    def weight_versions(self):
        """Each weight's count of in-place writes: unchanged counts, unchanged weights."""
        return [p._version for p in self.parameters]

    @torch.no_grad()
    def weight_fingerprint(self):
        """Sums of the weights and of their squares, in fp64: equal after a LoRA is taken out bit for bit."""
        return [(p.double().sum().item(), p.double().square().sum().item()) for p in self.parameters]

    def same_weights(self):
        """Whether the weights are those converted, fingerprinted again only when some were written since."""
        versions = self.weight_versions()
        if versions != self.checked[0]:
            self.checked = (versions, self.weight_fingerprint() == self.fingerprint)
        return self.checked[1]

    def __call__(self, structure, fn, inputs):
        """fn(*inputs) (tensors in, a tensor or a list of them out) computed by OpenVINO, as a list; None where
        torch must compute it. `structure` names what kind of call this is (one conversion each)."""
        if not self.same_weights() or hooked(self.module):
            return None
        if structure not in self.compiled:  # shapes left free: one compilation serves every size and batch
            with torch.no_grad():  # its own copy of the weights: torch's may be written (LoRAs) or freed first
                model = self.openvino.convert_model(Core(self.module, fn), example_input=tuple(inputs),
                                                    share_weights=False)
            config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                      "INFERENCE_NUM_THREADS": torch.get_num_threads()}
            self.compiled[structure] = openvino_core().compile_model(model, "CPU", config)
        compiled = self.compiled[structure]
        # inputs and outputs copied: the request must not keep pointers into tensors torch frees after the call
        outputs = compiled([t.detach().contiguous().numpy() for t in inputs], share_inputs=False, share_outputs=False)
        return [torch.from_numpy(outputs[out]) for out in compiled.outputs]


def backend_of(network):
    """The backend a network runs by (what a saved image records: it changes the last bits)."""
    return "openvino" if getattr(network, "runtime", None) is not None else "torch"


def use_backend(networks, backend):
    """Each of `networks` run by `backend` ("torch": as they are) from the next call on."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    for net in networks:
        net.runtime = Runtime(net) if backend == "openvino" else None
