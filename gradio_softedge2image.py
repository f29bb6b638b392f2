from apps.builder import Check, Choice, Task, launch

task = Task("softedge", "Control Stable Diffusion with Soft Edges", annotator="softedge",
            control="control_v11p_sd15_softedge.pth", prompt="a house",
            annotator_params=[Choice("detector", ["pidinet", "hed"]), Check("safe", label="Safe (three levels)")])

if __name__ == "__main__":
    launch(task)
