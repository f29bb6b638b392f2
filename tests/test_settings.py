"""One Settings object: its flags, its record, its conversions, and the app pages made from it."""

import argparse
from dataclasses import fields

import gradio as gr
import pytest

from cldm.settings import ControlUnit, SettingError, Settings, add_arguments, from_args, setting_fields


def test_flags_come_from_the_settings_with_their_defaults_and_choices():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Settings(steps=7))
    args = parser.parse_args(["--sampler", "Euler a", "--guess-mode", "--resolution", "256", "--guidance-scale", "4"])
    settings = from_args(args)
    assert (settings.sampler, settings.guess_mode, settings.image_resolution, settings.guidance_scale,
            settings.steps) == ("Euler a", True, 256, 4.0, 7)
    with pytest.raises(SystemExit):
        parser.parse_args(["--sampler", "Heun"])  # not one of the choices


def test_record_round_trip_and_conversions():
    settings = Settings().with_values(steps=12.0, seed=5.0, strength=1, guess_mode=1, block_weights=[1.0] * 13)
    assert settings.steps == 12 and isinstance(settings.steps, int) and settings.seed == 5
    assert isinstance(settings.strength, float) and settings.guess_mode is True
    saved = {**settings.record(), "hint": "map.png", "precision": "fp32"}  # what a PNG carries beside them
    assert Settings.from_record(saved) == settings
    assert Settings.from_record({"steps": 3}) == Settings(steps=3)  # records from before a setting existed
    with pytest.raises(SettingError, match="unknown settings"):
        Settings().with_values(stepz=3)


def test_every_setting_says_how_it_is_shown():
    for f in [*setting_fields(), *fields(ControlUnit)]:
        assert f.metadata["label"], f.name
        if f.type in (int, float):
            assert f.metadata["range"] is not None, f.name  # a slider needs its range


def test_an_app_page_shows_each_setting_by_its_label():
    from apps.page import build_demo
    from apps.runner import Runner
    from tests.test_apps import NOTE, task_of

    task = task_of("gradio_depth2image")
    demo = build_demo(task, Runner(task, None, NOTE))
    labels = {getattr(block, "label", None) for block in demo.blocks.values()}
    shown = {f.name: f.metadata["label"] for f in setting_fields() if f.name in task.settings()}
    assert set(shown.values()) <= labels and "detect_resolution" in shown and "denoise" not in shown
    assert "strength" in shown and "block_weights" in shown  # the first control unit's, by their flags' names
    assert isinstance(demo, gr.Blocks)
