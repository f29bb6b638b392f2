from apps.builder import Slider, Task, launch

task = Task("canny", "Control Stable Diffusion with Canny Edge Maps", annotator="canny",
            control=("control_sd15_canny.pth", "control_v11p_sd15_canny.pth"), detect_resolution=None,
            prompt="a bird", annotator_params=[Slider("low_threshold", 1, 255), Slider("high_threshold", 1, 255)])

if __name__ == "__main__":
    launch(task)
