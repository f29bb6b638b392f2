from apps.builder import Task, launch

task = Task("depth", "Control Stable Diffusion with Depth Maps", annotator="depth", control="control_sd15_depth.pth",
            detect_resolution=384, prompt="Stormtrooper's lecture")

if __name__ == "__main__":
    launch(task)
