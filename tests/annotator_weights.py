"""Random weights for every network annotator, written in the file formats of lllyasviel/Annotators.

The detectors then load them through their real loading code, which is what the tests exercise (the
trained files are hundreds of MB on the hub, which the tests cannot reach). fp16 halves the disk cost;
loading converts to the models' fp32.
"""

from pathlib import Path

import torch


def save(state, path):
    torch.save(half(state), path)


def drop_first_level(state):
    """OpenPose body/hand files name weights without the model's first attribute level."""
    return {k.split(".", 1)[1]: v for k, v in state.items()}


def write_hed(folder):
    from controlnet_aux.hed import ControlNetHED_Apache2

    save(ControlNetHED_Apache2().state_dict(), Path(folder) / "ControlNetHED.pth")


def write_mlsd(folder):
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    save(MobileV2_MLSD_Large().state_dict(), Path(folder) / "mlsd_large_512_fp32.pth")


def write_openpose(folder):
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    save(drop_first_level(bodypose_model().state_dict()), Path(folder) / "body_pose_model.pth")
    save(drop_first_level(handpose_model().state_dict()), Path(folder) / "hand_pose_model.pth")
    save(FaceNet().state_dict(), Path(folder) / "facenet.pth")


def write_midas(folder):
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    model = DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
    save(model.state_dict(), Path(folder) / "dpt_hybrid-midas-501f0c75.pt")


def write_upernet(folder):
    """A small UperNet (ConvNeXt backbone) with ADE20K's 150 classes, as a transformers folder."""
    from transformers import ConvNextConfig, SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_in_channels=32, num_labels=150,
                           use_auxiliary_head=False)
    torch.manual_seed(0)
    UperNetForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 128, "width": 128}).save_pretrained(folder)


def with_module_prefix(state):
    """Files saved from torch.nn.DataParallel name every weight under `module.`."""
    return {f"module.{k}": v for k, v in state.items()}


def half(state):
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def write_lineart(folder):
    from controlnet_aux.lineart import Generator

    torch.manual_seed(0)
    save(Generator(3, 1, 3).state_dict(), Path(folder) / "sk_model.pth")
    save(Generator(3, 1, 3).state_dict(), Path(folder) / "sk_model2.pth")  # the coarse model, same network


def write_lineart_anime(folder):
    import functools

    from controlnet_aux.lineart_anime import UnetGenerator

    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    net = UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)
    save(with_module_prefix(net.state_dict()), Path(folder) / "netG.pth")


def write_pidinet(folder):
    """A PiDiNet training checkpoint: {"state_dict": {"module.<key>": ...}}."""
    from controlnet_aux.pidi.model import pidinet

    torch.save({"epoch": 0, "state_dict": half(with_module_prefix(pidinet().state_dict()))},
               Path(folder) / "table5_pidinet.pth")


def write_normalbae(folder):
    import contextlib
    import io
    import types

    from controlnet_aux.normalbae.nets.NNET import NNET

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    with contextlib.redirect_stdout(io.StringIO()):  # the encoder's constructor prints
        net = NNET(args)
    torch.save({"model": half(with_module_prefix(net.state_dict()))}, Path(folder) / "scannet.pt")


def write_leres(folder):
    from controlnet_aux.leres.leres.multi_depth_model_woauxi import RelDepthModel
    from controlnet_aux.leres.pix2pix.models import networks

    depth = RelDepthModel(backbone="resnext101")
    torch.save({"depth_model": half(with_module_prefix(depth.state_dict()))}, Path(folder) / "res101.pth")
    refine = networks.define_G(2, 1, 64, "unet_1024", "none", False, "normal", 0.02, [])  # the "boost" pass
    save(refine.state_dict(), Path(folder) / "latest_net_G.pth")


def write_zoe(folder):
    from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth
    from controlnet_aux.zoe.zoedepth.utils.config import get_config

    model = ZoeDepth.build_from_config(get_config("zoedepth", "infer"))
    torch.save({"model": half(model.state_dict())}, Path(folder) / "ZoeD_M12_N.pt")


def write_dpt(folder):
    """A small DPT (ViT) depth model as a transformers folder, where Intel/dpt-large's would be."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16)
    torch.manual_seed(0)
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 64, "width": 64}, keep_aspect_ratio=False).save_pretrained(folder)


WRITERS = {"hed": write_hed, "mlsd": write_mlsd, "openpose": write_openpose, "midas": write_midas,
           "upernet": write_upernet, "lineart": write_lineart, "lineart_anime": write_lineart_anime,
           "pidinet": write_pidinet, "normalbae": write_normalbae, "leres": write_leres, "zoe": write_zoe,
           "dpt": write_dpt}
