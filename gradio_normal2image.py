from apps.builder import Slider, Task, launch

task = Task("normal", "Control Stable Diffusion with Normal Maps", annotator="normal",
            control="control_sd15_normal.pth", detect_resolution=384, prompt="a cute toy", toy=None,
            annotator_params=[Slider("background_threshold", 0.0, 1.0, step=0.01, label="Normal background threshold")])

if __name__ == "__main__":
    launch(task)
