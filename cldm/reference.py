"""Reference-only, as the A1111 ControlNet extension defines it: a picture steers the generation through the
generation's own UNet, with no weights of its own.

At each step where a reference unit acts, its picture's latent, noised to the step's level with fresh noise,
runs once through the plain UNet with the generation's text (the "write" pass): each self-attention block that
takes part banks its normalised input, each normalisation block that takes part its output's mean and variance
per channel. The generation's own UNet call then reads them:
- reference_only: self-attention attends to its own tokens and the banked ones (keys and values of both);
- reference_adain: each taking-part block's output is moved to the banked mean and standard deviation (AdaIN);
- reference_adain+attn: both.

The unit's strength decides which blocks take part: the self-attention blocks ranked widest first (stable), the
i-th of N when strength > i / N; the AdaIN blocks (the middle one; the residual blocks of every level but the
first; the decoder's first blocks, two more than those; as A1111 lists them for SD 1.x and SDXL) when strength
exceeds 0 for the middle block, 2 (1 - w / n) for the w-th of n encoder blocks and 2 w / m for the w-th of m
decoder blocks. Style fidelity sf mixes on guidance's unconditional half: sf * plain + (1 - sf) * referenced
(the conditional half is always referenced), so guidance pushes away from the plain result by sf. The control
modes set it as A1111 does ("control": 1, "prompt": 0), and on SDXL it is cubed first (A1111: SDXL's
attention is less stable under it). Several reference units bank together: attention reads every bank, AdaIN
their average.
"""

from contextlib import contextmanager

import torch

from annotators import REFERENCE_MODES
from cldm.img2img import start_from
from ldm.attention import BasicTransformerBlock, CrossAttention
from ldm.unet import Downsample

ATTENTION_MODES = ("reference_only", "reference_adain+attn")
ADAIN_MODES = ("reference_adain", "reference_adain+attn")
EPS = 1e-6  # A1111's floor on a variance before its square root
WEAK = 1e-5  # a style fidelity below this is 0: the unconditional half is referenced as the conditional


def style_fidelity(control, sdxl):
    """A reference unit's style fidelity at work: its setting, cubed on SDXL, then the control mode's."""
    fidelity = control.style_fidelity ** 3 if sdxl else control.style_fidelity
    return {"control": 1.0, "prompt": 0.0}.get(control.mode, fidelity)


def attention_blocks(unet):
    """The UNet's transformer blocks, widest first (stable), with their thresholds i / N; those whose first
    attention reads the text (disable_self_attn) count in the ranking but take no part."""
    blocks = sorted((m for m in unet.modules() if isinstance(m, BasicTransformerBlock)),
                    key=lambda block: -block.norm1.normalized_shape[0])
    return [(block.attn1, i / len(blocks)) for i, block in enumerate(blocks) if not block.disable_self_attn]


def adain_blocks(unet):
    """The UNet's blocks whose outputs AdaIN moves, with their thresholds (A1111's lists, as a rule)."""
    encoder, level = [], 0
    for block in list(unet.input_blocks)[1:]:
        if isinstance(block[0], Downsample):
            level += 1
        elif level > 0:
            encoder.append(block)
    decoder = list(unet.output_blocks)[:len(encoder) + 2]
    return ([(unet.middle_block, 0.0)]
            + [(block, 2 * (1 - w / len(encoder))) for w, block in enumerate(encoder)]
            + [(block, 2 * w / len(decoder)) for w, block in enumerate(decoder)])


