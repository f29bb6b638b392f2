from apps.builder import Task, launch

task = Task("seg", "Control Stable Diffusion with Segmentation Maps (ADE20K)", annotator="seg",
            control=("control_sd15_seg.pth", "control_v11p_sd15_seg.pth"), nearest=True, prompt="a house", toy=None)

if __name__ == "__main__":
    launch(task)
