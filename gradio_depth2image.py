from apps.builder import Slider, Task, launch

task = Task("depth", "Control Stable Diffusion with Depth Maps", annotator="depth",
            control=("control_sd15_depth.pth", "control_v11f1p_sd15_depth.pth"), detect_resolution=384,
            prompt="Stormtrooper's lecture", alternatives=("depth_zoe", "depth_leres"), toy=None,
            annotator_params=[Slider("remove_near", 0, 100, label="Remove near % (LeReS)"),
                   Slider("remove_background", 0, 100, label="Remove background % (LeReS)")])

if __name__ == "__main__":
    launch(task)