class ReferenceBanks:
    """The reference units of one generation over a UNet: their latents, the hooks that bank and read, the
    noise their latents take (from `generator`)."""

    def __init__(self, model, controls, guided, generator):
        if any(c.region_mask is not None for c in controls):
            raise ValueError("a reference unit acts on the whole picture (the UNet's attention and statistics): "
                             "clear its region mask")
        self.model, self.controls, self.guided, self.generator = model, controls, guided, generator
        unet = model.model.diffusion_model
        sdxl = getattr(unet.config, "num_classes", None) == "sequential"
        self.fidelities = [style_fidelity(c, sdxl) for c in controls]
        self.latents = [start_from(model, c.hint, 1).latent for c in controls]  # the VAE posterior's mean
        self.attention, self.norms = attention_blocks(unet), adain_blocks(unet)
        self.banks = {}  # module -> [(banked tensors, style fidelity)]
        self.referenced = {}  # attention module -> the style fidelity of the referenced call under way
        self.writing = None  # (weight, style fidelity, attention?, adain?) during a write pass
        self.reading = False
        self.unconditional = 0  # rows of the batch on guidance's unconditional half (the first ones)

    @contextmanager
    def hooked(self):
        """The hooks in place for the block (the generation)."""
        handles = []
        for attn, threshold in self.attention:
            handles.append(attn.register_forward_pre_hook(self.attention_input_hook(threshold), with_kwargs=True))
            handles.append(attn.register_forward_hook(self.attention_output_hook, with_kwargs=True))
        handles += [block.register_forward_hook(self.adain_hook(threshold)) for block, threshold in self.norms]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.banks.clear()

    def write(self, x, t, context, progress):
        """The write pass of every reference unit acting at `progress`, for the batch `x` at timesteps `t`."""
        self.banks.clear()
        self.unconditional = x.shape[0] // 2 if self.guided else 0
        for control, latent, fidelity in zip(self.controls, self.latents, self.fidelities):
            weight = control.strength_at(progress)
            if not control.active(progress):
                continue
            noise = torch.randn((x.shape[0], *latent.shape[1:]), generator=self.generator, device=x.device)
            noisy = self.model.q_sample(latent.expand(x.shape[0], -1, -1, -1), t.round().long(), noise)
            self.writing = (weight, fidelity, control.reference in ATTENTION_MODES, control.reference in ADAIN_MODES)
            try:
                self.model.denoise(noisy, t, {"c_crossattn": [context]})
            finally:
                self.writing = None

    @contextmanager
    def read(self):
        """The generation's UNet call reads the banks within the block."""
        self.reading = True
        try:
            yield
        finally:
            self.reading = False
            self.banks.clear()

    def bank(self, module, value):
        self.banks.setdefault(module, []).append((value, self.writing[1]))

    def mixed(self, plain, referenced, fidelity):
        """A1111's mix: the conditional rows referenced; the unconditional sf * plain + (1 - sf) * referenced
        (`plain`: the plain result of the unconditional rows, or more rows, or None for none)."""
        if self.unconditional and fidelity > WEAK:
            kept = referenced.clone()
            kept[:self.unconditional] = plain[:self.unconditional].to(kept.dtype)
            return fidelity * kept + (1.0 - fidelity) * referenced
        return fidelity * referenced + (1.0 - fidelity) * referenced

    def attention_input_hook(self, threshold):
        """Writing: bank the self-attention's input. Reading: attend to the input and the banked tokens (keys and
        values of both), the fidelity kept for the output hook."""
        def hook(attn, args, kwargs):
            if self.writing is not None:
                weight, _, attention, _ = self.writing
                if attention and weight > threshold:
                    self.bank(attn, args[0].detach().clone())
                return None
            banked = self.banks.pop(attn, None) if self.reading else None
            if not banked:
                return None
            self.referenced[attn] = sum(f for _, f in banked) / len(banked)
            return args, {**kwargs, "context": torch.cat([args[0], *(b for b, _ in banked)], dim=1)}

        return hook

    def attention_output_hook(self, attn, args, kwargs, output):
        """Reading: the referenced attention mixed with the plain one on the unconditional rows."""
        fidelity = self.referenced.pop(attn, None)
        if fidelity is None:
            return None
        n = self.unconditional
        plain = CrossAttention.forward(attn, args[0][:n]) if n and fidelity > WEAK else None
        return self.mixed(plain, output, fidelity)

    def adain_hook(self, threshold):
        def hook(block, args, output):
            if self.writing is not None:
                weight, _, _, adain = self.writing
                if adain and weight > threshold:
                    var, mean = torch.var_mean(output, dim=(2, 3), keepdim=True, correction=0)
                    self.bank(block, (mean, var))
                return None
            banked = self.banks.pop(block, None) if self.reading else None
            if not banked:
                return None
            fidelity = sum(f for _, f in banked) / len(banked)
            var, mean = torch.var_mean(output, dim=(2, 3), keepdim=True, correction=0)
            std = torch.clamp(var, min=EPS) ** 0.5
            mean_ref = sum(m for (m, _), _ in banked) / float(len(banked))
            std_ref = torch.clamp(sum(v for (_, v), _ in banked) / float(len(banked)), min=EPS) ** 0.5
            referenced = (output - mean) / std * std_ref + mean_ref
            return self.mixed(output, referenced, fidelity).to(output.dtype)

        return hook


def is_reference(unit_or_preprocessor):
    """Whether a unit (or a preprocessor's name) is a reference unit."""
    name = getattr(unit_or_preprocessor, "preprocessor", unit_or_preprocessor)
    return name in REFERENCE_MODES
