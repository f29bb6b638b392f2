"""Random weights for every network annotator, written in the file formats of lllyasviel/Annotators.

The detectors then load them through their real loading code, which is what the tests exercise (the
trained files are hundreds of MB on the hub, which the tests cannot reach). fp16 halves the disk cost;
loading converts to the models' fp32.
"""

from pathlib import Path

import torch


def save(state, path):
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)


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


WRITERS = {"hed": write_hed, "mlsd": write_mlsd, "openpose": write_openpose, "midas": write_midas,
           "upernet": write_upernet}
