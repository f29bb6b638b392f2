"""The annotator app's words: every parameter labelled, explained and given a widget that fits, and each tab
saying before it runs which weights it needs and whether they are on disk."""

import inspect
import typing

import gradio as gr

from annotators import ANNOTATORS
from apps.annotator_app import CHOICES, DETECTORS, PARAMETERS, TITLES, parameter_component, weights_note


def test_every_parameter_has_a_label_help_and_a_fitting_widget():
    assert set(TITLES) == set(DETECTORS) and set(ANNOTATORS) - set(DETECTORS) == {"reference_only", "reference_adain",
                                                                                "reference_adain+attn"}
    for key, annotate in ANNOTATORS.items():
        for name, parameter in list(inspect.signature(annotate).parameters.items())[1:]:
            assert name in PARAMETERS, f"{key}: {name}"
            choices = typing.get_args(parameter.annotation)
            assert all(choice in CHOICES for choice in choices), f"{key}: {name}"
            numeric = PARAMETERS[name].range
            if numeric:  # the default is on the slider
                assert numeric[0] <= parameter.default <= numeric[1], f"{key}: {name}"
    assert isinstance(parameter_component("low_threshold", 100), gr.Slider)
    assert isinstance(parameter_component("safe", False), gr.Checkbox)
    assert isinstance(parameter_component("shuffle_seed", 0), gr.Number)


def test_each_tab_says_which_weights_it_needs_and_whether_they_are_there(tmp_path, monkeypatch):
    from annotators import weights

    monkeypatch.setattr(weights, "CKPT_DIR", tmp_path / "ckpts")  # whatever this machine has downloaded
    monkeypatch.setenv("CONTROLNET_ANNOTATOR_CKPTS", str(tmp_path))
    (tmp_path / "ControlNetHED.pth").touch()
    assert "no weights" in weights_note("canny")
    assert f"ControlNetHED.pth (about 29 MB): on disk in {tmp_path}" in weights_note("hed")
    assert "mlsd_large_512_fp32.pth (about 6 MB): not on disk" in weights_note("mlsd")
    assert "auto uses mediapipe" in weights_note("pose")
