from apps.builder import Check, Task, launch

task = Task("lineart", "Control Stable Diffusion with Line Art", annotator="lineart",
            control="control_v11p_sd15_lineart.pth", prompt="a bag", alternatives=("invert",),
            annotator_params=[Check("coarse", label="Coarse lines")])

if __name__ == "__main__":
    launch(task)
