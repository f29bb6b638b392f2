from apps.builder import Choice, Slider, Task, launch

task = Task("fake_scribble", "Control Stable Diffusion with Fake Scribble Maps", annotator="fake_scribble",
            control=("control_sd15_scribble.pth", "control_v11p_sd15_scribble.pth"), prompt="a bag",
            alternatives=("scribble_from_photo",),
            annotator_params=[Choice("detector", ["hed", "pidinet", "xdog"], label="Detector (scribble_from_photo)"),
                   Slider("xdog_threshold", 1, 64, label="XDoG threshold")])

if __name__ == "__main__":
    launch(task)
